import numpy as np
import pytest
from PIL import Image

from pathflip.processing.reader import SlideError, SlideReader


@pytest.mark.parametrize("layout", ["generic", "aperio"])
def test_geometry_and_mpp_of_generated_slides(slide_factory, layout):
    with SlideReader(slide_factory(f"geometry-{layout}", layout=layout, mpp=0.25)) as reader:
        assert reader.dimensions == (2048, 1536)
        assert reader.level_count == 3
        assert [round(d) for d in reader.level_downsamples] == [1, 2, 4]
        assert reader.mpp == pytest.approx(0.25, rel=1e-3)
        assert reader.vendor == ("aperio" if layout == "aperio" else "generic-tiff")


def test_missing_mpp_is_an_error_that_names_the_slide_and_the_override(slide_factory):
    path = slide_factory("no-mpp", layout="aperio", mpp=None)
    with SlideReader(path) as reader, pytest.raises(SlideError, match=r"slide 'no-mpp'.*--mpp.*never guessed"):
        _ = reader.mpp
    with SlideReader(path, mpp=0.5) as reader:
        assert reader.mpp == 0.5


def test_missing_non_slide_and_corrupt_files_are_named(tmp_path, slide_factory):
    with pytest.raises(SlideError, match=r"slide 'absent'.*does not exist"):
        SlideReader(tmp_path / "absent.svs")
    text = tmp_path / "notes.tiff"
    text.write_text("not an image")
    with pytest.raises(SlideError, match=r"slide 'notes'.*not a slide OpenSlide can read"):
        SlideReader(text)
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(slide_factory("source").read_bytes()[:5000])
    with pytest.raises(SlideError, match=r"slide 'corrupt'"):
        with SlideReader(corrupt) as reader:
            reader.read_region((0, 0), 0, (512, 512))


@pytest.mark.parametrize("layout", ["generic", "aperio"])
def test_patch_from_a_reduced_level_matches_the_downsampled_level0_read(slide_factory, layout):
    with SlideReader(slide_factory(f"levels-{layout}", layout=layout)) as reader:
        assert reader.best_level(2.0) == 1
        from_level1 = reader.read_patch(512, 512, 512, 256).astype(float)
        level0 = reader.read_region((512, 512), 0, (512, 512))
        downsampled = np.asarray(Image.fromarray(level0).resize((256, 256), Image.Resampling.BOX)).astype(float)
    assert np.abs(from_level1 - downsampled).mean() < 6  # JPEG on both reads


def test_real_two_level_slide_reduced_level_read(tcga_slide):
    with SlideReader(tcga_slide, mpp=0.5) as reader:
        from_level1 = reader.read_patch(2048, 1536, 512, 256).astype(float)
        level0 = reader.read_region((2048, 1536), 0, (512, 512))
        downsampled = np.asarray(Image.fromarray(level0).resize((256, 256), Image.Resampling.BOX)).astype(float)
    assert np.abs(from_level1 - downsampled).mean() < 8


def test_real_aperio_slide_metadata(cmu_slide):
    with SlideReader(cmu_slide) as reader:
        assert reader.mpp == pytest.approx(0.499)
        assert reader.objective_power == 20
        assert reader.dimensions == (2220, 2967)
