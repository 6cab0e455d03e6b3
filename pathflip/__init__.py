"""PathFLIP for whole slide images: the library and the `pathflip` command line.

Rooms, each with one job; imports only go down this list:

- ``modeling_pathflip`` (its own import root): configs, models, processors, pipelines and losses; the code a
  Hub repository carries, importing only torch, transformers and the standard library.
- ``pathflip.files``: atomic, durable writes of files and folders.
- ``pathflip.processing``: slides -> feature bags (reader, tissue, tiler, encoders, extraction, importers, the
  bag schema) and the slide-file input loader the pipelines look up.
- ``pathflip.eval``: metrics, `evaluate` modules, the evaluation runner and the evaluation spec.
- ``pathflip.model_cards``: model cards and Hub publishing.
- ``pathflip.training``: arguments, collator, `Trainer` subclass and stages behind `pathflip train` / train.py.
- ``pathflip.synthetic``: generated slides and cohorts with ground truth.
- ``pathflip.demo``: the whole job on a generated cohort (`pathflip demo`).
- ``pathflip.cli``: the `pathflip` command line.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathflip")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
