"""Model cards for PathFLIP folders."""

from .generator import eval_results, write_model_card

__all__ = ["eval_results", "write_model_card"]
