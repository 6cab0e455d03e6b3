"""Where the viewer finds a slide's bag: an extraction folder, a folder of bag files, or a feature-bag dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..processing.bags import load_bag_dataset
from ..processing.extract import bag_metadata, read_bag_file


class BagSource:
    """Bags by slide id.

    Args:
        source: a `pathflip extract` output folder (its ``bags/``), a folder of ``.safetensors`` / ``.h5`` bags, or
            a feature-bag dataset (`save_to_disk` folder or parquet; every split is searched).
    """

    def __init__(self, source: str | Path):
        self.source = Path(source)
        if not self.source.exists():
            raise ValueError(f"--bags {source}: no such folder or dataset; give `pathflip extract`'s output folder "
                             "or a feature-bag dataset.")  # fmt: skip
        self.class_names: list[str] = []
        self.captions: dict[str, str] = {}
        self._files: dict[str, Path] = {}
        self._rows: dict[str, tuple[Any, int]] = {}
        folder = self.source / "bags" if (self.source / "bags").is_dir() else self.source
        bag_files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.h5")) if folder.is_dir() else []
        if bag_files:
            for path in bag_files:
                metadata = bag_metadata(path) if path.suffix == ".safetensors" else {"slide_id": path.stem}
                if metadata is not None:  # a torn file is re-extracted by `pathflip extract`, not served
                    self._files[metadata.get("slide_id", path.stem)] = path
        else:
            self._index_dataset()
        if not self._files and not self._rows:
            raise ValueError(f"--bags {source} holds no bag with a slide_id; give `pathflip extract`'s output folder "
                             "or a feature-bag dataset.")  # fmt: skip

    def _index_dataset(self) -> None:
        import datasets

        splits = load_bag_dataset(self.source)
        for split in splits.values():
            if "slide_id" not in split.column_names:
                raise ValueError(f"--bags {self.source}: the dataset has no slide_id column (it has "
                                 f"{split.column_names}); the viewer matches bags to slides by id.")  # fmt: skip
            label = split.features.get("label")
            if isinstance(label, datasets.ClassLabel) and not self.class_names:
                self.class_names = list(label.names)
            columns = [name for name in ("slide_id", "caption") if name in split.column_names]
            for row_number, row in enumerate(split.select_columns(columns)):
                self._rows[row["slide_id"]] = (split, row_number)
                if row.get("caption"):
                    self.captions[row["slide_id"]] = row["caption"]

    def __contains__(self, slide_id: str) -> bool:
        return slide_id in self._files or slide_id in self._rows

    def load(self, slide_id: str) -> dict[str, Any]:
        """The bag of ``slide_id`` as a dataset row (numpy arrays)."""
        if slide_id in self._files:
            path = self._files[slide_id]
            if path.suffix == ".h5":
                from ..processing.importers import read_h5_bag

                return read_h5_bag(path)
            return read_bag_file(path)
        if slide_id in self._rows:
            split, row_number = self._rows[slide_id]
            return split.with_format("numpy")[row_number]
        raise KeyError(slide_id)
