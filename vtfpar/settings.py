"""Typed settings with their allowed ranges, checked in one place.

A settings dataclass declares each field with ``setting(default, ...)``: bounds (``ge``, ``gt``,
``le``, ``lt``) or ``choices``. ``check_settings(obj, section)`` (called from the dataclass's
``__post_init__``) raises a one-line ``SettingError`` naming ``section.key``, the allowed range and
the value; floats must also be finite. Cross-field rules stay in the ``__post_init__`` after it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from vtfpar.errors import UserError


class SettingError(UserError):
    """A setting outside its allowed range; ``key`` is ``section.name`` so the caller can say where it came from
    (``also``: further keys of a check of settings together, such as side_tuning's taps against its depth)."""

    def __init__(self, key: str, message: str, also: tuple[str, ...] = ()):
        super().__init__(message)
        self.key, self.also = key, tuple(also)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key, *self.also)

    def __reduce__(self):  # rebuilt from its parts (another process, Ray)
        return type(self), (self.key, str(self), self.also)


MAX_BLOCKS = 256
"""The most Transformer blocks a depth setting builds (``model.fusion_depth``, ``methods.side_tuning.depth``): far
past any paper's, short of a model whose construction alone runs for minutes before memory runs out."""


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field with a default and its allowed values."""
    rules = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices))
             if v is not None}
    return dataclasses.field(default=default, metadata={"rules": rules})


def _allowed(rules: dict) -> str:
    if "choices" in rules:
        return "one of " + ", ".join(str(c) for c in rules["choices"])
    low = f">= {rules['ge']}" if "ge" in rules else f"> {rules['gt']}" if "gt" in rules else ""
    high = f"<= {rules['le']}" if "le" in rules else f"< {rules['lt']}" if "lt" in rules else ""
    return " and ".join(p for p in (low, high) if p) or "a finite number"


def check_settings(obj: Any, section: str, method: str | None = None) -> None:
    """Check every field of ``obj`` against its rules. ``section`` is its config section (``train``); a
    method's settings pass ``method`` instead (section ``methods.<method>``, messages ``<method>: ...``)."""
    for f in dataclasses.fields(obj):
        _check_field(f, getattr(obj, f.name), section, method)


def check_value(cls: type, name: str, value: Any, section: str, method: str | None = None) -> None:
    """Check one value of the field ``name`` of the settings class ``cls`` against that field's rules (what
    ``check_settings`` does for each field), e.g. a setting of a profile that this run does not use."""
    _check_field(next(f for f in dataclasses.fields(cls) if f.name == name), value, section, method)


def _check_field(f: dataclasses.Field, value: Any, section: str, method: str | None) -> None:
    rules = f.metadata.get("rules", {})
    key = f"methods.{method}.{f.name}" if method is not None else f"{section}.{f.name}"
    shown = f"{method}: {f.name}" if method is not None else key
    if isinstance(value, float) and not math.isfinite(value):  # inf passes "> 0": say finite whatever the bounds
        bounds = "" if "choices" in rules or not rules else " " + _allowed(rules)
        raise SettingError(key, f"{shown} must be a finite number{bounds}, got {value}")
    if isinstance(value, str) and "\x00" in value:  # no path, name or tag holds one: the system refuses it later
        raise SettingError(key, f"{shown} holds a NUL character: {value!r}; remove it")
    if not rules or isinstance(value, bool):
        return
    if "choices" in rules:
        if value not in rules["choices"]:
            options = [str(c) for c in rules["choices"]]
            choose = " or ".join(options) if len(options) == 2 else ", ".join(options)
            message = (f"{method}: unknown {f.name} {value!r}: choose {choose}" if method is not None
                       else f"{key} must be {_allowed(rules)}, got {value!r}")
            raise SettingError(key, message)
        return
    if not all(("ge" not in rules or value >= rules["ge"], "gt" not in rules or value > rules["gt"],
                "le" not in rules or value <= rules["le"], "lt" not in rules or value < rules["lt"])):
        raise SettingError(key, f"{shown} must be {_allowed(rules)}, got {value!r}")
