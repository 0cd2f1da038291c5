"""The result of a run, and its files: the one owner of the result schema.

A run directory ``<out>/<run-id>/`` holds ``result.json`` (this module's schema), ``model.pt``
(trainable weights + backbone reference) and, while training, ``checkpoint.pt``. Every file is
written atomically (``benchmark.writes``: temporary file + rename), so readers never see half a file.

``complete_result`` and ``failed_result`` are the only builders of a result; ``read_result``
reads any schema version this suite has written (older files get the fields they lack, with the
values those versions implied).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path

import torch

from benchmark.lock import RunLock, trainer_of
from benchmark.memory import out_of_memory, out_of_memory_message
from benchmark.writes import atomic_write_json, json_default, json_from
from vtfpar.errors import UserError, first_few, one_line
from vtfpar.fusion import SHARED_START
from vtfpar.metrics import HEADLINE_METRICS

RESULT = "result.json"


CHECKPOINT = "checkpoint.pt"  # resumable training state (TrainState.state_dict)


WEIGHTS = "model.pt"  # final trainable weights + reference to the backbone


# A complete result that ``bench run --force`` is training again: set aside when training starts (so that an
# interrupted attempt resumes when rerun), removed when the new result is written.
PREVIOUS_RESULT = "result.previous.json"


REPO_ROOT = Path(__file__).resolve().parents[1]


# 1: first release. 2: inference is measured in deployment form (``measured_in``), operators per
# step and per inference (``operators``), ``status`` always present.
SCHEMA_VERSION = 2


class Status(enum.StrEnum):
    COMPLETE = "complete"
    FAILED = "failed"


def _git(*args: str) -> str | None:
    """``git ARGS`` in this checkout; None where there is no git or no repository (e.g. a copied tree)."""
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


SHARED_START_SINCE = "e0e8a9f"  # the first commit whose runs start fusion and head from their seed alone


def fusion_start(result: dict) -> int | None:
    """How a run's fusion and head drew their first weights (``vtfpar.fusion.SHARED_START``): as the run records
    it, or, for a run that records none, from its commit (``env.git_commit``): ``SHARED_START`` where this
    checkout's history shows it at or after ``SHARED_START_SINCE``, 1 where it shows it before; None where it
    cannot tell (no git here, a commit this history lacks, or none recorded)."""
    if "fusion_start" in result:
        return result["fusion_start"]
    commit = (result.get("env") or {}).get("git_commit")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return None
    return _start_of_commit(commit)


@functools.lru_cache(maxsize=256)
def _start_of_commit(commit: str) -> int | None:
    try:
        asked = subprocess.run(["git", "merge-base", "--is-ancestor", SHARED_START_SINCE, commit], cwd=REPO_ROOT,
                               capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: SHARED_START, 1: 1}.get(asked.returncode)  # another code: git knows one of the two commits not


def code_version() -> str | None:
    """The checkout's short commit, ``+changes`` when tracked files differ from it: what a measurement measured."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    return commit


def environment(device: torch.device) -> dict:
    """Package versions, git commit, device and host: what a reader needs to reproduce a number."""

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    dev = str(device)
    if device.type == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": version("open_clip_torch"),
        "peft": version("peft"),
        "timm": version("timm"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "device": dev,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "host": platform.node(),
    }


# Settings that change no result, left out of a result's config digest: where the run was kept and ran (the Ray
# driver rewrites both), and the speed settings one may need to change to evaluate it elsewhere (a cache folder
# that cannot be made there). A fixed list: the digests of results already written stay valid.
UNDIGESTED = {"run": ("out", "device"), "data": ("num_workers", "frame_cache"), "train": ("compile",),
              "measure": None}


def config_digest(config: dict) -> str:
    """sha256 of a result's ``config`` as written, less ``UNDIGESTED``: eval and predict tell a config edited
    since (its run then no longer what the file says) from the run's own."""
    kept = {}
    for section, values in config.items():
        left_out = UNDIGESTED.get(section, ())
        if left_out is None:
            continue
        kept[section] = ({k: v for k, v in values.items() if k not in left_out} if isinstance(values, dict)
                         else values)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=json_default).encode()).hexdigest()


def edited_config(result: dict) -> str | None:
    """Why a result's ``config`` is not the one its run was made with (edited since: ``config_sha256`` differs),
    or None. An edited config would be read as the run's own: another experiment for ``bench report``, another
    model for eval and predict. Results written before ``config_sha256`` cannot be told and pass."""
    made_with = result.get("config_sha256")
    if made_with is None or not isinstance(result.get("config"), dict) or config_digest(result["config"]) == made_with:
        return None
    return (f"its config is not the one run {result.get('run_id')} was made with (it was edited since; config_sha256 "
            "differs): restore it, or train the run again with bench run ... --force")


def _identity(cfg) -> dict:
    config = cfg.to_dict()
    identity = {"method": cfg.run.method, "dataset": cfg.run.dataset, "backbone": cfg.model.backbone,
                "pretrained": cfg.model.pretrained, "seed": cfg.run.seed, "config": config,
                "config_sha256": config_digest(config), "config_source": cfg.source_files or cfg.source}
    if sha := cfg.weights_sha256():  # a local checkpoint file: which weights it held when the run started
        identity["pretrained_sha256"] = sha
        # and where it was, absolute: a relative model.pretrained names a file only from the folder the run ran in
        identity["pretrained_file"] = cfg.weights_file()
    return identity


def complete_result(cfg, run_id: str, device: torch.device, *, metrics: dict, baselines: dict, params: dict,
                    fusion_start: int, data: dict, history: list[dict], text_encoder_calls: int | None,
                    wall_seconds: float, measurements: dict) -> dict:
    """The ``result.json`` of a finished run (``cfg`` is the resolved ``benchmark.config.Config``;
    ``fusion_start``: how its fusion and head drew their first weights, ``vtfpar.fusion.SHARED_START``)."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "status": Status.COMPLETE.value,
        **_identity(cfg),
        "env": environment(device),
        "command": shlex.join(sys.argv),
        "metrics": metrics,
        "baselines": baselines,
        "params": params,
        "fusion_start": fusion_start,
        "data": data,
        "history": history,
        "text_encoder_calls": text_encoder_calls,
        "wall_seconds_this_process": wall_seconds,
        **measurements,
        "timing_epochs": {"epoch_seconds": [h["epoch_seconds"] for h in history],
                          "train_seconds_total": sum(h["epoch_seconds"] for h in history)},
    }


def recorded_error(exc: BaseException) -> str:
    """A failed run's ``error`` in its ``result.json``: what to lower for an allocation failure, else the
    exception's type and message."""
    return out_of_memory_message(exc) if out_of_memory(exc) else f"{type(exc).__name__}: {exc}"


def failure_line(exc: BaseException) -> str:
    """The one line a sweep says of a failed run (either engine): what to lower for an allocation failure, else
    the message on one line."""
    return out_of_memory_message(exc) if out_of_memory(exc) else one_line(exc)


def failed_result(cfg, run_id: str, exc: BaseException) -> dict:
    """The ``result.json`` of a run that raised ``exc`` (recorded by sweeps, which carry on)."""
    return {"schema": SCHEMA_VERSION, "run_id": run_id, "status": Status.FAILED.value, **_identity(cfg),
            "error": recorded_error(exc), "traceback": "".join(traceback.format_exception(exc, limit=8))}


def record_failure(run_dir: Path, result: dict) -> bool:
    """Write a failed run's ``result`` into ``run_dir``, unless a complete result is already there (a
    duplicate or concurrent attempt at the same run must not turn a finished run into a failed one).
    Returns whether the run stands failed (False: the complete result is kept). A result.json that is not a
    result (damaged, or cut short) is kept as it is and the failure left unrecorded, as is the failure in a
    folder that cannot be written; the caller still reports it. Written under the run's lock, as every writer of
    a run's files writes (``bench run`` removes the temporaries of writes cut short while it holds it); while
    another process holds it (training the run again), the failure is left unrecorded too."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir, log=lambda *_: None):
            try:
                if existing_result(run_dir) is not None:
                    return False
            except UserError:  # a file that is not a result: kept for its owner to look at (nothing written is lost)
                return True
            atomic_write_json(run_dir / RESULT, result)
    except (OSError, UserError):  # e.g. a folder where result.json goes: the caller still reports the failure
        pass
    return True


class NewerSchema(ValueError):
    """A result written by a later version of bench (a schema above ``SCHEMA_VERSION``): not damaged, unreadable."""


def upgrade(result: dict) -> dict:
    """A result of any earlier schema in the current shape (fields added since get their implied values)."""
    if not isinstance(result, dict):
        raise ValueError(f"a result must be a JSON object, got {type(result).__name__}")
    schema = result.get("schema", 1)
    if type(schema) is not int or schema < 1:
        raise ValueError(f"its schema is {schema!r}, not a version number")
    if schema > SCHEMA_VERSION:
        raise NewerSchema(f"schema {schema}: written by a newer version of bench, which this one (schema "
                          f"{SCHEMA_VERSION}) cannot read; update bench to read it")
    if schema < 2:
        result = {**result, "schema": SCHEMA_VERSION, "status": result.get("status", Status.COMPLETE.value)}
        if "timing" in result:
            result["measured_in"] = "training form"  # schema 1 timed inference without folding
    return result


COMPLETE_KEYS = ("run_id", "method", "dataset", "seed", "config", "metrics", "baselines", "params")


def is_finite_number(value) -> bool:
    """A finite number (a NaN metric or parameter count is as unusable as a missing one; so is an integer too
    large for a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _fraction(value) -> bool:
    """A metric: a finite number in [0, 1]."""
    return is_finite_number(value) and 0 <= value <= 1


def _what(name: str, holder: dict, key: str, kind: str = "a finite number") -> str:
    """``name`` where ``holder`` lacks ``key``, ``name (kind)`` where its value is something else."""
    return name if holder.get(key) is None else f"{name} ({kind})"


def missing_from_complete(result: dict) -> list[str]:
    """What a complete result lacks of what every complete result holds and every reader of one uses (the
    headline metrics, each baseline's, the parameter counts), as dotted names; empty when nothing is."""
    missing = [k for k in COMPLETE_KEYS if k not in result]
    missing += [f"{k} (a name)" for k in ("run_id", "method", "dataset")
                if k in result and not (isinstance(result[k], str) and result[k])]
    if "seed" in result and not (isinstance(result["seed"], int) and not isinstance(result["seed"], bool)):
        missing.append("seed (an integer)")
    metrics, baselines, params = result.get("metrics"), result.get("baselines"), result.get("params")
    if isinstance(metrics, dict):
        missing += [_what(f"metrics.{k}", metrics, k, "a fraction in [0, 1]") for k in HEADLINE_METRICS
                    if not _fraction(metrics.get(k))]
    elif "metrics" in result:
        missing.append("metrics (an object)")
    if isinstance(baselines, dict):
        for name, row in baselines.items():
            row = row if isinstance(row, dict) else {}
            missing += [_what(f"baselines.{name}.{k}", row, k, "a fraction in [0, 1]") for k in HEADLINE_METRICS
                        if not _fraction(row.get(k))]
    elif "baselines" in result:
        missing.append("baselines (an object)")
    if isinstance(params, dict):
        missing += [_what(f"params.{k}", params, k) for k in ("trainable", "total")
                    if not is_finite_number(params.get(k))]
        if "method" in params and not is_finite_number(params["method"]):  # results of earlier versions lack it
            missing.append(_what("params.method", params, "method"))
    elif "params" in result:
        missing.append("params (an object)")
    return missing


def parse_result(path: Path) -> dict:
    """The result file ``path`` in the current schema; ``OSError``/``TypeError``/``ValueError`` where it is not
    a result (not JSON, not an object, or a complete result without what every complete result holds:
    ``missing_from_complete``)."""
    with open(path) as f:
        result = upgrade(json_from(f.read()))
    if result.get("status") not in tuple(Status):
        raise ValueError(f"status {result.get('status')!r} is neither {' nor '.join(Status)}")
    if is_complete(result) and (missing := missing_from_complete(result)):
        raise ValueError(f"a complete result without {first_few(missing)}")
    if is_complete(result) and (other := config_disagrees(result)):
        raise ValueError(other)
    return result


def config_disagrees(result: dict) -> str | None:
    """What a complete result says of its method, dataset or seed that its own config does not (a hand-edited
    file, which a report would list under the wrong method); None when they agree."""
    run = result["config"].get("run") if isinstance(result["config"], dict) else None
    if not isinstance(run, dict):  # a config that cannot be read at all: said by whoever rebuilds it
        return None
    for key in ("method", "dataset", "seed"):
        if key in run and run[key] != result[key]:
            return f"its {key} {result[key]!r} is not its config's run.{key} {run[key]!r}"
    return None


def read_result(run_dir: Path) -> dict:
    """``run_dir``'s result.json (``parse_result``); one line naming the file if it is not a result."""
    path = run_dir / RESULT
    try:
        return parse_result(path)
    except NewerSchema as exc:  # nothing to delete or redo
        raise UserError(f"{path}: {exc}") from None
    except PermissionError:  # a whole file this user may not read: not one to delete (bench's top level says so)
        raise
    except (OSError, TypeError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is not a result file ({one_line(exc)[:120]}): delete it, or rerun the run with "
                        "`bench run ... --force`") from None


def check_runs_folder(out: str | Path, what: str) -> None:
    """Refuse an ``--out`` (``run.out``) that is one run's folder: ``what`` would be trained inside it, among its
    files, and read as a run folder's contents by the next report."""
    if (Path(out) / RESULT).is_file():
        raise UserError(f"--out {out} is one run's folder: {what} would be trained inside it; give the folder that "
                        f"holds the run folders (such as {Path(out).parent})")


RUN_FOLDER = re.compile(r".+_s\d+_[0-9a-f]{10}")  # Config.run_id: dataset_method_backbone_s<seed>_<digest>


def _a_run(folder: Path) -> bool:
    """Whether ``folder`` is a run's folder of bench's: named as a run id, with its result or checkpoint in it (not
    any folder that holds a file called checkpoint.pt)."""
    return bool(RUN_FOLDER.fullmatch(folder.name)) and any((folder / f).is_file() for f in (RESULT, CHECKPOINT))


def check_not_among_runs(path: str | Path, option: str, what: str, *, is_file: bool = False) -> None:
    """Refuse the ``path`` that ``option`` names for ``what`` (bench perf's tables: a folder; pretrain-clip's
    weights: a file, ``is_file``) where it would sit among a run's files, or among the run folders of a runs tree,
    which reports and predictions read."""
    target = Path(os.path.abspath(path))
    folder = target.parent if is_file else target
    inside = next((p for p in (folder, *folder.parents) if _a_run(p)), None)
    if inside is not None:
        raise UserError(f"{option} {path} is {'' if inside == target else 'inside '}the run folder {inside}, among its "
                        f"files; write {what} elsewhere")
    runs = sorted(p.name for p in folder.iterdir() if p.is_dir() and _a_run(p)) if folder.is_dir() else []
    if runs:
        held = f"{runs[0]}{', ...' if len(runs) > 1 else ''}"
        raise UserError(f"{option} {path} {f'is among the run folders of {folder}' if is_file else 'holds runs'} "
                        f"({held}); write {what} in a folder of its own")


RETRAIN = "train it again with bench run ... --force"


def label_problem(result: dict, fix: str = RETRAIN) -> tuple[str, str] | None:
    """What is wrong with a complete result's labels as they are read now (``vtfpar.data.layouts.LABELS_READ``), with
    the dataset root read once at most: ``("stale", why + fix)`` where its numbers and weights do not hold (a
    MARS-Attribute 2019 run whose top and bottom length were read with 0 as short, or a MARS run of the later
    release's CSV whose bottom type was read with 1 as skirt or dress, was trained and scored with those attributes
    the other way round), ``("unsure", why)`` where that cannot be judged (a MARS run of 43 attributes from before
    the later release's ``btype`` was read as it is now, whose format was detected from a dataset root that is not
    here now), None where they hold."""
    from vtfpar.data.mars import MARS2019_ATTRIBUTES

    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    read = data.get("labels_read", 1)
    if not isinstance(read, int):
        return None
    if data.get("attributes") == MARS2019_ATTRIBUTES.names and read < 2:
        what = ("its MARS-Attribute 2019 labels were read before top and bottom length were read as the CSV codes "
                "them (1 = short), so it was trained and scored with those two attributes")
    elif not _release_btype_unread(data, read):
        return None
    elif (from_release := _read_from_release_csv(result)) is None:
        return ("unsure", "it was trained before the later release's MARS CSV had its bottom type read as the CSV "
                "codes it (btype 0 = skirt or dress), and its dataset root, which would tell whether it read that "
                "CSV, is not here: if it did, bottom type is the other way round in it (train it again with bench "
                "run ... --force)")
    elif from_release:
        what = ("its MARS labels were read from the later release's CSV before bottom type was read as the CSV codes "
                "it (btype 0 = skirt or dress), so it was trained and scored with that attribute")
    else:
        return None
    return "stale", f"{what} the other way round: {fix}"


def stale_labels(result: dict, fix: str = RETRAIN) -> str | None:
    """Why a complete result's numbers and weights do not hold for its labels as they are read now, and ``fix``;
    None where they hold or cannot be judged (``label_problem``)."""
    problem = label_problem(result, fix)
    return problem[1] if problem and problem[0] == "stale" else None


def unsure_labels(result: dict) -> str | None:
    """A warning for a run whose labels cannot be judged (``label_problem``); None otherwise."""
    problem = label_problem(result)
    return problem[1] if problem and problem[0] == "unsure" else None


def _release_btype_unread(data: dict, read: int) -> bool:
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    return data.get("attributes") == MARS43_ATTRIBUTES.names and read < 3


def _read_from_release_csv(result: dict) -> bool | None:
    """Whether a run read the later release's CSV: its ``data.format`` (recorded since), else its ``data.format``
    setting, or, set to auto, what its dataset root holds now; None where that cannot be known (the root is gone)."""
    from vtfpar.data import detect_format

    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    cfg = result.get("config") if isinstance(result.get("config"), dict) else {}
    spec = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    fmt = data.get("format") or spec.get("format", "auto")
    if fmt != "auto":
        return fmt == "release_csv"
    root, annotation = data.get("root") or spec.get("root"), spec.get("annotation") or ""
    try:
        if not isinstance(root, str) or not isinstance(annotation, str) or not Path(root).expanduser().is_dir():
            return None
        return detect_format(Path(root).expanduser(), "mars", annotation) == "release_csv"
    except (UserError, OSError, RuntimeError):  # RuntimeError: a ~user that is not one (Path.expanduser)
        return None


def is_complete(result: dict) -> bool:
    return result.get("status") == Status.COMPLETE.value


def existing_result(run_dir: Path) -> dict | None:
    """The complete result in ``run_dir``; None where there is no result.json or the run is not complete (a
    failed one); a ``UserError`` naming the file where it is not a result (``read_result``). A complete result
    is done with or without its weights beside it (results copied to rebuild a report); ``bench run`` warns
    of missing weights."""
    if not (run_dir / RESULT).is_file():
        return None
    result = read_result(run_dir)
    return result if is_complete(result) else None


def unfinished_run(run_dir: Path) -> tuple[str, str] | None:
    """Why ``run_dir``, which has no result.json, is a run that has not finished, and how to finish it, as
    ``(what, fix)`` to follow "run <name>": being trained now, stopped in a ``bench run --force`` rerun (its earlier
    result set aside), or stopped in its first training (a checkpoint). None for a folder that is none of these."""
    if (run_dir / RESULT).is_file():
        return None
    if (trainer := trainer_of(run_dir)) is not None:
        return f"is being trained by {trainer}, so it has no {RESULT} until that ends", "use it then"
    if (run_dir / PREVIOUS_RESULT).is_file():
        return ("was stopped while being trained again (bench run --force)",
                "finish it by rerunning that command without --force, which resumes it; its earlier result is "
                f"{run_dir / PREVIOUS_RESULT}")
    if (run_dir / CHECKPOINT).is_file():
        return (f"has not finished (a checkpoint, no {RESULT})",
                "finish it first by rerunning its bench run command, which resumes it")
    return None


def is_done(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete result, so that a sweep skips it (a file that is not a result is the
    run's to report when it is trained: not done)."""
    try:
        return existing_result(run_dir) is not None
    except UserError:
        return False
