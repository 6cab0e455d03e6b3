import json

import numpy as np
import pytest
from PIL import Image

from modeling_pathflip.heatmap_pathflip import heatmap_raster, top_patches_geojson
from pathflip.processing.heatmap import overlay_png, write_geojson

COORDS = np.array([[0, 0], [512, 0], [0, 512], [1024, 1024]])
SCORES = np.array([0.1, 0.7, 0.2, 0.4])


def test_raster_paints_each_patch_at_thumbnail_scale():
    raster = heatmap_raster(SCORES, COORDS, 512, dimensions=(2048, 2048), size=(64, 64))
    assert raster.shape == (64, 64)
    assert float(raster[0, 16]) == pytest.approx(1.0) and float(raster[0, 0]) == pytest.approx(0.0)  # min-max
    assert bool(raster[63, 0].isnan()), "no patch there"
    assert float(raster[40, 40]) == pytest.approx((0.4 - 0.1) / 0.6)
    assert int(raster.isnan().logical_not().sum()) == 4 * 16 * 16, "each patch covers exactly its 16x16 pixels"


def test_raster_follows_a_grid_offset_from_the_origin():
    raster = heatmap_raster(SCORES, COORDS + 100, 512, dimensions=(2148, 2148), size=(2148, 2148))
    assert bool(raster[99, 99].isnan()) and float(raster[100, 100]) == pytest.approx(0.0)
    assert float(raster[100, 612]) == pytest.approx(1.0) and bool(raster[611, 1124].isnan())


def test_png_has_the_raster_size_and_colours_only_patches(tmp_path):
    raster = heatmap_raster(SCORES, COORDS, 512, dimensions=(2048, 2048), size=(64, 48))
    background = np.full((48, 64, 3), 200, np.uint8)
    image = np.asarray(Image.open(overlay_png(raster, tmp_path / "map.png", background)))
    assert image.shape == (48, 64, 3)
    assert (image[47, 0] == 200).all() and not (image[0, 20] == 200).all()
    with pytest.raises(ValueError, match="resize"):
        overlay_png(raster, tmp_path / "bad.png", np.zeros((10, 10, 3), np.uint8))


def test_geojson_is_valid_and_in_level0_pixels(tmp_path):
    collection = top_patches_geojson(SCORES, COORDS, 512, top_k=3)
    loaded = json.loads(write_geojson(collection, tmp_path / "top.geojson").read_text())
    assert loaded["type"] == "FeatureCollection" and len(loaded["features"]) == 3
    assert [feature["properties"]["score"] for feature in loaded["features"]] == [0.7, 0.4, 0.2]
    for feature in loaded["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5, "closed ring"
        xs, ys = [point[0] for point in ring], [point[1] for point in ring]
        assert min(xs) >= 0 and min(ys) >= 0 and max(xs) <= 2048 and max(ys) <= 2048
        assert max(xs) - min(xs) == 512 and max(ys) - min(ys) == 512


def test_heatmap_command_writes_png_and_geojson_over_the_slide(tmp_path, slide_factory, tokenizer, config_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor, save_pretrained_with_pipelines
    from pathflip.cli import main
    from pathflip.processing.encoders import load_encoder
    from pathflip.processing.extract import ExtractionOptions, run_extraction

    slide = slide_factory("heatmap-slide")
    run_extraction([slide], tmp_path / "bags", load_encoder("stain-texture"), ExtractionOptions(num_workers=0))
    config = config_factory(patch_dim=96)
    save_pretrained_with_pipelines(
        PathFLIPModel(config).eval(), PathFLIPProcessor.from_model_config(tokenizer, config), tmp_path / "model"
    )
    bag = tmp_path / "bags" / "bags" / "heatmap-slide.safetensors"
    arguments = ["heatmap", str(tmp_path / "model"), str(bag), "-s", "dense tumour", "-s", "fibrous stroma",
                 "-o", str(tmp_path / "maps"), "--slide", str(slide), "--top-k", "5"]  # fmt: skip
    assert main(arguments) == 0
    (image_file,) = (tmp_path / "maps").glob("heatmap-slide_dense-tumour-*.png")
    image = Image.open(image_file)
    assert max(image.size) == 1024 and image.size[0] / image.size[1] == pytest.approx(2048 / 1536, rel=0.01)
    (geojson_file,) = (tmp_path / "maps").glob("heatmap-slide_fibrous-stroma-*.geojson")
    collection = json.loads(geojson_file.read_text())
    assert len(collection["features"]) == 5
    for feature in collection["features"]:
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and all(0 <= x <= 2048 and 0 <= y <= 1536 for x, y in ring)


def test_a_background_slide_that_is_not_the_bags_is_refused(tmp_path, slide_factory, tokenizer, config_factory,
                                                             bag_factory):  # fmt: skip
    from transformers import pipeline

    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor, save_pretrained_with_pipelines

    config = config_factory()
    save_pretrained_with_pipelines(PathFLIPModel(config).eval(), PathFLIPProcessor.from_model_config(tokenizer, config),
                                   tmp_path / "model")  # fmt: skip
    bag = bag_factory(0, 20)
    bag["coords"] = bag["coords"] + 5000  # beyond the 2048 x 1536 slide
    with pytest.raises(ValueError, match=r"is 2048x1536 level-0 px, but the bag's patches reach .*not this bag's"):
        pipeline("slide-grounding", model=str(tmp_path / "model"))(bag, sentences="x", slide=str(slide_factory("bg")))
