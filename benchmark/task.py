"""From a resolved config to the things a run works on: device, data, task model.

``prepare(cfg)`` is what a run, ``bench eval`` and the measurements build; ``load_run`` rebuilds
a finished run's model from its ``result.json`` and ``model.pt`` with the same loader of
trainable state that resume uses (``vtfpar.model.load_trainable_state``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmark.config import MAX_EVAL_BATCH, Config, config_from_dict, settings_named
from benchmark.memory import check_batch_fits
from benchmark.results import (
    RESULT,
    WEIGHTS,
    Status,
    edited_config,
    is_complete,
    is_done,
    label_problem,
    read_result,
    stale_labels,
    unfinished_run,
)
from benchmark.writes import load_torch_file
from methods import build_model
from vtfpar.attributes import AttributeSet
from vtfpar.backbone import check_pretrained, check_weights_fetchable, input_size, load_clip, weights_sha256
from vtfpar.data import OtherDatasetTree, attributes_for, build_datasets
from vtfpar.errors import UserError, file_problem, not_a_file, one_line, why_missing
from vtfpar.model import VTFPAR, load_trainable_state


def resolve_device(name: str, option: str = "run.device", make_current: bool = True,
                   instead: str = "--device cpu or auto") -> torch.device:
    """``name`` (auto, cpu, cuda, cuda:N) as a device of this machine; ``option`` is what errors call it, ``instead``
    how the command takes another where CUDA is missing (a sweep has no --device). A GPU
    named by its index becomes torch's current device (unless ``make_current`` is off: under torchrun each rank
    takes its own), so that what takes the current one (the loader's pinned memory, ``torch.cuda.empty_cache``,
    a kernel launched without a device) acts on it and not on GPU 0."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option} '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} is '{name}' but CUDA is not available here (use {instead})")
    if device.type == "cpu" and device.index is not None:  # torch takes cpu:5, and it is the one CPU device
        raise UserError(f"{option} '{name}': bench runs on the CPU as a whole, 'cpu' (use auto, cpu, cuda or cuda:N)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{option} '{name}' is not supported: bench runs on cpu or cuda (use auto, cpu, cuda or "
                        "cuda:N)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{option} '{name}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"numbered from 0 (use cuda:0 .. cuda:{torch.cuda.device_count() - 1}, or auto)")
    if make_current and device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_task_model(cfg: Config, clip: nn.Module, attributes: AttributeSet, named: bool = True) -> VTFPAR:
    """The task model of ``cfg``'s method on ``clip`` with the config's frames and fusion settings. A setting
    that only the built model shows to be wrong is named with where it was set (unless not ``named``: ``bench
    perf`` takes its settings from the shipped file alone, and says so itself)."""
    with settings_named(cfg) if named else contextlib.nullcontext():
        return build_model(clip, backbone=cfg.model.backbone, attributes=attributes, method=cfg.run.method,
                           method_cfg=cfg.method, frames=cfg.data.frames, fusion=cfg.model, seed=cfg.run.seed)


def build_random_model(cfg: Config, clips: dict[str, nn.Module] | None = None, named: bool = True) -> VTFPAR:
    """The task model of ``cfg`` on CLIP with random weights, for what does not depend on the weights (parameter
    counts, operator and FLOP counts, timings, whether the settings build at all): ``bench list``, ``bench perf``'s
    rows and ``bench sweep``'s check. CLIP's "randomly initialised" warning is for scores, so it is not shown.
    ``clips``: random CLIPs by backbone, filled and copied from when given (a grid builds many models of one
    backbone); ``named`` as in ``build_task_model``."""
    from vtfpar.data import default_attributes

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialised")
        with settings_named(cfg) if named else contextlib.nullcontext():
            if clips is None:
                clip = load_clip(cfg.model.backbone, "none")
            else:
                if cfg.model.backbone not in clips:
                    clips[cfg.model.backbone] = load_clip(cfg.model.backbone, "none")
                clip = copy.deepcopy(clips[cfg.model.backbone])
        return build_task_model(cfg, clip, default_attributes(cfg.run.dataset), named=named)


def checked_batch_size(batch_size: int) -> int:
    """``--batch-size`` of ``bench eval`` and ``bench predict``: ``train.eval_batch_size``'s range."""
    if not 1 <= batch_size <= MAX_EVAL_BATCH:
        raise UserError(f"--batch-size must be 1 to {MAX_EVAL_BATCH} (clips at once), got {batch_size}")
    return batch_size


def check_batches(cfg: Config, size: int, evaluating: str | None = None, options: bool = True) -> None:
    """The one batch of clips a run holds at once fits in memory (``check_batch_fits``), at ``size`` px: the larger
    of its training and evaluation batches, or the evaluation batch alone for a run only evaluated (``evaluating``,
    its folder). ``options``: whether the error names ``bench run``'s options beside the settings."""
    # The batches there will be: no larger than a split whose size is known before it is read (synthetic clips),
    # unless the run is measured, which times batches of the settings' sizes
    capped = cfg.run.dataset == "synthetic" and (evaluating is not None or not cfg.measure.enabled)
    train_batch = min(cfg.train.batch_size, cfg.data.train_clips) if capped else cfg.train.batch_size
    eval_batch = min(cfg.train.eval_batch_size, cfg.data.test_clips) if capped else cfg.train.eval_batch_size
    if evaluating is not None:
        check_batch_fits(eval_batch, cfg.data.frames, size,
                         fix=f"run {evaluating}'s settings (data.frames {cfg.data.frames}, train.eval_batch_size "
                             f"{cfg.train.eval_batch_size}) need more memory than that",
                         fewer=lambda fitting: f"lower --batch-size (clips evaluated at once) to {fitting} or fewer")
    elif eval_batch > train_batch:
        check_batch_fits(eval_batch, cfg.data.frames, size, "train.eval_batch_size",
                         fix=None if options else "lower data.frames or train.eval_batch_size")
    else:
        check_batch_fits(train_batch, cfg.data.frames, size,
                         fix=None if options else "lower data.frames or train.batch_size")


def one_training_clip(dataset: str) -> UserError:
    """A training split of one clip, which the head's BatchNorm cannot train on."""
    return UserError(f"dataset {dataset} has one training clip; the head's BatchNorm trains on two or more "
                     "(data.train_clips for synthetic, more tracklets otherwise)")


def check_buildable(cfgs: list[Config], files: bool = True) -> None:
    """What ``prepare`` would refuse in each of ``cfgs`` once its run starts, found before any starts, without data
    or weights: the backbone and its input size, the pretrained weights (``check_pretrained``; a local file must be
    here unless ``files`` is False, for a cluster whose nodes hold their own copies), and every distinct setting of
    a method against the backbone, by building its model once on random weights (a second or so on ViT-B/16).
    ``bench sweep`` calls it, so that a setting only one method or backbone cannot take stops the grid at once
    instead of failing that run hours into it. So do what every run of a setting would fail on alike: a synthetic
    training split of one clip and, where the runs train on this machine (``files``), a device it does not have or
    a batch too large for its memory (``check_batches``)."""
    built, clips, fetchable = set(), {}, set()
    with torch.random.fork_rng(devices=[]):  # the runs seed themselves; nothing drawn here
        for cfg in cfgs:
            with settings_named(cfg):
                size = input_size(cfg.model.backbone, cfg.data.image_size)
                check_pretrained(cfg.model.backbone, cfg.model.pretrained, files)
            if files:  # this machine's weights cache, network, device and memory: a remote cluster's nodes have theirs
                if (weights := (cfg.model.backbone, cfg.model.pretrained)) not in fetchable:
                    check_weights_fetchable(*weights)
                    fetchable.add(weights)
                resolve_device(cfg.run.device, make_current=False, instead="--set run.device=cpu or auto")
                check_batches(cfg, size, options=False)
            if cfg.run.dataset == "synthetic" and cfg.data.train_clips == 1:
                raise one_training_clip(cfg.run.dataset)
            key = repr((cfg.run.method, cfg.method, replace(cfg.model, pretrained="none"), cfg.data.frames,
                        cfg.run.dataset))
            if key not in built:
                build_random_model(cfg, clips)
                built.add(key)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model: VTFPAR, mode: str = "default") -> None:
    """``train.compile``: compile the encoder, fusion and head in place (``nn.Module.compile``); ``mode`` is
    ``torch.compile``'s (``reduce-overhead`` adds CUDA graphs on a GPU; ``bench perf --compile-mode``).

    The text side is left alone: it runs once per model (or, for prompt tuning, once per step on a
    fixed-size batch of sentences) and its cache is filled lazily, which would break the graph.
    """
    for module in (model.encoder, model.fusion, model.head):
        module.compile(mode=None if mode == "default" else mode)


@dataclass
class Prepared:
    """Everything a run (or a measurement) needs, built from a Config."""

    cfg: Config
    device: torch.device
    model: VTFPAR
    train_set: object
    test_set: object
    attributes: AttributeSet


def prepare(cfg: Config, device: torch.device | None = None, evaluating: str | None = None) -> Prepared:
    """Data and model of ``cfg`` on ``device`` (default: ``run.device`` resolved). ``evaluating``: the
    finished run's folder, for a model that is only evaluated (its training batch does not matter, and its
    settings are those its result.json records)."""
    device = device or resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    with settings_named(cfg):
        size = input_size(cfg.model.backbone, cfg.data.image_size)
    check_batches(cfg, size, evaluating)
    # The data first: a data mistake is reported before a backbone loads (and warns). Building the datasets
    # draws nothing from the global generators, so the initialisation below is the same either way.
    train_set, test_set, attributes = build_datasets(cfg.run.dataset, cfg.data, image_size=size, seed=cfg.run.seed)
    with settings_named(cfg):
        clip = load_clip(cfg.model.backbone, cfg.model.pretrained)
    model = build_task_model(cfg, clip, attributes).to(device)
    if cfg.train.compile:
        # As a run of its own: Dynamo's cache is per code object, shared by the runs of a sweep in one process, and
        # past its limit a later run (another method's encoder) would silently train, and be timed, eagerly.
        torch._dynamo.reset()
        compile_model(model)
    return Prepared(cfg, device, model, train_set, test_set, attributes)


def check_run_folder(run_dir: Path, instead: str = "") -> None:
    """That ``run_dir`` is a run's folder with its ``result.json`` (what is checked before anything is read), else
    one line saying what it is; ``instead`` ends the line of a folder that is no run at all (e.g. a hint that the
    arguments were given in another order)."""
    result_path = run_dir / RESULT
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else why_missing(run_dir, "folder")
        raise UserError(f"{run_dir}: {what}; give a finished run directory (results/runs/<run-id>){instead}")
    os.scandir(run_dir).close()  # a folder this user may not open: the refusal names it, not the result.json in it
    if not result_path.is_file():
        if (unfinished := unfinished_run(run_dir)) is not None:
            raise UserError(f"run {run_dir.name} {unfinished[0]}: {unfinished[1]}")
        inside = sorted(path.parent.name for path in run_dir.glob(f"*/{RESULT}"))
        if inside:  # a folder of runs (results/runs), given for one of them: a finished one named, where there is one
            such = next((name for name in inside if is_done(run_dir / name)), inside[0])
            raise UserError(f"{run_dir} holds {len(inside)} run{'s' if len(inside) != 1 else ''}, not one: give one of "
                            f"them, such as {run_dir / such}")
        raise UserError(f"{result_path} not found: is {run_dir} a finished run directory?{instead}")


def _finished_config(run_dir: Path, pretrained: str | None = None) -> tuple[dict, Config, str | None]:
    """A finished run's result and config, checked (one line for each way it is not usable), and a warning for
    labels that cannot be judged (``label_problem``), or None. ``pretrained``: where the checkpoint file the run
    started from is now (``_find_trained_weights``)."""
    result_path, weights_path = run_dir / RESULT, run_dir / WEIGHTS
    check_run_folder(run_dir)
    result = read_result(run_dir)
    if result.get("status") == Status.FAILED.value:
        raise UserError(f"run {run_dir.name} failed ({one_line(str(result.get('error', 'no error recorded')))[:160]}); "
                        "fix that and run it again with bench run")
    if not is_complete(result):
        raise UserError(f"{run_dir} is not a finished run (status {result.get('status')}); run it to the end first")
    if not weights_path.is_file():  # a finished run whose weights went astray
        raise UserError(f"{weights_path} {not_a_file(weights_path)}, though run {run_dir.name} is finished ({RESULT} "
                        f"is there): {_weights_fix(run_dir)}")
    try:
        if not isinstance(result.get("config"), dict):
            raise TypeError("config is not a table")
        cfg = config_from_dict(result["config"])
        cfg.origins = dict.fromkeys(cfg.origins, str(result_path))  # a check at model build names this file
    except UserError as exc:
        raise UserError(f"{result_path}: its config is not valid here ({one_line(exc)}); rerun the run with "
                        "--force") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{result_path}: its config cannot be read by this version ({type(exc).__name__}: {exc}); "
                        "rerun the run with --force") from None
    if edited := edited_config({**result, "run_id": run_dir.name}):
        # valid settings, but not the run's: what is wrong with an invalid one is said above, more usefully
        raise UserError(f"{result_path}: {edited}")
    problem = label_problem(result)
    if problem and problem[0] == "stale":
        raise UserError(f"run {run_dir.name}: {problem[1]}")
    _find_trained_weights(run_dir, result, cfg, pretrained)
    return result, cfg, problem[1] if problem else None


def _find_trained_weights(run_dir: Path, result: dict, cfg: Config, given: str | None) -> None:
    """Point ``cfg.model.pretrained`` at the checkpoint file a finished run started from, as it is here: ``given``
    (``--pretrained``: the file has moved), else the absolute path the run recorded (``pretrained_file``: a relative
    ``model.pretrained`` names a file only from the folder the run was started in), else the configured one. Its
    sha256 must be the run's (``pretrained_sha256``): other weights under the same name are refused."""
    trained_on = result.get("pretrained_sha256")
    trained_on = trained_on if isinstance(trained_on, str) and trained_on else None
    if given is not None and not given.strip():  # not the current folder by accident ("$UNSET")
        raise UserError("--pretrained is empty: give the checkpoint file where it is now, or leave --pretrained out "
                        "for the one the run recorded")
    if given is not None:
        if trained_on is None:
            raise UserError(f"--pretrained {given}: run {run_dir.name} did not start from a checkpoint file it "
                            f"recorded (model.pretrained is {cfg.model.pretrained!r}); drop --pretrained")
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"--pretrained {given}: {file_problem(path)}; give the checkpoint file run {run_dir.name} "
                            f"was trained from (sha256 {trained_on[:12]}...)")
        cfg.model.pretrained = str(path)
    elif trained_on is not None:
        recorded = result.get("pretrained_file")
        if isinstance(recorded, str) and os.path.isabs(recorded) and os.path.isfile(recorded):
            cfg.model.pretrained = recorded
        elif weights_sha256(cfg.model.pretrained) is None:
            where = recorded if isinstance(recorded, str) and recorded else cfg.model.pretrained
            raise UserError(f"run {run_dir.name} was trained from the checkpoint file {where}, which is not here: pass "
                            f"--pretrained the file where it is now (sha256 {trained_on[:12]}...)")
    if trained_on and (now := weights_sha256(cfg.model.pretrained)) and now != trained_on:
        raise UserError(f"{cfg.model.pretrained} is not the checkpoint run {run_dir.name} was trained on (sha256 "
                        f"{now[:12]}..., the run's {trained_on[:12]}...): restore that file, pass --pretrained the one "
                        "it was trained on, or train the run again with bench run")


def _weights_fix(run_dir: Path) -> str:
    return (f"put back run {run_dir.name}'s own {WEIGHTS}, or train the run again (its bench run command with "
            "--force, or remove the run folder and rerun its bench sweep)")


def _saved_weights(run_dir: Path, result: dict) -> dict:
    """``model.pt`` of a finished run, checked to be that run's: its run id (saved with the weights) is the one in
    ``result.json`` beside it, so weights copied from another run (another seed, method or setting) are refused
    instead of evaluated as this run's. Files that name no run (written before run ids were saved) are read."""
    path = run_dir / WEIGHTS
    saved = load_torch_file(path, ("state",), fix=_weights_fix(run_dir))
    if "run_id" in saved and saved["run_id"] != result.get("run_id"):
        raise UserError(f"{path} holds the weights of run {saved['run_id']}, not of run {result.get('run_id')} whose "
                        f"{RESULT} is beside it: {_weights_fix(run_dir)}")
    return saved


def load_model(run_dir: Path, device: str = "auto",
               pretrained: str | None = None) -> tuple[VTFPAR, Config, AttributeSet, torch.device]:
    """A finished run's model on ``device`` (no dataset needed): backbone, method, trained weights (``pretrained``:
    where the checkpoint file it started from is now, if it has moved)."""
    result, cfg, unsure = _finished_config(run_dir, pretrained)
    saved = _saved_weights(run_dir, result)
    dev = resolve_device(device, "--device")
    names = result["data"].get("attributes") if isinstance(result.get("data"), dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{run_dir / RESULT} lacks the run's attribute names (data.attributes): it was not written "
                        "by this version of bench; rerun the run with --force")
    try:
        attributes = attributes_for(cfg.run.dataset, names)
    except UserError as exc:
        raise UserError(f"{run_dir / RESULT}: {one_line(exc)}; rerun the run with --force") from None
    if unsure:
        warnings.warn(f"run {run_dir.name}: {unsure}", stacklevel=2)
    model = build_task_model(cfg, load_clip(cfg.model.backbone, cfg.model.pretrained), attributes)
    load_trainable_state(model, saved["state"], str(run_dir / WEIGHTS), _weights_fix(run_dir))
    return model.to(dev).eval(), cfg, attributes, dev


def recorded_root(result: dict) -> str:
    """The absolute dataset root a finished run trained on (result.json's ``data.root``), or "" if none."""
    root = result["data"].get("root") if isinstance(result.get("data"), dict) else None
    return root if isinstance(root, str) and os.path.isabs(root) else ""


def load_run(run_dir: Path, data_root: str | None = None, device: str | None = None,
             pretrained: str | None = None, batch_size: int | None = None) -> Prepared:
    """Rebuild a finished run's model and data from its result.json and model.pt (trainable part only); ``data_root``
    replaces the dataset root the run was trained with (a moved or copied dataset); without it the root is the one
    the run recorded, absolute, where that folder is here (else the configured one where that is here, e.g. on
    another machine; where neither is, the recorded one is named in the error); ``device`` replaces the device it
    ran on (a run trained on a GPU, evaluated on a CPU machine); ``pretrained`` where the checkpoint file it started
    from is now, if it has moved; ``batch_size`` the clips evaluated at once (default: the run's
    ``train.eval_batch_size``; every clip is scored on its own, so it changes memory, not results, up to float
    rounding). Data of other attributes than the run's is refused; a test split of another size is warned of."""
    result, cfg, _ = _finished_config(run_dir, pretrained)  # unsure labels are judged once the data is read, below
    if batch_size is not None:
        cfg.train.eval_batch_size = checked_batch_size(batch_size)
    if data_root is not None and not data_root.strip():  # not the current folder by accident ("$UNSET")
        raise UserError("--data-root is empty: give the folder the dataset is in now, or leave --data-root out for "
                        "the one the run recorded")
    if data_root is not None:
        if cfg.run.dataset == "synthetic":
            raise UserError(f"--data-root {data_root}: run {run_dir.name} was trained on the synthetic dataset, "
                            "which is generated and reads no files; drop --data-root")
        cfg.data.root = os.path.normpath(os.path.expanduser(data_root))
    elif cfg.run.dataset != "synthetic" and (recorded := recorded_root(result)) and (
            os.path.isdir(recorded) or not os.path.isdir(os.path.expanduser(cfg.data.root))):
        # As the run saw it: a root given relative to where it ran means that folder only. Where neither is here,
        # the one the run read is the one an error names.
        cfg.data.root = recorded
    if device is not None:
        resolve_device(device, "--device")  # named as the option it came from
        cfg.run.device = device
    saved = _saved_weights(run_dir, result)
    try:
        p = prepare(cfg, evaluating=run_dir.name)
    except OtherDatasetTree as exc:
        raise UserError(f"the data at {exc.root} is {exc.other}'s ({exc.other}_attributes.csv, no "
                        f"{exc.dataset}_attributes.csv), but run {run_dir.name} was trained on {exc.dataset}: pass "
                        f"--data-root the {exc.dataset} dataset the run was trained on") from None
    recorded = result["data"] if isinstance(result.get("data"), dict) else {}  # what the run was evaluated on
    # Its format is known now it has been read (a run whose root was gone, given --data-root): a run of the later
    # release's CSV from before its btype was read as now is refused here too.
    if why := stale_labels({**result, "data": {**recorded, "format": getattr(p.train_set, "annotation_format", None)}}):
        raise UserError(f"run {run_dir.name}: {why}")
    trained = recorded.get("attributes")
    if isinstance(trained, list) and trained and p.attributes.names != trained:
        from vtfpar.data import detect_format

        fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(Path(cfg.data.root), cfg.run.dataset,
                                                                              cfg.data.annotation)
        here = p.attributes.names
        if cfg.run.dataset == "synthetic":  # generated: no other data to point to
            raise UserError(f"{run_dir / RESULT}: its data.attributes name {len(trained)} attributes, not the "
                            f"{len(here)} of the synthetic dataset: the file was edited or written by another version "
                            "of bench; rerun the run with --force")
        if len(here) != len(trained):
            differ = f"has {len(here)} attributes (format {fmt}), but run {run_dir.name} was trained on {len(trained)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(here, trained, strict=True)) if a != b)
            differ = (f"names attribute {i + 1} of {len(here)} '{here[i]}' (format {fmt}), but run {run_dir.name} was "
                      f"trained with '{trained[i]}' there")
        raise UserError(f"the {cfg.run.dataset} data at {cfg.data.root} {differ}; pass --data-root the dataset the "
                        "run was trained on")
    if len(p.test_set) == 0:  # where the run trained, bench run refused an empty split; here it is gone since
        raise UserError(f"the test split of the {cfg.run.dataset} data at {cfg.data.root} has no tracklets now, so "
                        f"run {run_dir.name} has nothing to be evaluated on: check its split lists and annotation file "
                        "(bench data check), or pass --data-root the dataset the run was trained on")
    if split := other_test_split(p, result):
        now, then = split
        warnings.warn(f"the test split has {now} tracklet{'s' * (now != 1)}, the run was evaluated on {then}: these "
                      "metrics are not comparable with its result.json", stacklevel=2)
    load_trainable_state(p.model, saved["state"], str(run_dir / WEIGHTS), _weights_fix(run_dir))
    return p


def other_test_split(p: Prepared, result: dict) -> tuple[int, int] | None:
    """``(tracklets in p's test split, tracklets the finished run was evaluated on)`` where the two differ (a
    ``--data-root`` of another copy): metrics of ``p`` are then not comparable with its result.json. None where
    they agree or the result does not say."""
    then = (result["data"] if isinstance(result.get("data"), dict) else {}).get("test_tracklets")
    now = len(p.test_set.labels)
    return (now, then) if isinstance(then, int) and then != now else None


def describe_methods(config_file: str | None, dataset: str | None, counts: bool) -> tuple[list[dict], str | None]:
    """One row per registered method (name, summary, source, and with ``counts`` its ``params`` on the configured
    backbone with random weights, as a result records them, or the ``problem`` that keeps the settings from building
    it), and the backbone the counts are for."""
    from benchmark.config import load_config
    from methods import get_method, list_methods
    from vtfpar.data import list_datasets
    from vtfpar.model import count_parameters

    if dataset is not None and dataset not in list_datasets():
        raise UserError(f"--dataset {dataset}: choose one of {', '.join(list_datasets())}")

    load_config(config_file, {"run": {"dataset": dataset}})  # a config that is not there, or not valid, says so
    rows, backbone = [], None
    for name in list_methods():
        spec = get_method(name)
        row = {"method": name, "summary": spec.summary, "source": spec.source,
               "variants": [v.id for v in spec.variants]}
        if counts:
            cfg = load_config(config_file, {"run": {"method": name, "dataset": dataset}})
            backbone = cfg.model.backbone
            try:
                row["params"] = count_parameters(build_random_model(cfg))
            except UserError as exc:  # the settings do not build this method: its row says why, the others count
                row["problem"] = one_line(exc)
        rows.append(row)
    if counts and all("problem" in row for row in rows):  # no method at all: the settings' error, not a listing
        raise UserError(rows[0]["problem"])
    return rows, backbone
