"""The one registry of tuning methods.

A method is one file in ``methods/`` that calls ``register_method(MethodSpec(...))`` and one
import line in ``methods/__init__.py`` (and, if its config has settings, a ``[methods.<name>]`` table
in ``bench.toml`` with each at its default). Its spec is everything the rest of the suite needs:

* ``config_cls``: a dataclass of the method's settings, defaults from its paper; ``__post_init__``
  validates and raises ``UserError`` (the config layer reads ``[methods.<name>]`` into it);
* ``build(vision, cfg, ctx) -> VideoEncoder`` (and optionally ``build_text`` for methods that tune
  the text side);
* ``prefixes``: substrings that mark the method's own trainable parameters (the generic test
  matrix checks that nothing else besides fusion and head trains; ``build_model`` refuses a method
  whose build leaves none of them trainable, which would otherwise run as the frozen baseline, or
  anything else trainable, which would fine-tune it under the method's name);
* ``order``: where the method sits in tables and charts (cheap baselines first);
* ``variants``: other settings worth testing and measuring, ``Variant(id, overrides)``; every
  variant becomes a row of the generic test matrix, and one marked ``perf`` a row of ``bench perf``.

Deployment form needs no registry entry: any module the method builds may define
``deploy()`` / ``undeploy()`` (see ``vtfpar.model``). Registering a name twice, or asking for an
unknown one, is a ``UserError`` (one line from the CLI, exit code 2).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vtfpar.backbone import ClipVision
from vtfpar.errors import UserError
from vtfpar.text import ClipText


@dataclass(frozen=True)
class BuildContext:
    """What a method may need beyond the vision tower: the frame count and the text side."""

    frames: int
    backbone: str
    sentences: tuple[str, ...]
    text: ClipText


@dataclass(frozen=True)
class Variant:
    """A named setting of a method: ``overrides`` are keys of its config dataclass."""

    id: str
    overrides: dict[str, Any]
    perf: bool = False  # also measured by ``bench perf`` as the row ``<method>+<id>``


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    build: Callable[[ClipVision, Any, BuildContext], nn.Module]
    prefixes: tuple[str, ...]  # substrings marking the method's own trainable parameters
    summary: str  # what trains, one line (bench list)
    source: str  # the paper the method comes from (README, report)
    order: int  # position in tables and charts, ascending
    build_text: Callable[[Any, BuildContext], nn.Module] | None = None
    variants: tuple[Variant, ...] = field(default=())
    # (settings, backbone) -> the same settings as one experiment is written (side_tuning: taps given as the
    # backbone's default are the default), so that settings that build the same model share one run id
    canonical: Callable[[Any, str], Any] | None = None


_REGISTRY: dict[str, MethodSpec] = {}
_FILES: dict[str, str] = {}  # name -> the file that registered it


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the registry, called by the method's own file. A name already taken, or variant ids given
    twice, stop every command (the registry is read on import) with one line naming both files and the fix."""
    here = _module_file(sys._getframe(1).f_globals.get("__name__", spec.build.__module__))
    if spec.name in _REGISTRY:
        raise UserError(f"{here}: method name '{spec.name}' is already registered by "
                        f"{method_file(_REGISTRY[spec.name])}: give the MethodSpec another name")
    ids = [v.id for v in spec.variants]
    if len(set(ids)) != len(ids):
        raise UserError(f"{here}: method '{spec.name}' has duplicate variant ids {ids}: give each Variant its own id")
    is_dataclass = dataclasses.is_dataclass(spec.config_cls)
    settings = [f.name for f in dataclasses.fields(spec.config_cls)] if is_dataclass else []
    for v in spec.variants:  # else found only once the test matrix or bench perf reaches the row, blamed on the CLI
        unknown = [k for k in v.overrides if k not in settings]
        if unknown:
            raise UserError(f"{here}: method '{spec.name}', variant '{v.id}': unknown setting(s) {unknown} "
                            f"(settings of {spec.config_cls.__name__}: {', '.join(settings) or 'none'})")
    _REGISTRY[spec.name] = spec
    _FILES[spec.name] = here
    return spec


def _module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def method_file(spec: MethodSpec) -> str:
    """The file that registered ``spec`` (else the one that defines its build), for messages: ``methods/lora.py``."""
    registered = _FILES.get(spec.name) if _REGISTRY.get(spec.name) is spec else None
    return registered or _module_file(spec.build.__module__)


def method_named(spec: MethodSpec) -> str:
    """How an error names a method and the file to fix: ``method 'lora' (methods/lora.py)``."""
    return f"method '{spec.name}' ({method_file(spec)})"


def unimported(name: str) -> str:
    """Why ``name`` is not registered although ``methods/<name>.py`` is there (the import line the recipe asks
    for is missing, or the file registers another name), or "" where there is no such file."""
    if not (isinstance(name, str) and name.isidentifier() and name not in ("registry", "build")
            and (Path(__file__).parent / f"{name}.py").is_file()):
        return ""
    return (f"unknown method '{name}': methods/{name}.py is not imported by methods/__init__.py (add '{name},' to "
            "its import list), or registers another name")


def get_method(name: str) -> MethodSpec:
    if name not in _REGISTRY:
        raise UserError(unimported(name) or f"unknown method '{name}': choose one of {', '.join(list_methods())} "
                        "(bench list)")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    """Registered method names in table order (``MethodSpec.order``, then name)."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def method_cases() -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, method, overrides)`` for every method's default setting and every variant."""
    cases = []
    for name in list_methods():
        cases.append((name, name, {}))
        cases += [(f"{name}+{v.id}", name, dict(v.overrides)) for v in _REGISTRY[name].variants]
    return cases


def perf_rows() -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, method, overrides)`` rows of ``bench perf``: every method, plus variants marked ``perf``."""
    marked = {f"{name}+{v.id}" for name in list_methods() for v in _REGISTRY[name].variants if v.perf}
    return [case for case in method_cases() if case[0] == case[1] or case[0] in marked]
