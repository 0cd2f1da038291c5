"""``bench sweep``: a grid of runs (methods x datasets x seeds), one after another.

Every config is resolved before anything runs, so a typo stops the sweep at once. Complete runs
with the same resolved config are skipped (``train_run`` returns them); a run that fails is
recorded as failed (``results.failed_result``, with its error and traceback) and the sweep goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from benchmark.config import Config, from_options, from_shipped_file, load_config
from benchmark.results import failed_result, failure_line, is_done, record_failure
from benchmark.task import check_buildable
from benchmark.train import RunOutcome, train_run
from methods import list_methods
from vtfpar.data import check_root
from vtfpar.errors import UserError


def parse_list(text: str, option: str, cast=str, example: str = "0,1,2") -> list:
    """``a,b,c`` -> items; ``option`` names the flag in the error. An empty item (``0,,1``, ``0,1,``) is
    refused rather than skipped: it is most often a value left out."""
    parts = [s.strip() for s in text.split(",")]
    if any(parts) and not all(parts):
        raise UserError(f"{option} {text!r}: an empty item between commas; give a comma-separated list such as "
                        f"{example}")
    try:
        items = [cast(s) for s in parts if s]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected a comma-separated list such as {example}") from None
    if not items:
        raise UserError(f"{option} is empty: give at least one value")
    return items


AXES = {"methods": ("run.method", "all"), "datasets": ("run.dataset", "synthetic"), "seeds": ("run.seed", "0")}


def grid_axes(methods: str | None, datasets: str | None, seeds: str | None,
              config: str | None) -> tuple[str, str, str]:
    """The grid's ``--methods``, ``--datasets`` and ``--seeds``: each as given, else the one value a config file of
    the user's sets for it (``[run] dataset = "mars"`` sweeps mars, as it runs mars for ``bench run``), else the
    sweep's default (every method, synthetic, seed 0)."""
    given = {"methods": methods, "datasets": datasets, "seeds": seeds}
    if all(v is not None for v in given.values()):
        return methods, datasets, seeds
    base = load_config(config)  # the shipped file's run.method is bench run's default, not a grid's
    out = []
    for axis, (key, default) in AXES.items():
        origin = base.origins.get(key, "")
        in_users_file = origin and not from_shipped_file(origin)
        value = getattr(base.run, key.split(".")[1])
        out.append(given[axis] if given[axis] is not None else str(value) if in_users_file else default)
    return tuple(out)


def plan(methods: str | None, datasets: str | None, seeds: str | None, out: str | None, sets: list[str] | None,
         config: str | None, check_roots: bool = True) -> list[Config]:
    """Every config of the grid, validated (``methods`` may be ``all``; an axis not given is ``grid_axes``'s).
    With ``check_roots``, the root of every
    dataset a run still to do reads from disk must be a folder here, and so must a checkpoint file its
    ``model.pretrained`` names; without it (a remote Ray cluster, whose nodes hold the data) a root must at least
    be given, as no node could read an empty one. Runs already complete need no data. Every run still to do is
    checked as ``bench run`` checks it before training (``check_buildable``: backbone, image size, weights,
    each method's settings against the backbone)."""
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        flag = {"run.method": "--methods", "run.dataset": "--datasets", "run.seed": "--seeds"}.get(key)
        if flag:
            raise UserError(f"--set {item.strip()}: a sweep's {key.split('.')[1]}s are its {flag}; drop the --set")
    methods, datasets, seeds = grid_axes(methods, datasets, seeds, config)
    names = list_methods() if methods == "all" else parse_list(methods, "--methods", example="frozen,lora")
    seed_list = parse_list(seeds, "--seeds", int)
    dataset_list = parse_list(datasets, "--datasets", example="mars,duke")

    def config_of(method: str, dataset: str, seed: int) -> Config:
        overrides, flags = from_options({"--methods": ("run.method", method), "--datasets": ("run.dataset", dataset),
                                         "--seeds": ("run.seed", seed), "--out": ("run.out", out)})
        return load_config(config, overrides, sets, flags)

    grid = [config_of(m, d, s) for d in dataset_list for m in names for s in seed_list]
    to_do = [cfg for cfg in grid if not is_done(Path(cfg.run.out) / cfg.run_id())]
    for dataset, root in dict.fromkeys((cfg.run.dataset, cfg.data.root) for cfg in to_do):
        if check_roots or not root:
            check_root(dataset, root, root_hint(dataset, len(dataset_list)))
    check_buildable(to_do, files=check_roots)
    unique = {cfg.run_id(): cfg for cfg in reversed(grid)}  # a run named twice (--seeds 0,0) runs once
    return [cfg for cfg in grid if unique.get(cfg.run_id()) is cfg]


def report_dir(runs: Path) -> Path:
    """Where a sweep over ``runs`` writes its report: beside a folder named ``runs`` (``results/runs`` ->
    ``results/report``, ``exp1/runs`` -> ``exp1/report``), else ``<runs>_report`` beside it, so that sibling
    sweeps (``--out a/lr1``, ``--out a/lr2``) keep a report each. ``--out .`` is named by the folder it means."""
    if runs.name in ("", ".", ".."):
        runs = Path(os.path.abspath(runs))
    if runs.parent == runs:  # the file system's root: nowhere beside it
        return runs / "report"
    return runs.parent / ("report" if runs.name == "runs" else f"{runs.name}_report")


def root_hint(dataset: str, datasets: int) -> str:
    """How to give ``dataset``'s root: ``--set data.root`` gives one root to every dataset of the sweep, so with
    several the root goes in a config file of the user's, per dataset."""
    in_file = (f"root = \"DIR\" under [datasets.{dataset}.data] in your config file (--config FILE or ./bench.toml, "
               "read over the shipped one)")
    if datasets > 1:
        return f"{dataset}: set its {in_file}"
    return f"{dataset}: pass an existing folder with --set data.root=DIR, or set its {in_file}"


def run_grid(grid: list[Config], *, progress: bool, log: Callable = print,
             announce: Callable[[int, Config], None] = lambda i, cfg: None,
             finished: Callable[[Config, RunOutcome], None] = lambda cfg, outcome: None) -> list[tuple[str, str]]:
    """Run ``grid`` in order (``finished`` is told of each run that completes, now or before); returns
    ``(run_id, error)`` of the runs that failed."""
    failed = []
    for i, cfg in enumerate(grid, 1):
        announce(i, cfg)
        try:
            outcome = train_run(cfg, progress=progress, wait=True, log=log)
        except Exception as exc:  # noqa: BLE001 - record (UserError included) and continue
            run_dir = Path(cfg.run.out) / cfg.run_id()
            if record_failure(run_dir, failed_result(cfg, run_dir.name, exc)):
                failed.append((run_dir.name, failure_line(exc)))
            else:
                log(f"run {run_dir.name}: {exc} (another attempt had completed it: its result is kept)")
        else:
            finished(cfg, outcome)
    return failed
