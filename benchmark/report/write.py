"""Writing a report into ``--out``: built in a hidden staging folder, then moved into place with stop signals
held, so that a stopped report leaves the previous one whole; a manifest lists what each report wrote, so that
the files it no longer writes are removed and no file of the user's ever is."""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark.report.charts import chart_links, charts
from benchmark.report.notes import (
    SCORES_NOTE,
    STEP_NOTE,
    differing_note,
    flops_note,
    inference_note,
    left_out_note,
    machines_note,
    memory_note,
    mixed_counts_note,
    priors_note,
    sentence,
    unpaired_starts,
    unsure_labels_note,
)
from benchmark.report.runs import Runs
from benchmark.report.tables import (
    PRIOR_COLUMN,
    display_rows,
    latex,
    markdown,
    per_attribute_grid,
    per_attribute_spread,
    summarise,
)
from benchmark.signals import CommandStopped, Terminated, hold_signals
from benchmark.writes import (
    DISK_FULL,
    atomic_write_text,
    atomic_write_with,
    check_writable_folder,
    json_from,
    write_target,
)
from vtfpar.errors import UserError, first_few

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
        except OSError as exc:  # a chart, which matplotlib writes itself (tables fail as WriteError): disk full, quota
            fix = "free space there or choose another --out" if exc.errno in DISK_FULL else "choose another --out"
            raise UserError(f"could not write the report in {out_dir} ({exc.strerror or exc}): {_kept(out_dir)}; "
                            f"{fix}") from None
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


def _kept(out_dir: Path) -> str:
    """What a report that ends before it is moved into place leaves: the previous report, or nothing."""
    if _read_manifest(out_dir):
        return f"the report in {out_dir} is the previous one, unchanged"
    return f"nothing was written to {out_dir}"


def _kept_note(out_dir: Path) -> str:
    """The end of the line a stopped report ends with (``CommandStopped``)."""
    return f" before the report was written: {_kept(out_dir)}; rerun the same command to write it"


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
        starts, budgets = unpaired_starts(runs_here), differing_note(runs.differing.get((dataset, backbone)))
        counts, machines = mixed_counts_note(runs_here), machines_note(runs_here)
        for said in (starts, budgets, counts, machines):
            if said:
                warn(f"{title}: {said}")
        left_out = left_out_note(runs.problems, dataset, runs.method)  # the terminal has said these already
        doubts = "".join(f"{sentence(d)}.\n\n" for d in (left_out, budgets, starts, counts, machines,
                                                          unsure_labels_note(runs_here)) if d)
        notes = [SCORES_NOTE, f"memory: {memory_note(runs_here)}", flops_note(runs_here),
                 STEP_NOTE, "infer ms/clip: batch 1, each run's median timed iteration, averaged over seeds",
                 inference_note(runs_here)]
        priors = priors_note(s)
        files = {
            "summary.md": f"# {title}\n\n" + doubts + markdown(head, rows)
                          + (f"\n{priors}\n" if priors else "")
                          + "\n" + "".join(f"- {sentence(n)}.\n" for n in notes),
            "summary.csv": s.to_csv(index=False),
            "summary.tex": latex(head, rows, (f"Methods on {dataset} ({backbone}). " + ". ".join(
                sentence(n) for n in [*notes, *(d for d in (budgets, machines) if d)])
                                  + (f". {priors}" if priors else "")).replace("`", "")),  # no code quotes in TeX
            "runs.csv": runs_here.to_csv(index=False),  # the table's own runs, replaced with it
        }
        ids = runs_here["run_id"]
        pa = runs.per_attribute[runs.per_attribute["run_id"].isin(ids)]
        if not pa.empty:
            grid = per_attribute_grid(pa, runs.table, [str(m) for m in s["label"]])
            spread = per_attribute_spread(pa, runs.table, grid)
            files["per_attribute.csv"] = grid.to_csv()
            files["per_attribute_std.csv"] = spread.drop(columns=PRIOR_COLUMN, errors="ignore").to_csv()
            files["per_attribute.md"] = f"# per-attribute F1 (%), {title}\n\n" + markdown(
                ["attribute", *grid.columns],
                [[a, *(_cell(v, d) for v, d in zip(grid.loc[a], spread.loc[a], strict=True))]
                 for a in grid.index]) + "\n- mean ± sample std (n - 1) over each row's seeds.\n" + (
                f"- {PRIOR_COLUMN}: every attribute predicted present for every clip (the prior baseline), "
                "the floor a row's F1 on an attribute is read against.\n" if PRIOR_COLUMN in grid.columns else "")
        drawn = charts(s, runs, list(ids), group, title)
        files["summary.md"] += chart_links([p for p in drawn if p.suffix == ".png"])
        for name, text in files.items():
            atomic_write_text(group / name, text)
            written.append(group / name)
        written += drawn
    atomic_write_text(folder / "runs.csv", runs.table.to_csv(index=False))
    written.append(folder / "runs.csv")
    return [p.relative_to(folder).as_posix() for p in written], shown


def _cell(mean: float, std: float) -> str:
    """A per-attribute F1 in %, with its std over seeds where there are two or more: ``86.4 ± 7.4``, ``86.4``, ``-``."""
    if not np.isfinite(mean):
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if np.isfinite(std) else "")


def _read_manifest(out_dir: Path) -> list[str]:
    """The files (relative to ``out_dir``) the last report there wrote; none where it kept no manifest, or the
    manifest cannot be read: a file not surely the report's own is never removed."""
    try:
        files = json_from((out_dir / MANIFEST).read_text()).get("files")
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
    foreign = [rel for rel in staged if rel not in previous and os.path.lexists(out_dir / rel)
               and (os.path.islink(out_dir / rel) or not os.path.isdir(out_dir / rel))]  # a folder: said below
    if foreign:  # files of the user's (or of a report too old to list what it wrote): never replaced unasked
        named = first_few(foreign)
        why = (f"{MANIFEST} there does not list them as a report's" if previous else
               f"{MANIFEST} there is damaged (it lists no report's files), so they are not surely a report's"
               if os.path.lexists(out_dir / MANIFEST) else
               f"no {MANIFEST} there lists them as a report's (a report of an earlier version: remove them)")
        raise UserError(f"--out {out_dir} holds {named}, which this report would replace, and {why}: move them away "
                        "or choose another --out")
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
