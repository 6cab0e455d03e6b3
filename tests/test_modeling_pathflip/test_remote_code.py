"""A saved folder carries its code: it loads with trust_remote_code=True where the package is absent."""

import json
import os
import subprocess
import sys
import textwrap

import torch

LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_pathflip"] = None  # the package is not installed here: importing it fails
    import torch
    from transformers import AutoModel, AutoProcessor
    folder, bags_file, out_file = sys.argv[1:]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert model.__class__.__module__.startswith("transformers_modules"), model.__class__.__module__
    assert processor.__class__.__module__.startswith("transformers_modules"), processor.__class__.__module__
    batch = processor(torch.load(bags_file))
    with torch.no_grad():
        output = model(**batch)
    torch.save({"loss": output.loss, "slide_embeds": output.slide_embeds, "text_embeds": output.text_embeds,
                "region_embeds": output.region_embeds, "batch": dict(batch)}, out_file)
    """
)


def test_folder_loads_as_remote_code_without_the_package(tmp_path, model, processor, bag_factory):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pathflip.PathFLIPConfig",
        "AutoModel": "modeling_pathflip.PathFLIPModel",
    }
    code_files = {
        "attention_pathflip.py",
        "configuration_pathflip.py",
        "modeling_pathflip.py",
        "loss_pathflip.py",
        "processing_pathflip.py",
        "subcaptions_pathflip.py",
    }
    assert code_files <= {path.name for path in folder.iterdir()}

    bags = [bag_factory(0, 25), bag_factory(1, 40)]
    torch.save(bags, tmp_path / "bags.pt")
    batch = processor(bags)
    with torch.no_grad():
        expected = model(**batch)

    script = tmp_path / "load.py"
    script.write_text(LOADER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "bags.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for key, value in batch.items():
        assert torch.equal(got["batch"][key], value) if torch.is_tensor(value) else got["batch"][key] == value
    for key in ("loss", "slide_embeds", "text_embeds", "region_embeds"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
