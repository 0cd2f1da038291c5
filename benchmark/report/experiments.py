"""What makes a row of the report: an experiment is a method and its settings (``config.setting_of``:
everything that changes a result but the seed).

Where one method was run with several settings, each is its own row, labelled with the settings that differ
(``lora (methods.lora.rank=4)``), so that no row mixes epochs or hyperparameters; where methods of one table were
trained with different shared settings (epochs, clips, learning rate), every row is named by them.
"""

from __future__ import annotations

import collections
import itertools
import json

import pandas as pd

from methods import list_methods


def _value(value) -> str:
    """A setting's value as ``--set`` takes it: a list comma-separated, an empty one (a method's default) ``[]``."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    return str(value)


def _set_name(key: str, method: str) -> str:
    """``method.rank`` -> ``methods.lora.rank``, the name ``--set`` takes; other keys are already so."""
    return f"methods.{method}.{key.split('.', 1)[1]}" if key.startswith("method.") else key


def _shown(setting: dict, keys: list[str], method: str, value) -> str:
    """``key=value, ...`` of ``keys`` in ``setting``, each value written by ``value``."""
    return ", ".join(f"{_set_name(k, method)}={value(setting.get(k))}" for k in keys)


def experiment_labels(table: pd.DataFrame) -> pd.Series:
    """Per run: its method's name, and the settings (as ``--set`` writes them) in which its row differs from
    others of the same dataset and backbone: a setting every method has (``train.epochs``, ``data.train_clips``)
    that is not the same across the whole table, on every row, so that methods trained on other budgets are
    never shown side by side as if alike; and where one method has runs of several settings, those that differ
    between them (its own ``methods.<name>.*`` included)."""
    labels = table["method"].astype(str).copy()
    for _, table_group in table.groupby(["dataset", "backbone"], sort=False):
        shared = differing_settings(table_group)
        for method, group in table_group.groupby("method", sort=False):
            settings = {key: json.loads(key) for key in group["setting"].unique()}
            own = _differing(settings, lambda k: True) if len(settings) > 1 else []
            differ = shared + [k for k in own if k not in shared]
            if not differ:
                continue
            shown = {setting: _shown(d, differ, method, _value) for setting, d in settings.items()}
            twins = collections.Counter(shown.values())
            for setting, d in settings.items():  # settings that read alike (1 and "1"; ["a,b"] and ["a", "b"]) are
                if twins[shown[setting]] > 1:  # rows of their own, with their values as the result records them
                    shown[setting] = _shown(d, differ, method, lambda v: json.dumps(v, separators=(",", ":")))
            for index, setting in group["setting"].items():
                labels[index] = f"{method} ({shown[setting]})"
    return labels


# Shared settings that say nothing of what a row was trained on: where the data lay, and which epochs the test split
# was scored on during training (the evaluation batch is not part of a row's setting at all: runs.EVALUATION_ONLY).
NOT_A_BUDGET = ("run.method", "data.root", "train.eval_every")


def differing_settings(table: pd.DataFrame) -> list[str]:
    """The settings every method has that differ between the rows of one table (one dataset and backbone), less
    ``NOT_A_BUDGET``; a key that some rows' results lack (a setting added since they were made) is not compared."""
    settings = {key: json.loads(key) for key in table["setting"].unique()}
    return _differing(settings, lambda k: not k.startswith("method.") and k not in NOT_A_BUDGET
                      and all(k in d for d in settings.values()))


def unlike_methods(table: pd.DataFrame, differ: list[str]) -> bool:
    """Whether two methods of ``table`` have no row in common in the settings ``differ``: no two of their rows
    were trained alike, so the table cannot compare them like for like."""
    alike = {method: {tuple(json.dumps(json.loads(setting).get(k), default=str) for k in differ)
                      for setting in group["setting"].unique()}
             for method, group in table.groupby("method", sort=False)}
    return any(not (a & b) for a, b in itertools.combinations(alike.values(), 2))


def _differing(settings: dict[str, dict], keep) -> list[str]:
    """The keys (those ``keep`` accepts) whose values are not the same in all of ``settings``, sorted."""
    keys = sorted({k for d in settings.values() for k in d if keep(k)})
    return [k for k in keys if len({json.dumps(d.get(k), default=str) for d in settings.values()}) > 1]


def registry_order(methods) -> list[str]:
    """Registered methods in their spec's ``order``, then any others (runs of methods not registered here)."""
    known = [m for m in list_methods() if m in set(methods)]
    return known + sorted(set(methods) - set(known))
