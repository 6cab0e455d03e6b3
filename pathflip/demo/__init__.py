"""The demo: the whole job on a generated cohort (`pathflip demo`), trained in-process with `pathflip train`'s code."""

from .options import DemoOptions
from .run import run_demo

__all__ = ["DemoOptions", "run_demo"]
