"""Tuning methods. Each module registers itself; this package imports every one explicitly."""

from methods import (  # noqa: F401
    adapter,
    aim,
    bitfit,
    frozen,
    full_finetune,
    ia3,
    lora,
    lst,
    prompt_tuning,
    side_tuning,
    ssf,
    st_adapter,
    vpt,
)
from methods.build import build_model
from methods.registry import get_method, list_methods, method_cases, perf_rows

__all__ = ["build_model", "get_method", "list_methods", "method_cases", "perf_rows"]
