"""Tuning methods. Each module registers itself; this package imports every one explicitly."""

from methods import adapter, bitfit, frozen, full_finetune, lora, prompt_tuning, side_tuning, ssf, vpt  # noqa: F401
from methods.build import build_model
from methods.registry import get_method, list_methods, method_cases, perf_rows

__all__ = ["build_model", "get_method", "list_methods", "method_cases", "perf_rows"]
