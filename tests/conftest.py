"""Shared offline fixtures: a tiny word-level tokenizer, a tiny PathFLIP config and generated bags."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VOCABULARY = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , the a an of in with and is are at shows show seen there"
    " tumour tumor stroma necrosis fat lymphocytes nuclei dense fibrous cells region slide left right upper lower"
    " carcinoma invasive benign normal grade high low focal areas large small cm mm 1 2 3 4 5"
).split()


def build_tokenizer():
    """A BERT-style word-level tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(VOCABULARY)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(**overrides):
    """A PathFLIP config small enough for CPU tests that still learns in a few dozen steps.

    At width 32 the usual std of 0.02 leaves every embedding dominated by the query/[CLS] residual
    stream (inputs barely matter at init, and contrastive training collapses); 0.2 keeps the
    input-dependent share near that of the 768-wide paper model. Dropout is off for the same reason.
    """
    from modeling_pathflip import PathFLIPConfig

    init_std = 0.2
    values = dict(
        patch_dim=16,
        patch_projection_dim=16,
        num_query_tokens=4,
        region_grid_size=4,
        region_chunk_size=3,
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            initializer_range=init_std,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(VOCABULARY),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=init_std,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        initializer_range=init_std,
        context_dropout=0.0,
        embed_dim=16,
        context_heads=4,
        context_intermediate_size=32,
        tra_heads=4,
        num_subcaptions=3,
    )
    values.update(overrides)
    return PathFLIPConfig(**values)


def tiny_pathflip2_config(**overrides):
    """A PathFLIP2 config small enough for CPU tests (the released architecture at toy sizes, dropout off)."""
    from modeling_pathflip import PathFLIP2Config

    values = dict(
        patch_dim=16, embed_dim=32, num_heads=4, num_latent_tokens=8, num_subcaptions=3, soft_topk=8,
        text_max_length=64, attention_dropout=0.0, projection_dropout=0.0,
        text_config=dict(model_type="bert", vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    )  # fmt: skip
    values.update(overrides)
    return PathFLIP2Config(**values)


CAPTIONS = [
    "Invasive carcinoma with dense nuclei. Fibrous stroma in the left region. Focal necrosis is seen.",
    "Benign fat with small lymphocytes. There are normal cells.",
    "High grade tumour in the upper region. Large areas of necrosis. Stroma is fibrous.",
    "Lymphocytes in the lower region. Fat and stroma. No tumour is seen.",
]


def make_bag(
    index: int, num_patches: int, *, patch_dim: int = 16, grid_side: int = 12, patch_size: int = 512, seed: int = 0
) -> dict:
    """A bag on random distinct cells of a ``grid_side`` x ``grid_side`` patch grid.

    Features scatter around a per-bag centre, as patches of one slide share its tissue and stain.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    cells = torch.randperm(grid_side * grid_side, generator=generator)[:num_patches]
    coords = torch.stack([cells % grid_side, cells // grid_side], dim=1) * patch_size
    return {
        "slide_id": f"slide-{index}",
        "features": torch.randn(patch_dim, generator=generator)
        + 0.5 * torch.randn(num_patches, patch_dim, generator=generator),
        "coords": coords.int(),
        "patch_size_level0": patch_size,
        "caption": CAPTIONS[index % len(CAPTIONS)],
    }


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def processor(tokenizer, config):
    from modeling_pathflip import PathFLIPProcessor

    return PathFLIPProcessor.from_model_config(tokenizer, config)


@pytest.fixture
def model(config):
    from modeling_pathflip import PathFLIPModel

    torch.manual_seed(0)
    return PathFLIPModel(config).eval()


@pytest.fixture(scope="session")
def bag_factory():
    return make_bag


@pytest.fixture(scope="session")
def config_factory():
    return tiny_config


@pytest.fixture(scope="session")
def pathflip2_config_factory():
    return tiny_pathflip2_config


@pytest.fixture(scope="session")
def bag_inputs():
    """Select the bag tensors of a processor batch, in `get_slide_features` order."""
    from modeling_pathflip import BAG_INPUT_NAMES

    return lambda batch: {key: batch[key] for key in BAG_INPUT_NAMES}


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A free TCP port on the loopback interface, for a test's own process group."""
    return _free_loopback_port()


def tiny_llm_config(tokenizer, **overrides) -> dict:
    """A 2-layer LLaMA-style causal LM config for ``tokenizer`` (random weights)."""
    values = dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def llm_tokenizer():
    """A byte-level BPE tokenizer trained on the test captions, with the ``<image>`` placeholder."""
    from pathflip.demo.offline_tokenizers import train_causal_lm_tokenizer

    questions = ["Describe the slide.", "What is the diagnosis?", "Is there necrosis?", "A. B. C. yes no"]
    return train_causal_lm_tokenizer(CAPTIONS * 4 + questions * 4, vocab_size=400)


@pytest.fixture
def generation_model(llm_tokenizer):
    """A tiny PathFLIPForConditionalGeneration and its processor (max 5 visual tokens)."""
    from modeling_pathflip import (
        PathFLIPForConditionalGeneration,
        PathFLIPGenerationConfig,
        PathFLIPGenerationProcessor,
    )

    config = PathFLIPGenerationConfig(
        pathflip_config=tiny_config().to_dict(), llm_config=tiny_llm_config(llm_tokenizer), max_visual_tokens=5
    )
    processor = PathFLIPGenerationProcessor.from_model_config(llm_tokenizer, config, max_length=160)
    torch.manual_seed(0)
    return PathFLIPForConditionalGeneration(config).eval(), processor


ROOT = Path(__file__).resolve().parents[1]
MINIHUB = ROOT.parent / "shared" / "tools" / "minihub.py"


@pytest.fixture(scope="session")
def minihub(tmp_path_factory):
    """A loopback Hub (`../shared/tools/minihub.py`) and the environment of a client process that uses it.

    Yields ``(env, storage)``: ``env`` for subprocesses (HF_ENDPOINT, a token, no Xet, online), ``storage`` the
    server's data folder. Skips when the server script is absent.
    """
    import socket
    import subprocess
    import sys
    import time

    if not MINIHUB.is_file():
        pytest.skip(f"{MINIHUB} is absent (../shared/tools)")
    storage = tmp_path_factory.mktemp("minihub")
    port = _free_loopback_port()
    server = subprocess.Popen(
        [sys.executable, str(MINIHUB), str(port), str(storage)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("minihub did not start") from None
            time.sleep(0.2)
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN="test-token", HF_HUB_DISABLE_XET="1",
               HF_HOME=str(tmp_path_factory.mktemp("hub_client_home")))  # fmt: skip
    yield env, storage
    server.terminate()
    server.wait(timeout=10)


HUB_USER = """
import json, sys
hidden = json.loads(sys.argv[4])
for package in hidden:
    sys.modules[package] = None  # a user without the pathflip package
if not hidden:
    import modeling_pathflip  # a user with it: registered classes and tasks, no remote code
import torch
from huggingface_hub import HfApi
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline
repo_id, bag_file, task_options, _, out_file = sys.argv[1:]
revision = HfApi().model_info(repo_id).sha  # pinned, as the README tells users
hub = {"revision": revision, "trust_remote_code": bool(hidden)}
config = AutoConfig.from_pretrained(repo_id, **hub)
auto_class = AutoModelForImageTextToText if config.model_type == "pathflip_generation" else AutoModel
model = auto_class.from_pretrained(repo_id, **hub)
processor = AutoProcessor.from_pretrained(repo_id, **hub)
classes = [type(model).__module__, type(processor).__module__]
bag, options, outputs = torch.load(bag_file), json.loads(task_options), {}
for task in config.to_dict()["custom_pipelines"]:
    served = pipeline(task, model=repo_id, **hub)
    classes.append(type(served).__module__)
    outputs[task] = served(bag, **options.get(task, {}))
torch.save({"revision": revision, "classes": classes, "outputs": outputs}, out_file)
"""


@pytest.fixture(scope="session")
def hub_user(minihub, tmp_path_factory):
    """Load a repo of the loopback Hub by id in a fresh process, without the package (remote code) or with it,
    pinned to its head commit; run every task on a bag. Returns {revision, classes (modules), outputs}."""
    import json
    import subprocess
    import sys

    from pathflip.model_cards.check_remote_code import PACKAGES, TASK_OPTIONS

    def load(repo_id: str, bag: dict, *, with_package: bool = False) -> dict:
        folder = tmp_path_factory.mktemp("hub_user")
        (folder / "load.py").write_text(HUB_USER)
        torch.save(bag, folder / "bag.pt")
        hidden = [] if with_package else list(PACKAGES)
        arguments = [repo_id, str(folder / "bag.pt"), json.dumps(TASK_OPTIONS), json.dumps(hidden)]
        result = subprocess.run(
            [sys.executable, str(folder / "load.py"), *arguments, str(folder / "out.pt")],
            env={**minihub[0], "PYTHONPATH": str(ROOT) if with_package else ""}, cwd=folder, capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        return torch.load(folder / "out.pt", weights_only=False)

    return load


# ---- generated and real slides ------------------------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU = SHARED_DATA / "cmu-1-small-region.svs"
TCGA = SHARED_DATA / "tcga-cr-7395-01a-01-ts1.svs"


def tissue_image(height: int, width: int, seed: int, *, tissue: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like slide image: an elliptical piece of tissue (tumour + stroma halves) on white glass.

    Returns the RGB image and the true tissue mask.
    """
    from pathflip.synthetic.textures import render_texture

    rng = np.random.default_rng(seed)
    image = render_texture("background", height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width]
    mask = ((yy - height / 2) / (height * 0.35)) ** 2 + ((xx - width / 2) / (width * 0.35)) ** 2 < 1
    if tissue:
        left = render_texture("tumour", height, width, rng)
        right = render_texture("stroma", height, width, rng)
        tissue_pixels = np.where((xx < width / 2)[..., None], left, right)
        image = np.where(mask[..., None], tissue_pixels, image)
    return image.astype(np.uint8), mask & tissue


@pytest.fixture(scope="session")
def slide_factory(tmp_path_factory):
    """Write a generated slide: ``slide_factory(name, layout=..., mpp=..., tissue=...) -> Path``."""
    from pathflip.synthetic.textures import write_pyramid

    folder = tmp_path_factory.mktemp("slides")

    def make(
        name: str,
        *,
        layout: str = "generic",
        mpp: float | None = 0.5,
        tissue: bool = True,
        seed: int = 0,
        size: tuple[int, int] = (1536, 2048),
        compression: str | None = "jpeg",
    ) -> Path:
        path = folder / f"{name}.{'svs' if layout == 'aperio' else 'tiff'}"
        if not path.exists():
            image, _ = tissue_image(*size, seed, tissue=tissue)
            write_pyramid(path, image, mpp=mpp, layout=layout, levels=3, compression=compression)
        return path

    return make


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} not available (../shared/data is absent)")
    return path


@pytest.fixture
def cmu_slide() -> Path:
    """The real OpenSlide test slide (Aperio, one level, mpp 0.499); skips when ../shared/data is absent."""
    return _shared(CMU)


@pytest.fixture
def tcga_slide() -> Path:
    """The real TCGA slide (two levels, no mpp); skips when ../shared/data is absent."""
    return _shared(TCGA)


@pytest.fixture(scope="session")
def make_tissue_image():
    return tissue_image
