"""``bench report``: every run's result.json -> comparison tables and charts.

Per dataset (and backbone), one row per experiment (a method and its settings) with mean +- std over
seeds of F1, mA, accuracy, precision and recall (in %), trainable parameters, peak training and
inference memory, GFLOPs per clip, training throughput and inference latency; as Markdown, CSV (full
precision, so the numbers equal those in the run files) and LaTeX (booktabs). A per-attribute F1 table,
and charts as PNG and SVG: F1 vs trainable parameters (log x, Pareto front), F1 vs peak training
memory, inference latency, a per-attribute F1 heat map, and training curves (a panel per row as well, where
more than four rows' would cross on one axes). Broken or failed run files
are listed and skipped, never fatal.

Runs are averaged only with runs of the same setting (``config.setting_of``: everything that changes a
result but the seed). Where one method was run with several settings, each is its own row, labelled with
the settings that differ (``lora (methods.lora.rank=4)``), so that no row mixes epochs or hyperparameters; where
methods of one table were trained with different shared settings (epochs, clips, learning rate), every row is
named by them, and the table says so.
"""

from __future__ import annotations

import collections
import errno
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.config import setting_of
from benchmark.measure import primary_bytes
from benchmark.results import (
    SHARED_START_SINCE,
    Status,
    atomic_write_text,
    atomic_write_with,
    check_writable_folder,
    fusion_start,
    is_complete,
    is_finite_number,
    label_problem,
    parse_result,
    unfinished_run,
    write_target,
)
from benchmark.signals import CommandStopped, Terminated, hold_signals
from methods import get_method, list_methods
from vtfpar.errors import UserError, one_line
from vtfpar.fusion import SHARED_START, SHIFTS_DROPPED_IN
from vtfpar.metrics import HEADLINE_METRICS

METRICS = list(HEADLINE_METRICS)  # every complete result has them (checked on reading)
SCORES = [*METRICS, "grouped_f1"]  # averaged over seeds with their std; grouped F1 where a result has it
# What the "step clips/s" column is, and is not: the epoch lines of a run's log count its data loading too.
STEP_NOTE = ("step clips/s: the training batch over one timed training step (forward, backward, optimiser) on random "
             "clips of the run's shape, data loading left out (the clips/s of the training log's epoch lines include "
             "it)")
SCORES_NOTE = ("F1, Acc, Prec, Rec instance-based (per sample, averaged; F1 = 2PR/(P+R)), mA label-based, grouped F1 "
               "pooled per attribute group (what the paper's code prints as F1); mean ± sample std (n - 1) over seeds")
DEVICE_COSTS = ["train_mem_mib", "infer_mem_mib", "train_clips_per_s", "infer_ms_per_clip", "infer_clips_per_s",
                "infer_ms_iqr"]
COST_CONDITIONS = ["device", "measured_in", "compiled"]  # what seeds agree on for their costs to be averaged
MIB = 2**20


@dataclass
class Runs:
    table: pd.DataFrame  # one row per run
    per_attribute: pd.DataFrame  # run_id, attribute, f1, prior_f1 (the all-positive baseline's; NaN if unrecorded)
    curves: pd.DataFrame  # run_id, epoch, loss, f1
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why): skipped
    # Per dataset, the backbones of all its complete runs, whatever --method left out: what names its folders.
    backbones: dict[str, set[str]] = field(default_factory=dict)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, what): averaged in, with a doubt said
    # Per (dataset, backbone) table with two methods that have no row trained alike (``unlike_methods``), the
    # settings every method has that differ between its rows (``differing_settings``): said above the table.
    differing: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _number(value, name: str) -> float | None:
    """An optional measurement: None, or a finite number (as a float); anything else makes the file no result."""
    if value is None:
        return None
    if not is_finite_number(value):
        raise ValueError(f"{name} is {str(value)[:40]!r}, not a finite number")
    return float(value)


def _text(value, name: str) -> str | None:
    """An optional label: None or a string."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is {str(value)[:40]!r}, not a text")
    return value


def _count(value, name: str) -> int:
    """A parameter count: a whole number of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise ValueError(f"{name} is {str(value)[:40]!r}, not a count")
    return int(value)


def _attribute_scores(r: dict) -> list[dict]:
    """``metrics.per_attribute``, checked to be a list of {name, f1} (absent: none)."""
    scores = r["metrics"].get("per_attribute", [])
    if not isinstance(scores, list) or not all(isinstance(a, dict) and "name" in a and "f1" in a for a in scores):
        raise ValueError(f"metrics.per_attribute is {str(scores)[:40]!r}, not a list of attributes with name and f1")
    return scores


def _curve_point(r: dict, h) -> dict:
    """One epoch of a run's history, checked (``epoch`` a whole number a chart can place)."""
    epoch = h.get("epoch") if isinstance(h, dict) else None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= 1_000_000:
        raise ValueError(f"history epoch {str(epoch)[:40]!r} is not an epoch number")
    return {"run_id": r["run_id"], "epoch": epoch, "loss": _number(h.get("loss"), "history loss"),
            "f1": _number(h.get("f1"), "history f1")}


def _row(r: dict) -> dict:
    mem = r.get("memory") or {}
    timing = r.get("timing") or {}
    row = {
        "run_id": r["run_id"], "dataset": r["dataset"], "method": r["method"],
        "backbone": f"{r['backbone']} ({r.get('pretrained') or 'none'})",  # weights are part of the backbone
        "seed": r["seed"], **{k: float(r["metrics"][k]) for k in METRICS},
        "grouped_f1": _number((r["metrics"].get("grouped") or {}).get("f1"), "metrics.grouped.f1"),
        "trainable_params": _count(r["params"]["trainable"], "params.trainable"),
        "method_params": (None if r["params"].get("method") is None  # results of earlier versions lack it
                          else _count(r["params"]["method"], "params.method")),
        "total_params": _count(r["params"]["total"], "params.total"),
        "trainable_pct": _number(r["params"].get("trainable_pct"), "params.trainable_pct"),
        "train_mem_mib": _mib(_number(primary_bytes(mem.get("train_step")), "memory.train_step")),
        "infer_mem_mib": _mib(_number(primary_bytes(mem.get("inference")), "memory.inference")),
        "memory_kind": _text((mem.get("train_step") or {}).get("kind"), "memory.train_step.kind"),
        "gflops": _number((r.get("flops") or {}).get("gflops_per_clip"), "flops.gflops_per_clip"),
        "train_clips_per_s": _number((timing.get("train_step") or {}).get("clips_per_s"),
                                     "timing.train_step.clips_per_s"),
        "infer_ms_per_clip": _number((timing.get("inference_latency") or {}).get("ms_per_clip"),
                                     "timing.inference_latency.ms_per_clip"),
        "infer_clips_per_s": _number((timing.get("inference_throughput") or {}).get("clips_per_s"),
                                     "timing.inference_throughput.clips_per_s"),
        "infer_ms_iqr": _ms(_number((timing.get("inference_latency") or {}).get("iqr_s"),
                                    "timing.inference_latency.iqr_s")),
        "device": _text((r.get("env") or {}).get("device"), "env.device"),
        "measured_in": _text(r.get("measured_in"), "measured_in"),
        "compiled": _compiled(r),
        "fusion_start": _number(fusion_start(r), "fusion_start"),
        "setting": json.dumps(_setting(r), sort_keys=True, default=str),
    }
    for b in ("all_positive", "majority"):
        if b in r.get("baselines", {}):
            row[f"baseline_{b}_f1"] = r["baselines"][b]["f1"]
    return row


def _compiled(r: dict) -> bool | None:
    """Whether a run's model was compiled (``train.compile``), which changes its time and memory, not its numbers."""
    train = r["config"].get("train") if isinstance(r.get("config"), dict) else None
    value = train.get("compile") if isinstance(train, dict) else None
    return value if isinstance(value, bool) else None


def _setting(r: dict) -> dict:
    """What a run's seed is drawn within (``setting_of``), and which weights a local checkpoint file held: runs
    of one file name with other contents are other experiments."""
    setting = setting_of(r["config"]) if isinstance(r.get("config"), dict) else {}
    if r.get("pretrained_sha256"):
        setting["model.pretrained_sha256"] = str(r["pretrained_sha256"])[:12]
    return setting


def _mib(x):
    return None if x is None else x / MIB


def _ms(seconds):
    return None if seconds is None else 1000 * seconds


def load_runs(runs_dir: Path, dataset: str | None = None, method: str | None = None) -> Runs:
    """Every complete run under ``runs_dir`` (``<run>/result.json``) as table rows. A file that is not a
    complete result (failed, of an unknown status, unreadable, or without what every complete result holds:
    ``results.parse_result``), and a second copy of a run (the same run id in another folder: counted twice it
    would pass for two seeds; the copy in the folder its run id names is kept), is listed in ``problems`` and
    skipped."""
    rows, attrs, curves, problems, warnings = [], [], [], [], []
    backbones: dict[str, set[str]] = {}
    seen: dict[str, str] = {}
    trials: dict[tuple, tuple[str, str]] = {}
    parsed = [(path, _parsed(path)) for path in sorted(Path(runs_dir).glob("*/result.json"), key=str)]
    # A run's own folder (named by its run id) first, so that of two copies the one elsewhere is the copy.
    parsed.sort(key=lambda pr: not (isinstance(pr[1], dict) and pr[1].get("run_id") == pr[0].parent.name))
    for path, r in parsed:
        try:
            if isinstance(r, Exception):
                raise r
            if r.get("status") == Status.FAILED.value:
                problems.append((str(path), f"failed run: {r.get('error', 'no error recorded')}"))
                continue
            if not is_complete(r):
                problems.append((str(path), f"not a complete run (status {r.get('status')!r})"))
                continue
            labels = label_problem(r)
            if labels and labels[0] == "stale":  # its numbers are of other labels than a run made now: not averaged in
                problems.append((str(path), f"run {r.get('run_id')}: {labels[1]}"))
                continue
            row = _row(r)
            row["labels_unsure"] = bool(labels)
            prior = ((r.get("baselines") or {}).get("all_positive") or {}).get("per_attribute_f1")
            prior = prior if isinstance(prior, dict) else {}  # the chance column of the heatmap, where recorded
            run_attrs = [{"run_id": row["run_id"], "attribute": str(a["name"]),
                          "f1": _number(a["f1"], "metrics.per_attribute f1"),
                          "prior_f1": float(prior[a["name"]]) if is_finite_number(prior.get(a["name"])) else np.nan}
                         for a in _attribute_scores(r)]
            run_curves = [_curve_point(r, h) for h in r.get("history", [])]
        except (OSError, AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            problems.append((str(path), f"not a result file ({type(exc).__name__}: {one_line(exc)[:160]})"))
            continue
        backbones.setdefault(row["dataset"], set()).add(row["backbone"])
        if (dataset and row["dataset"] != dataset) or (method and row["method"] != method):
            continue
        if row["run_id"] in seen:
            problems.append((str(path), f"a copy of run {row['run_id']}, already read from {seen[row['run_id']]} "
                                        "(counted once)"))
            continue
        # One experiment's seed run twice under two run ids (the id of a run made before a setting left the id,
        # such as the device): averaged as two runs it would weigh that seed double under a seed count of one.
        trial = (row["dataset"], row["backbone"], row["method"], row["setting"], row["seed"])
        if trial in trials:
            problems.append((str(path), f"run {row['run_id']} is seed {row['seed']} of the same experiment as run "
                                        f"{trials[trial][0]}, read from {trials[trial][1]} (counted once; remove one)"))
            continue
        trials[trial] = (row["run_id"], str(path))
        seen[row["run_id"]] = str(path)
        rows.append(row)
        if labels:  # labels that cannot be judged here: averaged in, and said
            warnings.append((str(path), f"run {row['run_id']} is averaged in, but {labels[1]}"))
        attrs += run_attrs
        curves += run_curves
    problems += _unfinished_runs(Path(runs_dir), dataset, method)
    table = pd.DataFrame(rows)
    differing = {}
    if not table.empty:
        table["label"] = experiment_labels(table)
        differing = {key: differ for key, group in table.groupby(["dataset", "backbone"], sort=False)
                     if (differ := differing_settings(group)) and unlike_methods(group, differ)}
        table = table.drop(columns="setting")
    # With their columns where no run has any (results without per-attribute metrics or history still report).
    return Runs(table, pd.DataFrame(attrs, columns=["run_id", "attribute", "f1", "prior_f1"]),
                pd.DataFrame(curves, columns=["run_id", "epoch", "loss", "f1"]), problems=problems,
                warnings=warnings, backbones=backbones, differing=differing)


def _unfinished_runs(runs_dir: Path, dataset: str | None, method: str | None) -> list[tuple[str, str]]:
    """Run folders without a result that hold a run not yet finished (``results.unfinished_run``), each with what
    it is and how to finish it: left out of the report, they are said, so that a row with a seed fewer is not
    taken for the whole experiment. With a filter, only those whose run id may be of it."""
    found = []
    try:
        folders = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    except OSError:  # read by load_runs already; what it could not read it says
        return found
    for folder in folders:
        try:  # a folder this user may not search (another user's run, lost+found) is no run of theirs
            unfinished = unfinished_run(folder)
        except OSError:
            continue
        if unfinished is not None and _may_be_of(folder.name, dataset, method):
            found.append((str(folder), f"run {folder.name} {unfinished[0]}: {unfinished[1]}"))
    return found


def _may_be_of(run_id: str, dataset: str | None, method: str | None) -> bool:
    """Whether a run id (``<dataset>_<method>_<backbone>_s<seed>_<digest>``, ``Config.run_id``) may be of ``dataset``
    and ``method``: false only where its name shows another (a renamed folder may be of either)."""
    name_dataset, _, rest = run_id.partition("_")
    if dataset and rest and name_dataset != dataset:
        return False
    if method:
        named = [m for m in list_methods() if rest.startswith(f"{m}_")]
        return not named or method in named  # lora and lora_x both prefix lora_x_...: either may be meant
    return True


def _parsed(path: Path) -> dict | Exception:
    """``path``'s result (``parse_result``), or why it is not one: each file is read once (a FIFO or device is
    not opened: reading it could wait forever)."""
    if not path.is_file():
        return ValueError("not a regular file")
    try:
        return parse_result(path)
    except (OSError, TypeError, ValueError) as exc:
        return exc


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


# Shared settings that say nothing of what a row was trained on: where the data lay, and how (not whether) the
# test split was evaluated during training.
NOT_A_BUDGET = ("run.method", "data.root", "train.eval_batch_size", "train.eval_every")


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


def _order(methods) -> list[str]:
    """Registered methods in their spec's ``order``, then any others (runs of methods not registered here)."""
    known = [m for m in list_methods() if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per experiment: (dataset, backbone, method, settings). The std of a single
    seed is undefined (NaN, shown as no ``±``), not 0."""
    numeric = [c for c in table.columns if c not in ("run_id", "dataset", "method", "backbone", "seed",
                                                      "memory_kind", *COST_CONDITIONS, "label",
                                                      "fusion_start", "labels_unsure")]
    g = table.groupby(["dataset", "backbone", "method", "label"], sort=False)
    mean = g[numeric].mean()
    # Seeds of one experiment may have run on other machines, compiled or not, or (results of an earlier version)
    # been measured in training form: none of that is part of a run's setting. Their accuracy averages, their
    # memory and time do not (CUDA allocator bytes with CPU RSS, an H100 with a laptop, a merged LoRA with one
    # that is not).
    costs = [c for c in DEVICE_COSTS if c in mean.columns]
    mixed = np.logical_or.reduce([g[c].nunique(dropna=False) > 1 for c in COST_CONDITIONS if c in table])
    mean.loc[mixed, costs] = np.nan
    std = g[[c for c in SCORES if c in table]].std(ddof=1).add_suffix("_std")
    if "infer_ms_per_clip" in table:  # how far the seeds' latencies spread (the latency chart's whiskers)
        std["infer_ms_per_clip_std"] = g["infer_ms_per_clip"].std(ddof=1)
        std.loc[mixed, "infer_ms_per_clip_std"] = np.nan
    out = mean.join(std).join(g["seed"].nunique().rename("seeds")).reset_index()
    out["method"] = pd.Categorical(out["method"], _order(out["method"]), ordered=True)
    out["order"] = out["label"].map(_natural)
    out = out.sort_values(["dataset", "backbone", "method", "order"]).drop(columns="order")
    for count in ("trainable_params", "method_params", "total_params"):  # a count, not a mean (55813, not 55813.0)
        if count in out and out[count].notna().all():
            out[count] = out[count].round().astype(np.int64)
    return out.reset_index(drop=True)


def _natural(label: str) -> tuple:
    """Sort key of an experiment's label by the values of its settings, numbers as numbers: ``lr=5e-05`` before
    ``lr=0.0005`` before ``lr=0.001``, ``train.epochs=5`` before ``train.epochs=30``."""
    method, _, settings = label.partition(" (")
    key = []
    for pair in settings.removesuffix(")").split(", ") if settings else []:
        name, _, value = pair.partition("=")
        try:
            key.append((name, 0, float(value), ""))
        except ValueError:
            key.append((name, 1, 0.0, value))
    return (method, *key)


# --------------------------------------------------------------------------------------- tables
def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def params_axis(s: pd.DataFrame) -> tuple[str, str, str]:
    """f1_vs_params' x axis (column, axis label, what the title calls it): the method's own trainable parameters
    where every row's results record them (what PEFT papers compare; fusion and head, the same for all, would
    otherwise crowd together the methods that add little), else all trainable parameters."""
    if "method_params" in s and s["method_params"].notna().all():
        return ("method_params", "parameters the method trains besides fusion and head (log scale)",
                "the method's own trainable parameters")
    return "trainable_params", "trainable parameters (log scale)", "trainable parameters"


def _compact(n) -> str:
    """A count to 3 significant digits, from 0 to millions: ``512``, ``2.94 k``, ``217 k``, ``85.8 M``; ``-``
    where there is none."""
    if n is None or pd.isna(n):
        return "-"
    n = float(n)
    return f"{n:.0f}" if n < 1e3 else f"{n / 1e3:.3g} k" if n < 1e6 else f"{n / 1e6:.3g} M"


def display_rows(s: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    # The method's own parameters (outside fusion and head), where any row's results record them.
    own = "method_params" in s and s["method_params"].notna().any()
    head = ["method", "seeds", "F1 (%)", "mA (%)", "Acc (%)", "Prec (%)", "Rec (%)", "grouped F1 (%)",
            "trainable params", *(["method params"] if own else []), "train mem (MiB)", "infer mem (MiB)",
            "GFLOPs/clip", "step clips/s", "infer ms/clip"]
    rows = []
    for _, r in s.iterrows():
        rows.append([
            str(r["label"]), str(int(r["seeds"])),
            *(_mean_std(r.get(k, np.nan), r.get(k + "_std", np.nan)) for k in SCORES),
            f"{r['trainable_params'] / 1e6:.3f} M ({_fmt(r['trainable_pct'], '.2f')}%)",
            *([_compact(r["method_params"])] if own else []),
            _fmt(r["train_mem_mib"], ".0f"), _fmt(r["infer_mem_mib"], ".0f"), _fmt(r["gflops"], ".3f"),
            _fmt(r["train_clips_per_s"], ".1f"), _fmt(r["infer_ms_per_clip"], ".2f"),
        ])
    return head, rows


def _mean_std(mean: float, std: float) -> str:
    """``48.61 ± 1.76`` in %; a single seed has no std: ``48.61``; no score (not recorded): ``-``."""
    if np.isnan(mean):
        return "-"
    return f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# LaTeX's special characters as text, in one pass (so that one's escape is not escaped again).
_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in s)


def latex(head: list[str], rows: list[list[str]], caption: str) -> str:
    cols = "l" + "r" * (len(head) - 1)
    body = [" & ".join(_tex_escape(c) for c in r) + r" \\" for r in rows]
    return "\n".join([
        r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{_tex_escape(caption)}}}", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
        " & ".join(_tex_escape(h) for h in head) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table}", "",
    ])


# --------------------------------------------------------------------------------------- charts
def _save(fig, path: Path) -> list[Path]:
    out = []
    for ext in ("png", "svg"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    return out


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats with fewer-or-equal x and higher-or-equal y."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


PRIOR_COLUMN = "always positive"  # the heatmap's chance column

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000075", "#800000", "#469990", "#f032e6", "#9a6324", "#808000", "#ffe119", "#aaffc3",
           "#dcbeff", "#fabed4"]
"""The rows' colours: tab10's ten, then ten of other hues (navy, maroon, teal, magenta, ...), so that no two rows of
a report differ only in shade, as tab20's paired shades did; the Pareto front is black."""

LABEL_OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                 (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
                 (14, 0, "left", "center"), (-14, 0, "right", "center")]


def place_labels(ax, points: list[tuple], fontsize: int = 8, lines: list = ()) -> list:
    """Name each point beside it where the name overlaps no other name, no marker or error bar and
    stays inside the axes, trying eight spots around the point in turn; a name with no free spot is left
    out (the legend still names its colour). ``points``: ``(x, y, name)`` or ``(x, y, name, y_error)``,
    in priority order; ``lines``: polylines, each an ``(n, 2)`` array of data-space vertices (the Pareto front's
    steps, ``step_vertices``), that a name crosses only where no spot clear of them is free: a name across a
    dashed line reads better than one left out. Returns the labels placed."""
    from matplotlib.path import Path as Polyline
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker = 5.0  # px around each point's centre
    taken = []
    for x, y, *rest in points:
        err = float(rest[1]) if len(rest) > 1 and np.isfinite(rest[1]) else 0.0
        (cx, low), (_, high) = ax.transData.transform([(x, y - err), (x, y + err)])
        taken.append(Bbox([[cx - marker, min(low, high) - marker], [cx + marker, max(low, high) + marker]]))
    paths = [Polyline(ax.transData.transform(np.asarray(vertices, float))) for vertices in lines]
    placed = []
    for x, y, text, *_ in points:
        label = None
        for avoid in (paths, []) if paths else ([],):
            for dx, dy, ha, va in LABEL_OFFSETS:
                label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                    fontsize=fontsize)
                box = label.get_window_extent(renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if (inside and not any(box.overlaps(other) for other in taken)
                        and not any(path.intersects_bbox(box, filled=False) for path in avoid)):
                    taken.append(box)
                    placed.append(label)
                    break
                label.remove()
                label = None
            if label is not None:
                break
    return placed


def steps_within_noise(y: np.ndarray, std: np.ndarray) -> np.ndarray:
    """For each rise of a Pareto front (points in order of cost, ``y`` their mean F1), whether it is no larger than
    the std over seeds of either of its two points (NaN or 0 for one seed): a gain the seeds' spread could make
    alone, which the chart draws dotted rather than as a step the front is sure of."""
    y, std = np.asarray(y, float), np.nan_to_num(np.asarray(std, float))
    rise, noise = np.diff(y), np.maximum(std[1:], std[:-1])
    return (noise > 0) & (rise <= noise)


def step_vertices(x, y) -> np.ndarray:
    """The corners ``ax.step(x, y, where="post")`` draws through: each level held to the next x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    corners = np.empty((2 * len(x) - 1, 2))
    corners[0::2] = np.stack([x, y], axis=1)
    corners[1::2] = np.stack([x[1:], y[:-1]], axis=1)
    return corners


def charts(s: pd.DataFrame, runs: Runs, run_ids: list[str], folder: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    from matplotlib.ticker import MaxNLocator

    labels = [str(m) for m in s["label"]]
    # Colours follow the registry's order, so a method keeps its colour from report to report while the registry
    # holds the same methods (a method added before it moves it along; the legend names every colour): a method's
    # one row has its method's colour, whatever settings its label names; the rows of a method run with several
    # settings get colours of their own after the registry's.
    method_of = dict(zip(labels, s["method"].astype(str), strict=True))
    rows_of = collections.Counter(method_of.values())
    key = {label: method_of[label] if rows_of[method_of[label]] == 1 else label for label in labels}
    names = list(dict.fromkeys(list_methods() + [key[label] for label in labels]))
    # One colour per row, each a hue of its own (PALETTE), markers differing after the first ten.
    slot = {m: i for i, m in enumerate(names)}
    colours = {label: PALETTE[slot[key[label]] % len(PALETTE)] for label in labels}
    markers = {label: "osD^vP"[slot[key[label]] // 10 % 6] for label in labels}
    seeds = sorted({int(n) for n in s["seeds"]}) if "seeds" in s else []
    over = f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    shown_title = title.replace("(none)", "(random init)")

    def scatter(xcol, xlabel, name, logx, pareto, what):
        d = s.dropna(subset=[xcol])
        if len(d) < 2:  # one point compares nothing
            return
        # On a log axis a row at 0 (the frozen baseline's own parameters) is a horizontal line: the level every
        # point is measured against, at no cost of its own.
        flat = d[d[xcol] <= 0] if logx else d.iloc[:0]
        dots = d.drop(flat.index)
        if dots.empty:
            return
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for _, r in dots.iterrows():
            ax.errorbar(r[xcol], 100 * r["f1"], yerr=100 * _or0(r["f1_std"]), fmt=markers[str(r["label"])], ms=7,
                        capsize=3, color=colours[str(r["label"])], label=str(r["label"]))
        left = dots[xcol].min() / 3 if logx else None  # where the axis starts, and a row at 0 is drawn from
        for _, r in flat.iterrows():
            colour, y, err = colours[str(r["label"])], 100 * r["f1"], 100 * _or0(r["f1_std"])
            ax.axhline(y, color=colour, ls=":", lw=1.2, label=f"{r['label']}: no parameters of its own")
            if err:
                ax.axhspan(y - err, y + err, color=colour, alpha=0.12, lw=0)
            ax.text(0.99, y, str(r["label"]), transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8,
                    color=colour)
        front, steps, within = [], [], np.zeros(0, bool)
        if pareto:
            idx = pareto_front(d[xcol].to_numpy(float), d["f1"].to_numpy(float))
            pts = d.iloc[idx]
            front = [str(m) for m in pts["label"]]
            xs = (pts[xcol].clip(lower=left) if left else pts[xcol]).to_numpy(float)
            ys, errs = 100 * pts["f1"].to_numpy(float), 100 * pts["f1_std"].map(_or0).to_numpy(float)
            steps = [step_vertices(xs, ys)]
            within = steps_within_noise(ys, errs)
            # Each step to the next point of the front: its run at the last level, then its rise; dotted where the
            # rise is within the seeds' spread (that point is on the front by less than its noise). Each style is
            # named once in the legend.
            sure, unsure = {"ls": "--", "lw": 0.8, "color": "black"}, {"ls": ":", "lw": 1.3, "color": "0.4"}
            named: set[str] = set()
            for i, noise in enumerate(within):
                legend = "Pareto front, a step within the seeds' std" if noise else "Pareto front"
                ax.plot(*zip(*steps[0][2 * i:2 * i + 3], strict=True), **(unsure if noise else sure),
                        label=None if legend in named else legend)
                named.add(legend)
            if not len(within):  # a front of one point
                ax.plot(xs, ys, **sure, label="Pareto front")
        if logx:
            ax.set_xscale("log")
            if not flat.empty:
                ax.set_xlim(left=left)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("F1 (%)")
        sure_steps = len(within) > 0 and not within.all()  # some of the front drawn dashed
        ax.set_title(f"F1 vs {what}, {shown_title}\nmean ± std over {over}" + ("; dashed: Pareto front of the means"
                                                                               if sure_steps else "")
                     + ("\ndotted: a step whose rise is within the std of either end's seeds" if within.any() else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers no point
        points = [(float(r[xcol]), 100 * float(r["f1"]), str(r["label"]), 100 * _or0(r["f1_std"]))
                  for _, r in dots.iterrows()]
        place_labels(ax, sorted(points, key=lambda p: p[2] not in front), lines=steps)  # the front's names first
        written.extend(_save(fig, folder / name))
        plt.close(fig)

    xcol, xlabel, what = params_axis(s)
    scatter(xcol, xlabel, "f1_vs_params", True, True, what)
    shown = {"cuda": "CUDA allocated", "cpu": "CPU peak RSS, runtime and frozen weights included",
             "both": "CUDA allocated or CPU peak RSS, by run"}
    kind = _memory_kind(runs.table[runs.table["run_id"].isin(run_ids)]) or "cpu"  # this table's runs
    mem_label = f"peak training memory (MiB, {shown[kind]})"
    scatter("train_mem_mib", mem_label, "f1_vs_memory", False, True, "training memory")

    d = s.dropna(subset=["infer_ms_per_clip"])
    if len(d) > 1:  # one bar compares nothing
        bars = [str(m) for m in d["label"]]
        fig, ax = plt.subplots(figsize=(max(6.4, 1.5 + 0.55 * len(bars)), 3.8))
        ax.bar(range(len(bars)), d["infer_ms_per_clip"], color=[colours[m] for m in bars])
        # Whiskers: how far the seeds' latencies spread (their std), which is what tells two rows apart; a row of
        # one seed shows half the interquartile range of its own timed iterations instead, and says so.
        nan = pd.Series(np.nan, index=d.index)
        seed_std = d.get("infer_ms_per_clip_std", nan).where(d.get("seeds", 1) > 1)
        own = d.get("infer_ms_iqr", nan) / 2
        spread = seed_std.fillna(own)
        if spread.notna().any():
            ax.errorbar(range(len(bars)), d["infer_ms_per_clip"], yerr=spread.fillna(0), fmt="none",
                        ecolor="black", capsize=4, lw=1)
        ax.set_xticks(range(len(bars)), bars, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_ylabel("inference latency (ms per clip, batch 1)")
        whiskers = {(True, False): "± std over seeds", (False, True): "± half each run's interquartile range",
                    (True, True): "± std over seeds (rows of one seed: ± half its interquartile range)"}.get(
                        (bool(seed_std.notna().any()), bool((seed_std.isna() & own.notna()).any())))
        ax.set_title(f"inference latency, {shown_title}\nmean over {over} of each run's median timed iteration"
                     + (f"; whiskers: {whiskers}" if whiskers else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        written.extend(_save(fig, folder / "latency"))
        plt.close(fig)

    pa = runs.per_attribute[runs.per_attribute["run_id"].isin(run_ids)]
    if not pa.empty:
        grid = per_attribute_grid(pa, runs.table, labels)
        chance = pa.groupby("attribute", sort=False)["prior_f1"].mean().reindex(grid.index)
        if chance.notna().any():  # what answering "present" for every clip scores: the floor of each row
            grid.insert(0, PRIOR_COLUMN, chance)
        fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 3, 0.32 * grid.shape[0] + 1.5))
        im = ax.imshow(100 * grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
        if grid.columns[0] == PRIOR_COLUMN:
            ax.axvline(0.5, color="white", lw=3)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = 100 * grid.iat[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
        fig.colorbar(im, ax=ax, label="F1 (%)")
        ax.set_title(f"per-attribute F1, {shown_title}, mean over {over}"
                     + (f"\nfirst column: {PRIOR_COLUMN}, every attribute predicted present (chance)"
                        if grid.columns[0] == PRIOR_COLUMN else ""), fontsize=9)
        written.extend(_save(fig, folder / "per_attribute_f1"))
        plt.close(fig)

    cur = runs.curves[runs.curves["run_id"].isin(run_ids)]
    if not cur.empty:
        c = cur.merge(runs.table[["run_id", "label"]], on="run_id")
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for method in [m for m in labels if m in set(c["label"])]:
            g = c[c["label"] == method].groupby("epoch")[["loss", "f1"]].mean()
            a1.plot(g.index, g["loss"], marker=markers[method], ms=3, label=method, color=colours[method])
            f1 = g["f1"].dropna()
            if not f1.empty:
                a2.plot(f1.index, 100 * f1, marker=markers[method], ms=3, label=method, color=colours[method])
        a1.set_xlabel("epoch")
        a1.set_ylabel("training loss (weighted BCE, eq. 6)")
        a2.set_xlabel("epoch")
        a2.set_ylabel("test F1 (%)")
        epochs = sorted(c["epoch"].unique())
        for a in (a1, a2):
            a.grid(alpha=0.3)
            if len(epochs) <= 12:  # every epoch a tick (one epoch alone would get fractional ones)
                a.set_xticks(epochs)
            else:
                a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers no line
        fig.suptitle(f"training curves, {shown_title}, mean over {over}")
        written.extend(_save(fig, folder / "curves"))
        plt.close(fig)
        stats = f1_curves(c)
        if stats["label"].nunique() > CROWDED_CURVES:
            floors = trains_nothing_of_its_own(s)
            written.extend(_curves_by_row(plt, stats, [m for m in labels if m in set(stats["label"])], colours,
                                          markers, floors, epochs, f"{shown_title}, mean ± std over {over}",
                                          folder / "curves_by_method"))
    return written


def trains_nothing_of_its_own(s: pd.DataFrame) -> set[str]:
    """The labels of rows that train nothing besides fusion and head (frozen): 0 method parameters where results
    record them, else a registered method that declares no parameters of its own (``prefixes=()``)."""
    registered = set(list_methods())  # a method this checkout does not register declares nothing
    declares_none = s["method"].astype(str).map(lambda m: m in registered and get_method(m).prefixes == ())
    recorded = s["method_params"] if "method_params" in s else pd.Series(np.nan, index=s.index)
    floor = (recorded == 0) | (recorded.isna() & declares_none)
    return set(s.loc[floor, "label"].astype(str))


CROWDED_CURVES = 4
"""More F1 curves than this on one axes cross and hide one another: the report then also draws each in a panel of
its own (``curves_by_method``)."""


def f1_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Test F1 per row and epoch over the row's seeds: ``label, epoch, mean, std, seeds`` (std NaN for one seed).

    ``curves``: ``label, epoch, f1`` per run and epoch; epochs without an evaluation (F1 NaN) are left out."""
    g = curves.dropna(subset=["f1"]).groupby(["label", "epoch"], sort=False)["f1"]
    return g.agg(mean="mean", std="std", seeds="count").reset_index()


def _curves_by_row(plt, stats: pd.DataFrame, rows: list[str], colours: dict, markers: dict, floors: set[str],
                   epochs: list, title: str, path: Path) -> list[Path]:
    """Small multiples of test F1 per epoch: a panel per row, its mean drawn in its colour with a band of ± one
    std over seeds, every other row in light grey behind it for scale, and a row that trains no parameters of its
    own (frozen) dashed in every other panel: the level a method has to clear. One y scale for all panels."""
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.9 * cols, 2.3 * nrows + 0.7), sharex=True, sharey=True,
                             squeeze=False)
    by_row = {label: g.sort_values("epoch") for label, g in stats.groupby("label", sort=False)}
    floor, others = {"color": "black", "ls": "--", "lw": 1, "zorder": 2}, {"color": "0.82", "lw": 0.8, "zorder": 1}
    for ax, label in zip(axes.flat, rows, strict=False):
        for other in rows:
            if other != label:
                g = by_row[other]
                ax.plot(g["epoch"], 100 * g["mean"], **(floor if other in floors else others))
        g = by_row[label]
        mean, std = 100 * g["mean"], 100 * g["std"]
        if std.notna().any():
            ax.fill_between(g["epoch"], mean - std.fillna(0), mean + std.fillna(0), color=colours[label], alpha=0.2,
                            lw=0, zorder=3)
        ax.plot(g["epoch"], mean, color=colours[label], marker=markers[label], ms=3, lw=1.6, zorder=4)
        last = g.iloc[-1]
        spread = f" ± {100 * last['std']:.2f}" if np.isfinite(last["std"]) else ""
        ax.set_title(f"{label}: {100 * last['mean']:.2f}{spread}", fontsize=8, color=colours[label])
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    if len(epochs) <= 12:
        axes.flat[0].set_xticks(epochs)
    for ax in axes[:, 0]:
        ax.set_ylabel("test F1 (%)", fontsize=8)
    for ax in axes.flat[len(rows) - cols:len(rows)]:  # the lowest visible panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("epoch", fontsize=8)
    dashed = f"; dashed: {', '.join(sorted(floors))}" if floors else ""
    fig.suptitle(f"test F1 per epoch, {title}\neach panel's title: its last epoch; grey: the other rows{dashed}",
                 fontsize=9)
    fig.tight_layout()
    written = _save(fig, path)
    plt.close(fig)
    return written


def _or0(x) -> float:
    return 0.0 if x is None or np.isnan(x) else float(x)


def per_attribute_grid(per_attribute: pd.DataFrame, table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """attribute x experiment F1, averaged over each experiment's seeds, columns in the summary's order."""
    grid = per_attribute.merge(table[["run_id", "label"]], on="run_id").pivot_table(
        index="attribute", columns="label", values="f1", aggfunc="mean", sort=False)
    return grid[[c for c in labels if c in grid.columns]]


# ------------------------------------------------------------------------------------- the report
MANIFEST = ".bench-report.json"  # in --out: the files the last report wrote there, relative to --out
STAGING_PREFIX = ".bench-report-staging-"  # in --out: the folder a report is built in before it is moved into place


def write_report(runs: Runs, out_dir: Path, warn=lambda line: None) -> tuple[list[Path], dict[str, tuple]]:
    """Write every table and chart under ``out_dir``; returns the paths and the main tables for the terminal.

    The report is built in a hidden folder inside ``out_dir`` and then moved into place file by file, with stop
    signals held: stopped while it is built, ``out_dir`` keeps the previous report whole, not a mix of new and old
    files. The files of the previous report that this one does not write (another layout: one folder per
    backbone, or a dataset no longer reported) are removed; only files a report listed in ``MANIFEST`` are,
    never other files in ``out_dir``. ``warn`` gets a line for each earlier report's folder that is left as it
    was (one written before reports kept a manifest)."""
    if runs.table.empty:
        return [], {}
    out_dir = Path(out_dir)
    check_writable_folder(out_dir, "choose another --out")
    _remove_abandoned_staging(out_dir)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=STAGING_PREFIX))
    try:
        try:
            staged, shown = _write_files(runs, staging, warn)
        except (KeyboardInterrupt, Terminated) as exc:
            raise CommandStopped(exc, _kept_note(out_dir)) from None
        written = _publish(staging, staged, out_dir, warn, {_folder_name(d) for d in runs.table["dataset"].unique()})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written, shown


ABANDONED_STAGING_SECONDS = 3600  # a staging folder this old belongs to a report that was killed


def _remove_abandoned_staging(out_dir: Path) -> None:
    """Remove the staging folders of reports killed while they were built (``kill -9``, out of memory), which
    nothing else removes: those untouched for an hour (a report being built writes into its own all along)."""
    for folder in out_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            if folder.is_dir() and not folder.is_symlink() and \
                    time.time() - folder.stat().st_mtime > ABANDONED_STAGING_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _folder_name(name: str) -> str:
    """A report folder's name for ``name`` (a dataset, or dataset and backbone), whatever a result file says:
    never a path out of --out."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_.") or "dataset"


def _kept_note(out_dir: Path) -> str:
    """What a report stopped before it was moved into place leaves: the previous report, or nothing."""
    if _read_manifest(out_dir):
        return (f" before the report was written: the report in {out_dir} is the previous one, unchanged; rerun the "
                "same command to write it")
    return f" before the report was written: nothing was written to {out_dir}; rerun the same command to write it"


def _write_files(runs: Runs, folder: Path, warn) -> tuple[list[str], dict[str, tuple]]:
    """Every table and chart of the report, written under ``folder``: their paths relative to it, and the main
    tables for the terminal. What a table's summary.md says of its runs' starts (``unpaired_starts``) ``warn``
    gets too."""
    written: list[Path] = []
    shown = {}
    summary = summarise(runs.table)
    for (dataset, backbone), s in summary.groupby(["dataset", "backbone"], sort=False, observed=True):
        # per dataset, from all its runs: its folder is named alike whatever other datasets, or --dataset and
        # --method, leave in or out
        used = runs.backbones.get(dataset) or set(summary.loc[summary["dataset"] == dataset, "backbone"])
        key = dataset if len(used) == 1 else f"{dataset}_{backbone}"
        key = base = _folder_name(key)
        for n in itertools.count(2):  # two names that read alike as folder names ("w/a.pt", "w_a.pt"): kept apart
            if not (folder / key).exists():
                break
            key = f"{base}_{n}"
        group = folder / key
        group.mkdir()
        s = s.reset_index(drop=True)
        head, rows = display_rows(s)
        title = f"{dataset}, {backbone}"
        shown[title] = (head, rows)
        runs_here = runs.table[(runs.table["dataset"] == dataset) & (runs.table["backbone"] == backbone)]
        starts, budgets = unpaired_starts(runs_here), _differing_note(runs.differing.get((dataset, backbone)))
        counts = _mixed_counts_note(runs_here)
        for said in (starts, budgets, counts):
            if said:
                warn(f"{title}: {said}")
        doubts = "".join(f"{_sentence(d)}.\n\n" for d in (budgets, starts, counts, _unsure_labels_note(runs_here))
                         if d)
        notes = [SCORES_NOTE, f"memory: {_memory_note(runs_here)}", "FLOPs: 1 multiply-add = 1 FLOP (fvcore)",
                 STEP_NOTE, "infer ms/clip: batch 1, each run's median timed iteration, averaged over seeds",
                 _inference_note(runs_here)]
        priors = _priors_note(s)
        files = {
            "summary.md": f"# {title}\n\n" + doubts + markdown(head, rows)
                          + (f"\n{priors}\n" if priors else "")
                          + "\n" + "".join(f"- {_sentence(n)}.\n" for n in notes),
            "summary.csv": s.to_csv(index=False),
            "summary.tex": latex(head, rows, (f"Methods on {dataset} ({backbone}). " + ". ".join(
                _sentence(n) for n in [*notes, *([budgets] if budgets else [])])
                                  + (f". {priors}" if priors else "")).replace("`", "")),  # no code quotes in TeX
            "runs.csv": runs_here.to_csv(index=False),  # the table's own runs, replaced with it
        }
        ids = runs_here["run_id"]
        pa = runs.per_attribute[runs.per_attribute["run_id"].isin(ids)]
        if not pa.empty:
            grid = per_attribute_grid(pa, runs.table, [str(m) for m in s["label"]])
            files["per_attribute.csv"] = grid.to_csv()
            files["per_attribute.md"] = f"# per-attribute F1 (%), {title}\n\n" + markdown(
                ["attribute", *grid.columns],
                [[a, *(f"{100 * v:.1f}" for v in grid.loc[a])] for a in grid.index])
        drawn = charts(s, runs, list(ids), group, title)
        files["summary.md"] += chart_links([p for p in drawn if p.suffix == ".png"])
        for name, text in files.items():
            atomic_write_text(group / name, text)
            written.append(group / name)
        written += drawn
    atomic_write_text(folder / "runs.csv", runs.table.to_csv(index=False))
    written.append(folder / "runs.csv")
    return [p.relative_to(folder).as_posix() for p in written], shown


CHART_CAPTIONS = {"f1_vs_params": "F1 against trainable parameters", "f1_vs_memory": "F1 against training memory",
                  "latency": "inference latency", "per_attribute_f1": "F1 per attribute",
                  "curves": "training curves", "curves_by_method": "test F1 per epoch, a panel per row"}


def chart_links(pngs: list[Path]) -> str:
    """summary.md's last section: the table's charts shown where the Markdown is read (a repository's web page, an
    editor's preview), each by its file name beside summary.md."""
    if not pngs:
        return ""
    return "\n## Charts\n\n" + "\n".join(f"![{CHART_CAPTIONS.get(p.stem, p.stem)}]({p.name})\n" for p in pngs)


def _read_manifest(out_dir: Path) -> list[str]:
    """The files (relative to ``out_dir``) the last report there wrote; none where it kept no manifest, or the
    manifest cannot be read: a file not surely the report's own is never removed."""
    try:
        files = json.loads((out_dir / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, str) and f and not Path(f).is_absolute() and ".." not in Path(f).parts]


def _write_manifest(out_dir: Path, files: list[str]) -> None:
    atomic_write_text(out_dir / MANIFEST, json.dumps({"written_by": "bench report", "files": sorted(files)},
                                                     indent=1) + "\n")


def _publish(staging: Path, staged: list[str], out_dir: Path, warn, datasets: set[str]) -> list[Path]:
    """Move the report built in ``staging`` into ``out_dir`` and remove the previous report's files of
    ``datasets`` (the folder names of those it reports) that it does not replace; an earlier report's files of
    other datasets (``bench report --dataset mars`` after ``--dataset duke``) stay, and stay listed. Everything
    that can fail is checked first; the moves (renames in one file system) run with stop
    signals held, and the manifest lists the old and the new files while they run, so that even a killed report
    leaves every file it wrote known to the next."""
    previous = _read_manifest(out_dir)
    for folder in dict.fromkeys((out_dir / rel).parent for rel in staged):
        check_writable_folder(folder, "choose another --out")
    for rel in staged:
        if os.path.isdir(out_dir / rel) and not os.path.islink(out_dir / rel):
            raise UserError(f"cannot write {out_dir / rel}: it is a folder; remove it, or choose another --out")
    legacy = [] if previous else _earlier_report_folders(out_dir, staged)
    done = False
    try:
        with hold_signals():  # under bench's signal handlers a stop waits for the end of the block
            _write_manifest(out_dir, sorted(set(previous) | set(staged)))
            for rel in staged:
                _move(staging / rel, out_dir / rel)
            stale = [rel for rel in previous if rel not in staged and _of_datasets(rel, datasets)]
            _remove_stale(out_dir, stale)
            others = [rel for rel in previous if rel not in staged and rel not in stale and (out_dir / rel).exists()]
            _write_manifest(out_dir, [*staged, *others])
            done = True
    except (KeyboardInterrupt, Terminated) as exc:
        then = (f" after the report was written to {out_dir} in full" if done else
                f" while the report was moved into {out_dir}: its files are part new, part previous; rerun the same "
                "command to write it")
        raise CommandStopped(exc, then) from None
    folders = ", ".join(dict.fromkeys(str((out_dir / rel).parent) for rel in staged if "/" in rel))
    for folder in legacy:
        warn(f"{folder} holds a summary.csv this report did not write (it wrote {folders}): if an earlier report "
             "wrote it, its tables are out of date; remove that folder")
    return [out_dir / rel for rel in staged]


def _of_datasets(rel: str, datasets: set[str]) -> bool:
    """Whether the report file ``rel`` (relative to --out) is of one of ``datasets``: in the folder of one
    (``mars/``, or ``mars_<backbone>/`` where several backbones are reported), or at the top (runs.csv)."""
    top = rel.split("/", 1)[0] if "/" in rel else ""
    return not top or any(top == d or top.startswith(f"{d}_") for d in datasets)


def _move(source: Path, target: Path) -> None:
    """``source`` onto ``target`` by a rename (a symbolic link at ``target`` keeps pointing where it did, and its
    target is replaced, as ``atomic_write_text`` does); copied where the link leads to another file system."""
    target = write_target(target)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise UserError(f"could not move the new {target.name} into place ({exc.strerror or exc}); the report "
                            f"in {target.parent} may mix new and previous files: rerun the same command") from None
        atomic_write_with(target, lambda tmp: shutil.copyfile(source, tmp))


def _remove_stale(out_dir: Path, stale: list[str]) -> None:
    """Remove files an earlier report wrote that this one does not, and the folders that leaves empty (a folder
    that still holds anything, such as a file of the user's, stays)."""
    root = out_dir.resolve()
    for rel in stale:
        path = out_dir / rel
        if not path.resolve().is_relative_to(root) and not path.is_symlink():
            continue
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        for folder in path.parents:
            if folder == out_dir or not folder.is_relative_to(out_dir):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                break


def _earlier_report_folders(out_dir: Path, staged: list[str]) -> list[Path]:
    """Folders of ``out_dir`` holding a ``summary.csv`` this report does not write: tables of a report written
    before reports kept a manifest, which cannot be told from a user's files and so are left, and said."""
    new = {out_dir / rel for rel in staged}
    return sorted(p.parent for p in out_dir.glob("*/summary.csv") if p not in new and p.is_file())


def unpaired_starts(group: pd.DataFrame) -> str | None:
    """What to say of a table of two or more experiments (one dataset and backbone) that holds runs which did not
    start fusion and head from their seed alone (``vtfpar.fusion.SHARED_START``): runs that drew them after their
    method's own modules (``fusion_start`` 1), and runs whose start cannot be told (none recorded, and this
    checkout's git history cannot place their commit). Such runs are valid, but a difference between experiments
    then includes their starts (noise that averages out over seeds, which a paired comparison does not have).
    None where there is nothing to say."""
    if group["label"].nunique() < 2:
        return None
    said = []
    for runs, what in ((group[group["fusion_start"] < SHARED_START],
                        f"were made before commit {SHARED_START_SINCE}, when each method drew fusion and head after "
                        "its own modules"),
                       (group[group["fusion_start"].isna()],
                        "record no fusion start and this checkout's git history cannot place their commit (runs made "
                        f"before {SHARED_START_SINCE} drew fusion and head after their method's own modules)")):
        if not runs.empty:
            labels = [label for m in _order(runs["method"].unique())
                      for label in sorted(runs.loc[runs["method"] == m, "label"].unique())]
            said.append(f"{len(runs)} of {len(group)} runs ({', '.join(labels)}) {what}")
    if not said:
        return None
    return f"{'; '.join(said)}: differences between experiments include their starts; `bench run --force` remakes them"


def _sentence(note: str) -> str:
    """A note as the start of a sentence: its first letter capitalised, the rest (names such as mA) as written."""
    return note[:1].upper() + note[1:]


def _differing_note(differ: list[str] | None) -> str | None:
    """What a table says when two of its methods have no row trained alike (``unlike_methods``: another budget of
    epochs or clips, another learning rate); None where every two methods have."""
    if not differ:
        return None
    return (f"its rows differ in {', '.join(differ)} (each row's label says its values), and some methods have no "
            "row trained as another's: compare those as runs of different settings, not only of different methods")


def _unsure_labels_note(group: pd.DataFrame) -> str | None:
    """What a table's summary says of its runs whose labels cannot be judged here (``label_problem``), which are
    averaged in (each is named on stderr by ``bench report``); None where there are none."""
    unsure = group[group["labels_unsure"].astype(bool)] if "labels_unsure" in group else group.iloc[:0]
    if unsure.empty:
        return None
    return (f"{len(unsure)} of {len(group)} runs ({', '.join(sorted(unsure['label'].unique()))}) are MARS runs of 43 "
            "attributes from before the later release's bottom type was read as it is now, whose dataset root is not "
            "here to tell which CSV they read: if it was that release's, their bottom type is the other way round; "
            "`bench report` names them")


def _mixed_counts_note(group: pd.DataFrame) -> str | None:
    """What a table says of a row whose seeds count trainable parameters differently, so that its count is a mean
    no run had: runs of the same setting from before and after the model dropped two zero-gradient parameters
    (``vtfpar.fusion.DROPPED_SHIFTS``, commit ``SHIFTS_DROPPED_IN``), say. None where every row's runs agree."""
    if "trainable_params" not in group:
        return None
    counts = group.dropna(subset=["trainable_params"]).groupby("label", sort=False)["trainable_params"].unique()
    mixed = [f"{label} ({' and '.join(f'{int(c):,}' for c in sorted(c))})" for label, c in counts.items() if len(c) > 1]
    if not mixed:
        return None
    return (f"the seeds of {'; '.join(mixed)} count trainable parameters differently, so the table shows their mean: "
            "they were made by versions whose models differ (runs made before commit "
            f"{SHIFTS_DROPPED_IN}, for one, also counted the head's bias and the fusion's last LayerNorm shift, one "
            "parameter more per fusion channel and per attribute); `bench run --force` remakes a run")


def _inference_note(table: pd.DataFrame) -> str:
    forms = set(table["measured_in"].dropna()) if "measured_in" in table else set()
    if forms == {"deployment form"}:
        return ("inference (latency, memory) measured in each method's deployment form (LoRA merged into the "
                "weights, prompt-tuned text features computed once, weights held in the autocast dtype)")
    if "training form" in forms:
        return (f"inference measured in: {', '.join(sorted(forms))}; runs of an earlier version timed it in "
                "training form (LoRA unmerged, prompt tuning's text encoded on every call), which overstates those "
                "methods' latency: `bench run --force` remakes a run in deployment form")
    return f"inference measured in: {', '.join(sorted(forms)) or 'not measured'}"


def _priors_note(s: pd.DataFrame) -> str | None:
    """The prior baselines' F1 (predictions that learn nothing from the clips: every attribute present, or each
    attribute's majority value in the training labels), the floor every row should clear; None where unknown."""
    said = [f"{name} {100 * s[col].mean():.2f}" for name, col in ((PRIOR_COLUMN, "baseline_all_positive_f1"),
                                                                  ("majority", "baseline_majority_f1"))
            if col in s and s[col].notna().any()]
    return f"Prior baselines, F1 (%) of predictions that learn nothing from the clips: {', '.join(said)}." if said \
        else None


def _memory_kind(table: pd.DataFrame) -> str | None:
    """What the memory columns of ``table``'s runs are: "cuda" (the CUDA allocator's peak), "cpu" (the CPU
    process's peak RSS), "both", by run (runs on a GPU and on a CPU in one table, whose figures do not compare),
    or None where none was measured."""
    kinds = set(table["memory_kind"].dropna())
    if not kinds:
        return None
    return "cpu" if "cuda" not in kinds else "cuda" if kinds == {"cuda"} else "both"


def _memory_note(table: pd.DataFrame) -> str:
    """``_memory_kind`` said for a table's header."""
    cuda = "peak torch.cuda.max_memory_allocated per phase"
    cpu = "CPU process peak RSS per phase (includes weights and libraries)"
    return {"cuda": cuda, "cpu": cpu, None: "not measured",
            "both": f"{cuda} for the runs on a GPU, {cpu} for the others, which do not compare"}[_memory_kind(table)]
