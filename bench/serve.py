"""The viewer's latency: a new sentence on an opened 10,000-patch slide, and Deep Zoom tiles.

In one run, on one generated 4096 x 4096 slide carrying a 100 x 100 bag (10,000 patches) and a paper-size PathFLIP
(12-layer Q-Former, BERT-base text tower; random weights: latency does not depend on them), it measures p50/p95 of
  grounding  (a) the `slide-grounding` pipeline, which encodes the slide for every sentence (the baseline),
             (b) the viewer's POST /grounding on the opened slide (kept slide encoding; text, layer PNG and JSON);
  tiles      (a) a plain `DeepZoomGenerator.get_tile` + JPEG encoding loop (the baseline),
             (b) the viewer's GET tile the first time (cold) and (c) again (from its LRU cache),
and writes bench/results/serve.json. Target: (b) grounding p95 < 300 ms on 2 CPU cores.
Run: `python bench/serve.py` (about two minutes).
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LOOPBACK_URL = "http://127.0.0.1:8000"  # the viewer answers only loopback Host names

RESULTS = Path(__file__).parent / "results" / "serve.json"
SIDE, GRID = 4096, 100  # 100 x 100 patches of 40 level-0 pixels
SENTENCES = 30
BASELINE_SENTENCES = 5


def percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2),
            "n": len(values)}  # fmt: skip


def build(folder: Path):
    """A generated slide, its 10k-patch bag as a dataset, and a paper-size model folder."""
    import datasets
    from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerFast

    from modeling_pathflip import PathFLIPConfig, PathFLIPModel, PathFLIPProcessor
    from pathflip.synthetic.textures import render_texture, write_pyramid

    rng = np.random.default_rng(0)
    image = render_texture("stroma", SIDE, SIDE, rng)
    (folder / "slides").mkdir()
    write_pyramid(folder / "slides" / "big.tiff", image, mpp=0.5, levels=4)
    size = SIDE // GRID
    cells = np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="xy"), -1).reshape(-1, 2)
    bag = {"slide_id": ["big"], "features": [rng.standard_normal((len(cells), 512)).astype(np.float32)],
           "coords": [(cells * size).astype(np.int32)], "patch_size_level0": [size]}  # fmt: skip
    datasets.Dataset.from_dict(bag).save_to_disk(str(folder / "bags"))
    torch.manual_seed(0)
    config = PathFLIPConfig(text_config=BertConfig().to_dict())
    model = PathFLIPModel(config).eval()
    tokenizer = _tokenizer(AutoTokenizer, PreTrainedTokenizerFast)
    model.save_pretrained(folder / "model")
    PathFLIPProcessor.from_model_config(tokenizer, config).save_pretrained(folder / "model")
    return folder / "slides", folder / "bags", folder / "model"


def _tokenizer(auto, fast):
    """A word-level tokenizer built in memory (BERT's vocabulary is not downloadable here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] . a of in the with focal necrosis tumour dense cells fat stroma".split()
    vocab = {word: index for index, word in enumerate(words + [f"w{i}" for i in range(200)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return fast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def sentence(number: int) -> str:
    """A new sentence each time, 8-16 words, so nothing about the text can be cached."""
    rng = np.random.default_rng(number)
    return " ".join(f"w{value}" for value in rng.integers(200, size=int(rng.integers(8, 17)))) + "."


def bench_grounding(client, encodings, model_dir: Path, bags: Path) -> dict:
    import datasets
    from transformers import pipeline

    started = time.perf_counter()
    encodings.wait("big")
    opened = time.perf_counter() - started
    client.post("/api/slides/big/grounding", json={"text": sentence(10_000)})  # first call: lazy imports
    viewer = []
    for number in range(SENTENCES):
        started = time.perf_counter()
        answer = client.post("/api/slides/big/grounding", json={"text": sentence(number)})
        viewer.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    grounder = pipeline("slide-grounding", model=str(model_dir))
    row = datasets.load_from_disk(str(bags)).with_format("numpy")[0]
    baseline = []
    for number in range(BASELINE_SENTENCES):
        started = time.perf_counter()
        grounder(row, sentences=[sentence(1000 + number)])
        baseline.append(time.perf_counter() - started)
    result = {"patches": GRID * GRID, "open_slide_s": round(opened, 2),
              "pipeline_per_sentence": percentiles(baseline), "viewer_new_sentence": percentiles(viewer)}  # fmt: skip
    pipeline_p50, viewer_times = result["pipeline_per_sentence"]["p50_ms"], result["viewer_new_sentence"]
    result["speedup_p50"] = round(pipeline_p50 / viewer_times["p50_ms"], 1)
    result["target_p95_ms"], result["meets_target"] = 300, viewer_times["p95_ms"] < 300
    return result


def bench_tiles(client, encodings) -> dict:
    generator = encodings.library.deep_zoom("big")
    level = generator.level_count - 1
    columns, rows = generator.level_tiles[level]
    addresses = [(column, row) for row in range(rows) for column in range(columns)]
    plain = []
    for address in addresses:
        started = time.perf_counter()
        buffer = io.BytesIO()
        generator.get_tile(level, address).save(buffer, format="JPEG", quality=80)
        plain.append(time.perf_counter() - started)
    cold, warm = [], []
    for timings in (cold, warm):
        for column, row in addresses:
            started = time.perf_counter()
            answer = client.get(f"/api/slides/big/image_files/{level}/{column}_{row}.jpeg")
            timings.append(time.perf_counter() - started)
            assert answer.status_code == 200
    result = {"tiles": len(addresses), "level": level, "deepzoom_get_tile_plus_jpeg": percentiles(plain),
              "viewer_first_request": percentiles(cold), "viewer_cached": percentiles(warm)}  # fmt: skip
    baseline = result["deepzoom_get_tile_plus_jpeg"]["p50_ms"]
    result["first_request_over_plain_p50"] = round(result["viewer_first_request"]["p50_ms"] / baseline, 2)
    result["cached_over_plain_p50"] = round(result["viewer_cached"]["p50_ms"] / baseline, 3)
    return result


def main() -> None:
    from fastapi.testclient import TestClient

    from pathflip.viewer import build_viewer

    with tempfile.TemporaryDirectory() as temporary:
        slides, bags, model_dir = build(Path(temporary))
        app, encodings = build_viewer(str(model_dir), slides, bags=bags)
        with TestClient(app, base_url=LOOPBACK_URL) as client:
            results = {
                "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version(), "torch": torch.__version__},  # fmt: skip
                "grounding": bench_grounding(client, encodings, model_dir, bags),
                "tiles": bench_tiles(client, encodings),
            }
        encodings.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
