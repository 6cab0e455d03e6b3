"""Metrics and evaluation runners for PathFLIP (zero-shot classification, retrieval, grounding)."""
