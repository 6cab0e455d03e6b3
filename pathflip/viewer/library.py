"""The slides a viewer serves: ids mapped to files fixed at start-up, and their Deep Zoom tiles.

A request names a slide by its key; the key is looked up in the table built when the server starts and is never
joined into a path, so no request can reach a file outside the configured folder (or the cohort table's list).
Files reached through a symbolic link that leads out of the folder are left out at start-up and refused again
when opened, in case a link changed since.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..files import safe_name
from ..processing.cohort_table import read_cohort_table
from ..processing.extract import SLIDE_SUFFIXES, find_slides

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


class UnknownSlideError(KeyError):
    """A request named a slide the server does not serve."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ServedSlide:
    """One slide of the library: its URL key, id, file and what the cohort table says about it."""

    key: str
    slide_id: str
    path: Path
    mpp: float | None = None
    label: str | None = None
    caption: str | None = None


class SlideLibrary:
    """The slides of a folder (every slide file under it) or of a cohort table (the files it lists).

    Args:
        source: a folder of slides or a cohort table (.csv, .tsv, .parquet with a ``slide`` column).
        tile_size, overlap: Deep Zoom tile geometry.
        tile_cache: how many encoded tiles to keep (least recently used go first).
        jpeg_quality: quality of the JPEG tiles and thumbnails.
    """

    def __init__(self, source: str | Path, *, tile_size: int = 254, overlap: int = 1, tile_cache: int = 2048,
                 jpeg_quality: int = 80):  # fmt: skip
        source = Path(source)
        self.class_names: list[str] = []
        if source.is_dir():
            self.root: Path | None = source.resolve()
            found = find_slides([source])
            self.skipped = [path for path in found if not _inside(path, self.root)]
            slides = [ServedSlide(safe_name(path.stem), path.stem, path) for path in found if path not in self.skipped]
        elif source.is_file() and source.suffix.lower() in TABLE_SUFFIXES:
            table = read_cohort_table(source)
            self.root, self.skipped, self.class_names = None, [], table.class_names
            slides = [ServedSlide(safe_name(row.slide_id), row.slide_id, row.slide, row.mpp, row.label, row.caption)
                      for row in table.rows]  # fmt: skip
        else:
            raise ValueError(f"--slides {source}: give a folder of slides or a cohort table (.csv, .tsv, .parquet).")
        if not slides:
            raise ValueError(f"--slides {source}: no slide file ({', '.join(sorted(SLIDE_SUFFIXES))}) to serve.")
        self.slides: dict[str, ServedSlide] = {slide.key: slide for slide in slides}
        self.tile_size, self.overlap, self.jpeg_quality = tile_size, overlap, jpeg_quality
        self._tile_cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._tile_cache_size = tile_cache
        self._opened: dict[str, tuple] = {}  # key -> (OpenSlide, DeepZoomGenerator)
        self._thumbnails: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ServedSlide:
        """The slide served under ``key``."""
        slide = self.slides.get(key)
        if slide is None:
            raise UnknownSlideError(f"no slide {key!r} here; GET /api/slides lists the slides this server serves.")
        return slide

    def by_id(self, slide_id: str) -> ServedSlide | None:
        """The slide whose id is ``slide_id`` (a bag's slide id), if served."""
        return self.slides.get(safe_name(slide_id))

    def deep_zoom(self, key: str):
        """The slide's `openslide.deepzoom.DeepZoomGenerator` (opened once; level-0 coordinates, no bounds crop)."""
        return self._open(key)[1]

    def _open(self, key: str) -> tuple:
        with self._lock:
            opened = self._opened.get(key)
        if opened is not None:
            return opened
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        slide = self.get(key)
        if self.root is not None and not _inside(slide.path, self.root):
            raise UnknownSlideError(f"slide {key!r} now leads outside {self.root}; it is not served.")
        try:
            handle = openslide.OpenSlide(str(slide.path))
        except (openslide.OpenSlideError, OSError) as error:
            raise ValueError(f"slide {slide.slide_id!r}: {slide.path.name} cannot be read ({error}).") from error
        # No bounds crop: tile pixels then line up with the level-0 coordinates that bags and heatmaps use.
        generator = DeepZoomGenerator(handle, tile_size=self.tile_size, overlap=self.overlap, limit_bounds=False)
        with self._lock:
            return self._opened.setdefault(key, (handle, generator))

    def dzi(self, key: str) -> str:
        """The slide's Deep Zoom descriptor (XML) for JPEG tiles."""
        return self.deep_zoom(key).get_dzi("jpeg")

    def dimensions(self, key: str) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.deep_zoom(key).level_dimensions[-1]

    def tile(self, key: str, level: int, column: int, row: int) -> bytes:
        """One JPEG tile, from the cache when it was served before."""
        cache_key = (key, level, column, row)
        with self._lock:
            cached = self._tile_cache.get(cache_key)
            if cached is not None:
                self._tile_cache.move_to_end(cache_key)
                return cached
        generator = self.deep_zoom(key)
        if not 0 <= level < generator.level_count:
            raise ValueError(f"tile level {level} of slide {key!r} does not exist: levels are "
                             f"0..{generator.level_count - 1}.")  # fmt: skip
        columns, rows = generator.level_tiles[level]
        if not (0 <= column < columns and 0 <= row < rows):
            raise ValueError(f"tile {column}_{row} of slide {key!r} level {level} does not exist: the level has "
                             f"{columns}x{rows} tiles.")  # fmt: skip
        encoded = _jpeg(generator.get_tile(level, (column, row)), self.jpeg_quality)
        with self._lock:
            self._tile_cache[cache_key] = encoded
            while len(self._tile_cache) > self._tile_cache_size:
                self._tile_cache.popitem(last=False)
        return encoded

    def thumbnail(self, key: str, longest: int = 256) -> bytes:
        """A JPEG thumbnail whose longer side is ``longest`` pixels (kept once made)."""
        with self._lock:
            cached = self._thumbnails.get((key, longest))
        if cached is None:
            cached = _jpeg(self.thumbnail_image(key, longest), self.jpeg_quality)
            with self._lock:
                self._thumbnails[(key, longest)] = cached
        return cached

    def thumbnail_image(self, key: str, longest: int):
        """The slide thumbnail as an RGB PIL image whose longer side is ``longest`` pixels."""
        return self._open(key)[0].get_thumbnail((longest, longest)).convert("RGB")


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symbolic link followed, lies under ``root`` (a link loop does not)."""
    try:
        return path.resolve(strict=True).is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop or a dangling link: skipped, and listed as such
        return False


def _jpeg(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
