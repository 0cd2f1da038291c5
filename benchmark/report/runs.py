"""Every run's ``result.json`` read into tables: one row per run, its per-attribute F1 and its curves.

A file that is not a complete result (failed, unreadable, without what every complete result holds), a second
copy of a run and a second run of one experiment's seed are listed as problems and skipped, never fatal; run
folders that hold a run not yet finished are named, so that a row with a seed fewer is not taken for the whole
experiment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.config import COUNTED_WHEN_SET, precision_of, setting_of
from benchmark.measure import primary_bytes
from benchmark.report.experiments import differing_settings, experiment_labels, unlike_methods
from benchmark.results import (
    Status,
    edited_config,
    fusion_start,
    is_complete,
    is_finite_number,
    label_problem,
    parse_result,
    unfinished_run,
)
from methods import list_methods
from vtfpar.backbone import random_init
from vtfpar.errors import one_line
from vtfpar.metrics import HEADLINE_METRICS

METRICS = list(HEADLINE_METRICS)  # every complete result has them (checked on reading)


SCORES = [*METRICS, "grouped_f1"]  # averaged over seeds with their std; grouped F1 where a result has it


DEVICE_COSTS = ["train_mem_mib", "infer_mem_mib", "train_clips_per_s", "infer_ms_per_clip", "infer_clips_per_s",
                "infer_ms_iqr"]


# What seeds agree on for their costs to be averaged: the device, and on a CPU its host and torch's thread count
# (a sweep's Ray tasks train with --cpus-per-run threads, the local engine with all of them).
COST_CONDITIONS = ["device", "cpu_host", "threads", "measured_in", "compiled"]
# Measured at the evaluation batch (train.eval_batch_size, not part of an experiment): averaged over seeds measured
# at one batch only.
EVAL_BATCH_COSTS = ["infer_mem_mib", "infer_clips_per_s"]


MIB = 2**20

# Settings of a run, not of its experiment. (train.eval_every is not one of them: seeds scored on other epochs
# would average into uneven curves.)
EVALUATION_ONLY = ("train.eval_batch_size",)


def _weights(pretrained):
    """``model.pretrained`` as the report groups it: random weights ``none`` however a run spelt them."""
    return "none" if pretrained is None or random_init(pretrained) else pretrained


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
    method: str | None = None  # the --method the runs were read for (None: every method)


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
    """``metrics.per_attribute``, checked to be a list of {name, f1} (absent: none) of the attributes the run
    records (``data.attributes``), one each in their order: a list thinned or reordered by hand would leave holes in
    the per-attribute table or put a score under another attribute's name."""
    scores = r["metrics"].get("per_attribute", [])
    if not isinstance(scores, list) or not all(isinstance(a, dict) and "name" in a and "f1" in a for a in scores):
        raise ValueError(f"metrics.per_attribute is {str(scores)[:40]!r}, not a list of attributes with name and f1")
    names = (r.get("data") or {}).get("attributes") if isinstance(r.get("data"), dict) else None
    if "per_attribute" in r["metrics"] and isinstance(names, list) and [a["name"] for a in scores] != names:
        raise ValueError(f"metrics.per_attribute names {len(scores)} attributes, not the {len(names)} of "
                         "data.attributes in their order")
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
        "backbone": f"{r['backbone']} ({_weights(r.get('pretrained'))})",  # weights are part of the backbone
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
        "infer_gflops": _number((r.get("flops") or {}).get("inference_gflops_per_clip"),
                                "flops.inference_gflops_per_clip"),
        "flops_counted": _flops_counted(r.get("flops")),
        "train_clips_per_s": _number((timing.get("train_step") or {}).get("clips_per_s"),
                                     "timing.train_step.clips_per_s"),
        "infer_ms_per_clip": _number((timing.get("inference_latency") or {}).get("ms_per_clip"),
                                     "timing.inference_latency.ms_per_clip"),
        "infer_clips_per_s": _number((timing.get("inference_throughput") or {}).get("clips_per_s"),
                                     "timing.inference_throughput.clips_per_s"),
        "infer_ms_iqr": _ms(_number((timing.get("inference_latency") or {}).get("iqr_s"),
                                    "timing.inference_latency.iqr_s")),
        "device": _text((r.get("env") or {}).get("device"), "env.device"),
        **_cpu_conditions(r.get("env") or {}),
        "measured_in": _text(r.get("measured_in"), "measured_in"),
        "compiled": _compiled(r),
        "train_batch": _number(mem.get("train_batch"), "memory.train_batch"),
        "eval_batch": _number(mem.get("eval_batch"), "memory.eval_batch"),
        "fusion_start": _number(fusion_start(r), "fusion_start"),
        "setting": json.dumps(_setting(r), sort_keys=True, default=str),
    }
    for b in ("all_positive", "majority"):
        if b in r.get("baselines", {}):
            row[f"baseline_{b}_f1"] = r["baselines"][b]["f1"]
    return row


def _flops_counted(flops) -> str | None:
    """How a result counted its training FLOPs per clip: on the training batch (what runs once per step shared by
    its clips, ``flops.counted_on_batch``), or, in results of earlier versions, as one clip's forward pass (prompt
    tuning's text encoder then counted whole for every clip). Seeds counted both ways are not averaged."""
    if not isinstance(flops, dict) or flops.get("gflops_per_clip") is None:
        return None
    return "training batch" if "counted_on_batch" in flops else "one clip"


def _cpu_conditions(env: dict) -> dict:
    """The host and thread count of a run measured on a CPU (None on a GPU, where the device names the card and the
    step's time is the card's): two CPUs, or one CPU with another thread count, time the same step differently."""
    on_cpu = str(env.get("device", "")).startswith("cpu")
    threads = env.get("torch_threads")
    return {"cpu_host": _text(env.get("host"), "env.host") if on_cpu else None,
            "threads": threads if on_cpu and type(threads) is int else None}


def _compiled(r: dict) -> bool | None:
    """Whether a run's model was compiled (``train.compile``), which changes its time and memory, not its numbers."""
    train = r["config"].get("train") if isinstance(r.get("config"), dict) else None
    value = train.get("compile") if isinstance(train, dict) else None
    return value if isinstance(value, bool) else None


def _setting(r: dict) -> dict:
    """What a run's seed is drawn within (``setting_of``), with ``train.amp`` as it ran (``auto`` is bf16 on a GPU
    and fp32 on a CPU: seeds of each precision are rows of their own), and which weights a local checkpoint file
    held: runs of one file name with other contents are other experiments. Not the evaluation batch: it is in the
    run id, but seeds that differ in it (memory, not results) are one experiment. Random weights are ``none``
    however a run spelt them (empty, ``random`` or ``None`` were once accepted as such)."""
    setting = setting_of(r["config"]) if isinstance(r.get("config"), dict) else {}
    for key, default in COUNTED_WHEN_SET.items():  # left out of run ids at their defaults: compared as these
        setting.setdefault(key, default)
    for key in EVALUATION_ONLY:
        setting.pop(key, None)
    if "model.pretrained" in setting:
        setting["model.pretrained"] = _weights(setting["model.pretrained"])
    if setting.get("train.amp") == "auto" and (amp := precision_of(r)):
        setting["train.amp"] = amp
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
    ``results.parse_result``), one whose config was edited since it ran (``results.edited_config``), and a
    second copy of a run (the same run id in another folder: counted twice it would pass for two seeds; the copy
    in the folder its run id names is kept), is listed in ``problems`` and skipped."""
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
            if edited := edited_config(r):  # another experiment's settings under this run's numbers
                problems.append((str(path), f"run {r.get('run_id')}: {edited}"))
                continue
            labels = label_problem(r)
            if labels and labels[0] == "stale":  # its numbers are of other labels than a run made now: not averaged in
                problems.append((str(path), f"run {r.get('run_id')}: {labels[1]}"))
                continue
            row = _row(r)
            row["labels_unsure"] = bool(labels)
            prior = ((r.get("baselines") or {}).get("all_positive") or {}).get("per_attribute_f1")
            prior = prior if isinstance(prior, dict) else {}  # the heatmap's prior-baseline column, where recorded
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
                warnings=warnings, backbones=backbones, differing=differing, method=method)


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
        if unfinished is not None and may_be_of(folder.name, dataset, method):
            found.append((str(folder), f"run {folder.name} {unfinished[0]}: {unfinished[1]}"))
    return found


def may_be_of(run_id: str, dataset: str | None, method: str | None) -> bool:
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
