"""Slides made ready for text: each slide's bag and the model's encoding of it, computed once and kept.

A slide is prepared in a background worker: its bag comes from ``--bags``, or the slide file is tiled and encoded
as the model's config records (patch encoder, patch side in µm and pixels), with progress; then the model encodes
the bag once. Every sentence, zero-shot question and search afterwards encodes only its texts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..processing.inputs import encode_slide_file
from .bags import BagSource
from .library import ServedSlide, SlideLibrary

# The reader's and tiler's messages name `pathflip extract` options; the viewer takes those settings elsewhere.
SERVE_HINT = (" (in the viewer: an mpp goes in a cohort table's mpp column given as --slides; other tiling options "
              "through pathflip extract, whose output --bags serves)")


class NotReadyError(RuntimeError):
    """The slide is not prepared yet (its status says how far it is)."""


class SlideFailedError(RuntimeError):
    """The slide could not be prepared; the message says why (POST .../prepare tries again)."""


@dataclass
class PreparedSlide:
    """One slide as the model sees it: processor inputs, patch geometry and the kept slide encoding."""

    slide_id: str
    inputs: dict[str, torch.Tensor]
    coords: torch.Tensor
    patch_size_level0: int
    slide_features: Any
    slide_embedding: torch.Tensor


@dataclass
class Preparation:
    """Where a slide's preparation stands: ``state`` is new, queued, encoding, ready or failed."""

    state: str = "new"
    done: int = 0
    total: int = 0
    message: str = ""
    patches: int = 0

    def as_json(self) -> dict[str, Any]:
        progress = 1.0 if self.state == "ready" else (self.done / self.total if self.total else 0.0)
        return {"state": self.state, "progress": round(progress, 4), "message": self.message, "patches": self.patches}


@dataclass
class SlideEncodings:
    """Prepares slides in one background worker and keeps the ``keep`` most recently used.

    Args:
        pipe: a ``slide-grounding`` pipeline (its model, processor and device are used).
        library: the served slides.
        bags: where bags are read from; slides without one are tiled and encoded on first use.
        patch_encoder: overrides the model's recorded patch encoder for slides without a bag.
        keep: how many prepared slides to hold in memory.
    """

    pipe: Any
    library: SlideLibrary
    bags: BagSource | None = None
    patch_encoder: str | None = None
    keep: int = 8
    model_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._prepared: OrderedDict[str, PreparedSlide] = OrderedDict()
        self._status: dict[str, Preparation] = {}
        self.embeddings: dict[str, torch.Tensor] = {}  # slide key -> unit slide embedding (the search index)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pathflip-encode")
        self._lock = threading.Lock()

    @property
    def model(self):
        return self.pipe.model

    def status(self, key: str) -> Preparation:
        self.library.get(key)
        with self._lock:
            return self._status.setdefault(key, Preparation())

    def prepare(self, key: str) -> Preparation:
        """Start preparing ``key`` unless it is ready or under way (a failed slide is tried again)."""
        status = self.status(key)
        with self._lock:
            if status.state in ("new", "failed") or (status.state == "ready" and key not in self._prepared):
                self._status[key] = status = Preparation(state="queued")
                self._worker.submit(self._prepare, key)
        return status

    def get(self, key: str) -> PreparedSlide:
        """The prepared slide, or `NotReadyError` naming its state."""
        with self._lock:
            prepared = self._prepared.get(key)
            if prepared is not None:
                self._prepared.move_to_end(key)
                return prepared
        if self.status(key).state == "failed":  # asking again must not re-encode it on every request
            raise SlideFailedError(f"{self.status(key).message} (fix the slide, then POST /api/slides/{key}/prepare "
                                   "to try again)")  # fmt: skip
        status = self.prepare(key)
        raise NotReadyError(f"slide {key!r} is {status.state} ({status.as_json()['progress']:.0%}); POST "
                            f"/api/slides/{key}/prepare and poll its status.")  # fmt: skip

    def wait(self, key: str, timeout: float | None = None) -> PreparedSlide:
        """Prepare ``key`` and block until it is ready (for scripts, tests and benchmarks)."""
        while True:  # a slide prepared while many were queued may have been dropped again before it is asked for
            self.prepare(key)
            self._worker.submit(lambda: None).result(timeout)  # one worker: done once all queued before are done
            status = self.status(key)
            if status.state == "failed":
                raise ValueError(status.message)
            with self._lock:
                prepared = self._prepared.get(key)
                if prepared is not None:
                    self._prepared.move_to_end(key)
                    return prepared

    def index_all(self) -> int:
        """Queue every slide not yet in the search index; returns how many were queued."""
        missing = [key for key in self.library.slides if key not in self.embeddings]
        for key in missing:
            self.prepare(key)
        return len(missing)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, key: str) -> None:
        slide, status = self.library.get(key), self.status(key)
        status.state = "encoding"
        try:
            prepared = self._encode(slide, status)
        except Exception as error:  # reported through the slide's status; the server goes on
            name = f"slide {slide.slide_id!r}"
            named = str(error) if str(error).startswith(name) else f"{name}: {error}"
            status.state, status.message = "failed", named + SERVE_HINT
            return
        with self._lock:
            self._prepared[key] = prepared
            self.embeddings[key] = prepared.slide_embedding
            while len(self._prepared) > self.keep:
                self._prepared.popitem(last=False)
            status.state, status.patches, status.message = "ready", len(prepared.coords), ""

    def _encode(self, slide: ServedSlide, status: Preparation) -> PreparedSlide:
        bag = self._bag(slide, status)
        batch = self.pipe.bag_batch(bag)
        if batch["patch_size_level0"] is None:
            raise ValueError("its bag has no patch_size_level0, which heatmaps need; re-extract or re-import it.")
        inputs = {name: tensor.to(self.pipe.device) for name, tensor in batch["bag"].items()}
        with self.model_lock, torch.inference_mode():
            features = self.model.get_slide_features(**inputs, **_region_weights_option(self.model))
        embedding = torch.nn.functional.normalize(features.slide_embeds[0].float(), dim=-1).cpu()
        return PreparedSlide(slide.slide_id, inputs, batch["coords"], batch["patch_size_level0"], features, embedding)

    def _bag(self, slide: ServedSlide, status: Preparation) -> dict[str, Any]:
        if self.bags is not None and slide.slide_id in self.bags:
            return self.bags.load(slide.slide_id)
        config = getattr(self.model.config, "pathflip_config", self.model.config)
        encoder = self.patch_encoder or config.patch_encoder
        if encoder is None:
            raise ValueError("it has no bag in --bags and the model records no patch encoder; pass --bags "
                             "(pathflip extract's output) or --patch-encoder.")  # fmt: skip

        def progress(done: int, total: int) -> None:
            status.done, status.total = done, total

        return encode_slide_file(slide.path, encoder=encoder, mpp=slide.mpp, patch_size_um=config.patch_size_um,
                                 patch_size_px=getattr(config, "patch_size_px", None), device=self.pipe.device,
                                 slide_id=slide.slide_id, progress=progress, num_workers=0)  # fmt: skip


def _region_weights_option(model) -> dict[str, bool]:
    """PathFLIP grounds through the Region Q-Former's patch weights, which must be kept with the encoding."""
    import inspect

    parameters = inspect.signature(model.get_slide_features).parameters
    return {"output_region_patch_weights": True} if "output_region_patch_weights" in parameters else {}
