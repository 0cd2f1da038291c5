"""Tuning methods. Each module registers itself; importing this package imports every method."""

from methods import full_finetune, side_tuning  # noqa: F401
from methods.build import build_model
from methods.registry import get_method, list_methods

__all__ = ["build_model", "get_method", "list_methods"]
