"""The ``bench`` command line.

Every user-fixable problem (``UserError``) is printed as one line on stderr with exit code 2; no
traceback, and nothing half-written (all run files are written atomically).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmark.memory import ALLOCATION_ERRORS, memory_ceiling, out_of_memory, out_of_memory_message
from benchmark.signals import CommandStopped, Terminated, stop_on_signals
from vtfpar.errors import UserError, file_problem, first_few, one_line, why_missing

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="VTFPAR++ and PEFT methods for video pedestrian attribute recognition.")
# Logs and pipes get each line whole (`grep '^epoch'` finds it, a suggested command stays one piece) and tables
# 160 columns wide, rather than rich's 80-column folding.


def _tty(stream) -> bool:
    """Whether ``stream`` is a terminal; a stream the shell closed (`bench list >&-`) is None, and what would go
    there is dropped."""
    return stream is not None and stream.isatty()


console = Console(width=None if _tty(sys.stdout) else 160, soft_wrap=not _tty(sys.stdout))
err_console = Console(stderr=True, width=None if _tty(sys.stderr) else 160, soft_wrap=not _tty(sys.stderr))


def _quiet_libraries() -> None:
    # open_clip logs a warning per random init; ours says it once, clearly.
    # open_clip and huggingface_hub log every retry of a failed download; our error says it once.
    for name in ("", "huggingface_hub", "open_clip"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # torch.compile's CPU code imports torch's cpp_extension, which warns of "no CUDA runtime" wherever CUDA_HOME
    # is set on a machine without a GPU: nothing a CPU run needs.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _path(value: str | Path) -> Path:
    """A path option's or argument's value, ``~`` expanded. An empty one (an unset shell variable, ``--out "$DIR"``)
    is refused, not read as the current folder, which is what ``Path("")`` means."""
    if isinstance(value, Path):  # the default
        return value
    if not value.strip():
        raise typer.BadParameter('is empty: give a path ("." for the current folder)')
    try:  # "~/x" where the shell left it (--out=~/x, a quoted value): the home folder, not a folder named "~"
        return Path(value).expanduser()
    except RuntimeError:  # ~name of no user
        raise typer.BadParameter(f"{value}: {value.split('/')[0]} is no user's home folder") from None


MOVED_WEIGHTS_HELP = ("where the checkpoint file the run was trained from is now, if it has moved (its sha256 must "
                      "be the run's)")
EVAL_BATCH_HELP = ("clips evaluated at once (default: the run's train.eval_batch_size); memory, not results, "
                   "as each clip is scored on its own")
SET_HELP = "any bench.toml key outside \\[datasets.*] (repeatable)"  # \\[: not rich markup
CONFIG_HELP = "your config file, read over the shipped bench.toml (default: $BENCH_CONFIG, else ./bench.toml)"
_stop = {"said": False}  # whether this command has already said why it stopped


def _warn(line: str) -> None:
    """One ``warning:`` line on stderr."""
    err_console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)


def say_stopped(line: str) -> None:
    """Print the one line of a command stopped by a signal (``main`` says "stopped (interrupted)" otherwise)."""
    _stop["said"] = True
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def stopped_in_one_line():
    """A command stopped by Ctrl-C, SIGTERM or SIGHUP: its one line (a run's "stopped ...; rerun ... to resume from
    epoch N") and exit 130 / 143 / 129 (typer would otherwise turn the interrupt into a silent exit code)."""
    try:
        yield
    except CommandStopped as exc:
        say_stopped(str(exc))
        raise typer.Exit(exc.exit_code) from None


@app.command("run")
def run_cmd(
    method: str = typer.Option(None, "--method", "-m", help="tuning method (bench list)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="synthetic | mars | duke"),
    epochs: int = typer.Option(None, help="training epochs"),
    seed: int = typer.Option(None, help="random seed"),
    batch_size: int = typer.Option(None, "--batch-size", help="training batch size"),
    frames: int = typer.Option(None, help="frames per tracklet"),
    backbone: str = typer.Option(None, help="open_clip model name"),
    pretrained: str = typer.Option(None, help="open_clip tag, checkpoint file, vtfpar-synthetic (the embedded tiny "
                                   "CLIP), or none (random)"),
    data_root: str = typer.Option(None, "--data-root", help="dataset root folder"),
    device: str = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    out: str = typer.Option(None, help="folder for run directories (default results/runs)"),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP, metavar="SECTION.KEY=VALUE"),
    config: str = typer.Option(None, "--config", help=CONFIG_HELP),
    force: bool = typer.Option(False, "--force", help="train again from epoch 1: a complete run, or an interrupted one "
                               "(its checkpoint removed)"),
    no_resume: bool = typer.Option(False, "--no-resume", help="ignore a checkpoint of an interrupted run"),
    wait: bool = typer.Option(False, "--wait", help="if another process is training this run, wait for it"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="progress bar (default: on a terminal)"),
):
    """Train one method on one dataset, evaluate it, and write results/runs/<run-id>/result.json."""
    from benchmark.config import from_options, load_config
    from benchmark.distributed import ranks_from_env
    from benchmark.train import train_run
    from vtfpar.metrics import HEADLINE_METRICS

    overrides, flags = from_options({
        "--method": ("run.method", method), "--dataset": ("run.dataset", dataset), "--seed": ("run.seed", seed),
        "--device": ("run.device", device), "--out": ("run.out", out),
        "--backbone": ("model.backbone", backbone), "--pretrained": ("model.pretrained", pretrained),
        "--frames": ("data.frames", frames), "--data-root": ("data.root", data_root),
        "--epochs": ("train.epochs", epochs), "--batch-size": ("train.batch_size", batch_size),
    })
    cfg = load_config(config, overrides, set_, flags)
    _no_root_for_synthetic(cfg, data_root)
    show = _tty(sys.stdout) if progress is None else progress
    main_process = ranks_from_env().main  # of several started by torchrun, rank 0 speaks
    if main_process:
        console.print(f"[bold]{cfg.run.method}[/] on [bold]{cfg.run.dataset}[/] with {cfg.model.backbone} "
                      f"({cfg.model.pretrained}), seed {cfg.run.seed}, config {cfg.source}")
    with stopped_in_one_line():
        outcome = train_run(cfg, resume=not no_resume, force=force, progress=show, wait=wait,
                            log=console.print)
    result, run_dir = outcome
    if not main_process:
        return
    m, base = result["metrics"], result["baselines"]
    table = Table(title=escape(f"{result['run_id']}"))
    for col in ("", *(k if k != "f1" else "F1" for k in HEADLINE_METRICS)):
        table.add_column(col)
    table.add_row(cfg.run.method, *(f"{m[k]:.4f}" for k in HEADLINE_METRICS))
    for name, row in base.items():
        table.add_row(f"baseline: {name}", *(f"{row[k]:.4f}" for k in HEADLINE_METRICS))
    console.print(table)
    counts = result["params"]
    console.print(f"trainable parameters {counts['trainable']:,} of {counts['total']:,}"
                  + (f", {counts['method']:,} of them the method's own (besides fusion and head)" if "method" in counts
                     else ""))
    console.print(f"{'wrote' if outcome.trained else 'result in'} {run_dir / 'result.json'}")


def _no_root_for_synthetic(cfg, data_root: str | None, fmt: str | None = None) -> None:
    """``--data-root`` or ``--format`` with the generated dataset is a mistake (meant --dataset mars?), not a
    no-op."""
    if cfg.run.dataset != "synthetic":
        return
    if data_root:
        raise UserError(f"--data-root {data_root}: the synthetic dataset is generated and reads no files; give "
                        "--dataset mars or duke to use the data there, or drop --data-root")
    if fmt and fmt != "auto":
        raise UserError(f"--format {fmt}: the synthetic dataset is generated and has no annotation format; give "
                        "--dataset mars or duke to read that format, or drop --format")


@app.command("list")
def list_cmd(
    config: str = typer.Option(None, "--config", help=CONFIG_HELP),
    dataset: str = typer.Option(None, "--dataset", "-d", help="count parameters with this dataset's profile"),
    counts: bool = typer.Option(True, "--counts/--no-counts", help="build each method to count parameters"),
):
    """List the registered methods (with trainable parameters on the configured backbone) and datasets."""
    from benchmark.task import describe_methods
    from vtfpar.data import list_datasets

    rows, backbone = describe_methods(config, dataset, counts)
    table = Table(title="methods")
    for col, justify in (("method", "left"), ("trains", "left"), ("source", "left"), ("variants", "left"),
                         ("trainable params", "right"), ("method's own", "right"), ("% of total", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        n = r.get("params")
        cells = [f"{n['trainable']:,}", f"{n['method']:,}", f"{n['trainable_pct']:.2f}"] if n else ["", "", ""]
        table.add_row(r["method"], r["summary"], r["source"], ", ".join(r["variants"]), *cells)
    console.print(table)
    if backbone:
        console.print(f"parameter counts on {backbone} (weights not loaded)")
    for r in rows:
        if r.get("problem"):
            _warn(f"{r['method']} is not counted: {r['problem']}")
    console.print("datasets: " + ", ".join(list_datasets()))


@app.command("eval")
def eval_cmd(run_dir: Path = typer.Argument(..., parser=_path, help="a finished run directory"),
             data_root: str = typer.Option(None, "--data-root", help="where the dataset is now, if it has moved "
                                           "since the run (mars, duke)"),
             device: str = typer.Option(None, help="auto | cpu | cuda | cuda:N (default: the run's own)"),
             pretrained: str = typer.Option(None, "--pretrained", help=MOVED_WEIGHTS_HELP),
             batch_size: int = typer.Option(None, "--batch-size", help=EVAL_BATCH_HELP),
             progress: bool = typer.Option(None, "--progress/--no-progress",
                                           help="a progress bar over the test clips (default: on a terminal)")):
    """Reload a finished run (backbone + saved trainable weights) and evaluate it again, next to what its
    result.json records."""
    from benchmark.results import read_result
    from benchmark.task import load_run, other_test_split
    from benchmark.train import _progress, evaluate, frames_replaced, replaced_frames_said
    from vtfpar.metrics import HEADLINE_METRICS

    p = load_run(run_dir, data_root=data_root, device=device, pretrained=pretrained, batch_size=batch_size)
    result = read_result(run_dir)
    recorded = result["metrics"]  # a complete result holds all of HEADLINE_METRICS (checked on reading)
    other_split = other_test_split(p, result)  # warned of by load_run
    before = frames_replaced(p)
    with _progress(_tty(sys.stdout) if progress is None else progress) as bars:
        task = bars.add_task("evaluating", total=len(p.test_set), info=f"{p.cfg.run.dataset} test split on {p.device}")
        m = evaluate(p, done=lambda clips: bars.advance(task, clips))
    for k in HEADLINE_METRICS:
        console.print(f"{k:10s} {m[k]:.6f}   recorded {recorded[k]:.6f}")
    apart = max(abs(m[k] - recorded[k]) for k in HEADLINE_METRICS)
    why = ("the data under --data-root differs, or another device, thread count or library version rounds "
           "differently" if data_root else "another device, thread count or library version rounds differently; a "
           "difference in the data is said on stderr")
    if other_split:
        now, then = other_split
        said = (f"on a test split of {now} tracklet{'s' * (now != 1)}, not the run's {then}: not comparable with "
                "what result.json records" + (", though equal to it" if apart < 5e-7 else ""))
    else:
        said = ("the same as result.json records" if apart < 5e-7 else
                f"up to {apart:.6f} from what result.json records ({why})")
    console.print(f"evaluated on {p.device}: {said}", soft_wrap=True)
    if replaced := frames_replaced(p) - before:  # the metrics are of clips with stand-in frames: said, as training does
        err_console.print(f"warning: {replaced_frames_said(p.cfg, replaced)}", markup=False, highlight=False,
                          soft_wrap=True)


@app.command("predict")
def predict_cmd(
    run_dir: Path = typer.Argument(..., parser=_path, help="a finished run directory (results/runs/<run-id>)"),
    inputs: list[Path] = typer.Argument(..., parser=_path,
                                        help="folders of one person's frames, videos, or folders of those"),
    as_json: bool = typer.Option(False, "--json", help="print the predictions as JSON on stdout: an object for one "
                                 "video or frame folder, a list for a batch folder or several inputs"),
    csv_path: Path = typer.Option(None, "--csv", parser=_path,
                                  help="write one row per input (probabilities) to this CSV"),
    render_path: Path = typer.Option(None, "--render", parser=_path,
                                     help="write a contact sheet, .png/.jpg/.svg/.pdf (one input: "
                                          "this file; several: <stem>_<input>.<suffix> beside it)"),
    threshold: float = typer.Option(None, help="decision threshold (default: the run's train.threshold)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    pretrained: str = typer.Option(None, "--pretrained", help=MOVED_WEIGHTS_HELP),
    batch_size: int = typer.Option(None, "--batch-size", help=EVAL_BATCH_HELP),
):
    """Predict the attributes of a person in a folder of frames or a video with a trained model."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from benchmark.predict import (
        CSV_HEADER,
        Predictor,
        check_csv_target,
        check_outputs_spare_inputs,
        check_sheet_target,
        describe,
        render,
        render_target,
        render_targets,
        resolve_inputs,
    )
    from benchmark.results import RESULT
    from benchmark.task import check_run_folder
    from benchmark.writes import DISK_FULL, WriteError, check_writable

    # The run first: inputs given before it would otherwise be blamed for holding no frames.
    swapped = next((path for path in inputs if os.path.isfile(path / RESULT)), None)  # False where it may not look
    check_run_folder(run_dir, f" (the run comes first: bench predict {swapped} {run_dir} ...)" if swapped else "")
    # Every output is checked before the first prediction, so one bad option writes nothing at all.
    render_path = render_target(render_path) if render_path else None
    if csv_path:
        check_writable(csv_path, "--csv", "predictions.csv")
    paths = resolve_inputs(inputs)
    # One tracklet named (a video or a frame folder) is predicted alone: its sheet is --render itself, its JSON one
    # object, its error the command's. A batch folder is a batch whatever it holds, so its output has one shape.
    single = len(inputs) == 1 and paths == list(inputs)
    sheets = ({paths[0]: render_path} if single else render_targets(render_path, paths)) if render_path else {}
    for sheet in sheets.values():
        check_writable(sheet, "--render", "sheet.png")
    if csv_path and csv_path.resolve() in {t.resolve() for t in sheets.values()}:
        raise UserError(f"--csv {csv_path} is also --render's contact sheet; give them different names")
    check_outputs_spare_inputs([*((("--csv", csv_path),) if csv_path else ()),
                                *(("--render", sheet) for sheet in sheets.values())], paths, run_dir)
    if csv_path:  # after what names the input or the contact sheet it would replace, which says more
        check_csv_target(csv_path)
    for sheet in sheets.values():
        check_sheet_target(sheet)
    predictor = Predictor(run_dir, device, pretrained, batch_size)
    cut = predictor.cfg.train.threshold if threshold is None else threshold
    if not 0.0 < cut < 1.0:
        raise UserError(f"--threshold must be in (0, 1), got {cut}")
    failed, finished = [], []
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[name]}"),
                  console=err_console, disable=len(paths) < 2 or not _tty(sys.stderr), transient=True) as bar, \
            stopped_in_one_line():
        task = bar.add_task("", total=len(paths), name="")

        def done(path, prediction, error):
            bar.update(task, advance=1, name=path.name)
            finished.append(path)
            if error:
                failed.append(path)
                err_console.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)

        # One tracklet: its error is the command's (exit 2, nothing written); a batch carries on past failures.
        try:
            predictions = [predictor.predict(paths[0])] if single else predictor.predict_all(paths, done)
        except (KeyboardInterrupt, Terminated) as exc:  # what was predicted is in memory only: say it is not kept
            outputs = [f"{option} {path}" for option, path in (("--csv", csv_path), ("--render", render_path)) if path]
            lost = f"; {' and '.join(outputs)} not written" if outputs else ""
            raise CommandStopped(exc, f" after {len(finished)} of {len(paths)} inputs{lost}: rerun the same command "
                                      "to predict them all") from None
    described = [describe(p, predictor.attributes, cut) for p in predictions]
    written = []
    if csv_path and not predictions:
        err_console.print(f"no input could be predicted: --csv {csv_path} was not written")
    elif csv_path:
        import csv
        import io

        from benchmark.writes import atomic_write_text

        names, text = predictor.attributes.names, io.StringIO()
        rows = [[CSV_HEADER, *names],
                *([d["input"], *(f"{d['probabilities'][n]:.6f}" for n in names)] for d in described)]
        csv.writer(text, lineterminator="\n").writerows(rows)
        atomic_write_text(csv_path, text.getvalue())
        written.append(str(csv_path))
    if as_json:
        console.out(json.dumps(described[0] if single else described, indent=2),
                    highlight=False)
    else:
        for d in described:
            _render_prediction(d)
    for p in predictions if render_path else ():  # after the predictions are shown: a sheet that fails loses none
        try:
            written.append(str(render(p, predictor.attributes, cut, sheets[Path(p.input)])))
        except WriteError as exc:
            if not written:
                raise
            fix = "free space there" if exc.errno in DISK_FULL else "mend that"
            raise UserError(f"{exc.what}: {_listed(written)} {'was' if len(written) == 1 else 'were'} written before "
                            f"it and {'stays' if len(written) == 1 else 'stay'}; {fix} and rerun the same command (it "
                            "writes them all again)") from None
    if written and not as_json:
        console.print(f"wrote {_listed(written)}", markup=False, highlight=False, soft_wrap=True)
    if failed:
        err_console.print(f"{len(failed)} of {len(paths)} inputs failed")
        raise SystemExit(1)


def _listed(written: list[str]) -> str:
    """Files predict wrote, for one line: all of them up to 6, else the first 5 and how many more."""
    return ", ".join(written if len(written) <= 6 else [*written[:5], f"and {len(written) - 5} more contact sheets"])


def _render_prediction(d: dict) -> None:
    used = d["frames_used"]
    frames = (f"frames {used[0]}-{used[-1]}: {d['clips']} clips averaged" if d["clips"] > 1
              else f"frames {', '.join(map(str, used))}")
    table = Table(title=escape(f"{d['input']} ({frames})"))  # a path, not markup
    for col, justify in (("attribute", "left"), ("prediction", "left"), ("probability", "right")):
        table.add_column(col, justify=justify)
    for g in d["groups"]:
        if g["kind"] == "binary":
            table.add_row(g["attribute"], "[bold]yes[/]" if g["predicted"] else "no", f"{g['probability']:.3f}")
        else:
            table.add_row(g["group"], f"[bold]{g['class']}[/]", f"{g['probability']:.3f}")
    console.print(table)


@app.command("report")
def report_cmd(
    runs: Path = typer.Option(None, "--runs", parser=_path, help="folder of run directories (default: the run.out "
                              "of your config file, where bench run puts them; else results/runs)"),
    out: Path = typer.Option(Path("results/report"), "--out", parser=_path, help="where tables and charts go"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="only this dataset"),
    method: str = typer.Option(None, "--method", "-m", help="only this method"),
    config: str = typer.Option(None, "--config", help=CONFIG_HELP + "; read for run.out where --runs is not given"),
):
    """Tables (Markdown, CSV, LaTeX) and charts (PNG, SVG) from every run's result.json."""
    build_report(runs, out, dataset, method, config)


def build_report(runs: Path | None, out: Path, dataset: str | None = None, method: str | None = None,
                 config: str | None = None) -> None:
    """``bench report``'s work, callable with plain values (``bench sweep`` ends with it): ``runs`` None reads
    ``run.out`` of ``config`` (with ``dataset``'s profile)."""
    from benchmark.config import load_config
    from benchmark.report import load_runs, write_report
    from benchmark.results import RESULT
    from benchmark.sweep import report_dir
    from benchmark.writes import check_writable_folder, kept_only_if_used
    from methods import list_methods
    from vtfpar.data import list_datasets

    if runs is not None and config is not None:  # not read: a --config given for something else would be ignored
        raise UserError("--config is read only for run.out, where --runs is not given: drop --config, or --runs")
    if runs is None:  # where bench run (and bench sweep) put the runs: run.out, with --dataset's profile
        known = dataset in list_datasets()
        runs = Path(load_config(config, {"run": {"dataset": dataset}} if known else None).run.out)
    if not runs.is_dir():
        if runs.exists():
            raise UserError(f"runs folder is a file, not a folder: {runs} (pass --runs the folder that holds the run "
                            "folders)")
        if os.path.islink(runs):  # a link to nothing, or links in a loop: which, said
            raise UserError(f"runs folder {runs}: {why_missing(runs, 'folder')} (pass --runs DIR)")
        raise UserError(f"runs folder not found: {runs} (run 'bench run' first or pass --runs DIR)")
    os.scandir(runs).close()  # a folder this user may not open: the refusal names it, not a file in it
    if (runs / RESULT).is_file():
        raise UserError(f"--runs {runs} is one run's folder; give the folder that holds the run folders "
                        f"(--runs {runs.parent})")
    target, source = out.resolve(), runs.resolve()
    inside = next((p for p in (target, *target.parents) if (p / RESULT).is_file()), None)
    if inside is not None:
        raise UserError(f"--out {out} is inside the run folder {inside}; write the report elsewhere")
    # its folders would be read as runs next time (where a sweep over the file system's root puts its report aside)
    if source in (target, *target.parents) and target != report_dir(runs).resolve():
        raise UserError(f"--out {out} is {'' if source == target else 'inside '}the runs folder {runs}, among the run "
                        f"folders; write the report elsewhere (such as {report_dir(runs)})")
    with kept_only_if_used(out):  # an --out it cannot write in is the one line, before the runs it would skip
        check_writable_folder(out, "choose another --out")
        loaded = load_runs(runs, dataset, method)
        if loaded.table.empty:  # a misspelt filter is the one line, not the runs it passed over
            for flag, given, known in (("--dataset", dataset, list_datasets()), ("--method", method, list_methods())):
                if given and given not in known:  # a name no run can have, rather than runs that are not there yet
                    raise UserError(f"{flag} {given}: no such {flag[2:]}; choose one of {', '.join(known)}")
        for path, why in loaded.problems:
            err_console.print(f"skipped {path}: {why}", markup=False, highlight=False, soft_wrap=True)
        for path, what in loaded.warnings:
            _warn(f"{path}: {what}")
        if loaded.table.empty:
            wanted = " and ".join(f"{k}={v}" for k, v in (("dataset", dataset), ("method", method)) if v)
            raise UserError(f"no complete runs in {runs}" + (f" for {wanted}" if wanted else ""))
    with stopped_in_one_line():  # stopped while it is built: the report in --out is the previous one
        written, shown = write_report(loaded, out, _warn)
    _render_report(written, shown, len(loaded.table), out)


def _counted(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``: a count with its noun in the number it takes."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _render_report(written, shown, runs: int, out: Path) -> None:
    from benchmark.report import SCORES_NOTE

    keep = ("method", "seeds", "F1 (%)", "mA (%)", "trainable params", "train mem (MiB)", "infer GFLOPs/clip",
            "infer ms/clip")  # the terminal gets the key columns; the files have all of them
    for title, (head, rows) in shown.items():
        idx = [head.index(k) for k in keep]
        table = Table(title=title)
        for i in idx:
            table.add_column(head[i], overflow="fold")
        for r in rows:
            table.add_row(*(r[i] for i in idx))
        console.print(table)
    if shown:
        console.print(f"{SCORES_NOTE}.", style="dim", highlight=False)
    console.print(f"{_counted(runs, 'run')}, wrote {_counted(len(written), 'file')} under {out}:", markup=False,
                  highlight=False)
    for p in written:
        console.print(f"  {p}", highlight=False)


SWEEP_HELP = ("Run a grid of methods x datasets x seeds, then the report.\n\nComplete runs with the same resolved "
              "config are skipped; a failed run is recorded as failed with its error and the sweep continues (exit "
              "code 1 at the end if any failed). --engine ray runs each run as a Ray task (a local instance, or "
              "--address of a cluster); results land in --out on this machine either way.")


@app.command("sweep", help=SWEEP_HELP)
def sweep_cmd(
    methods_: list[str] = typer.Option(None, "--methods", help="comma-separated methods, or all; repeatable "
                                       "(default: all, or the run.method your config file sets)"),
    datasets: list[str] = typer.Option(None, "--datasets", help="comma-separated datasets; repeatable (default: "
                                       "synthetic, or the run.dataset your config file sets)"),
    seeds: list[str] = typer.Option(None, "--seeds", help="comma-separated seeds, e.g. 0,1,2; repeatable (default: "
                                    "0, or the run.seed your config file sets)"),
    out: str = typer.Option(None, help="folder for run directories (default results/runs)"),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP, metavar="SECTION.KEY=VALUE"),
    config: str = typer.Option(None, "--config", help=CONFIG_HELP),
    report: bool = typer.Option(True, "--report/--no-report", help="write the report at the end"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="progress bars"),
    engine: str = typer.Option("local", "--engine", help="local (one run after another) | ray (runs as Ray tasks)"),
    address: str = typer.Option(None, "--address", help="ray: auto or HOST:PORT of a running cluster "
                                "(default: $RAY_ADDRESS where set, else start a local instance)"),
    gpus_per_run: float = typer.Option(None, "--gpus-per-run", help="ray: GPUs per run, at most 1 (default 1 "
                                       "if the cluster has GPUs, else 0: CPUs)"),
    cpus_per_run: float = typer.Option(None, "--cpus-per-run", help="ray: CPUs per run (also its torch threads; "
                                       "default 1)"),
):
    """Run a grid of methods x datasets x seeds, then the report (``SWEEP_HELP``)."""
    from benchmark.distributed import ranks_from_env
    from benchmark.results import check_runs_folder
    from benchmark.sweep import plan, report_dir, run_grid
    from benchmark.writes import check_name_lengths, check_writable_folder

    if engine not in ("local", "ray"):
        raise UserError(f"--engine {engine!r}: choose local or ray")
    for flag, value in (("--gpus-per-run", gpus_per_run), ("--cpus-per-run", cpus_per_run)):
        if value is not None and not (math.isfinite(value) and value >= (0 if flag == "--gpus-per-run" else 0.001)):
            bound = ">= 0" if flag == "--gpus-per-run" else "> 0"
            raise UserError(f"{flag} {value:g}: must be a finite number {bound}")
    if engine == "local" and (address or gpus_per_run is not None or cpus_per_run is not None):
        raise UserError("--address, --gpus-per-run and --cpus-per-run apply to --engine ray only; add --engine ray "
                        "or drop them")
    if gpus_per_run is not None and (gpus_per_run > 1 or 0 < gpus_per_run < 1e-4):
        raise UserError(f"--gpus-per-run {gpus_per_run:g}: a run trains on one GPU, or on a share of one of at least "
                        "0.0001 (Ray's finest); give 0 to 1, and train one run on several GPUs with torchrun "
                        "(README, Scaling out)")
    world = os.environ.get("WORLD_SIZE", "").strip()  # said before the rendezvous variables are checked
    if (world.isascii() and world.isdigit() and int(world) > 1) or ranks_from_env().distributed:
        raise UserError("bench sweep runs in one process, which starts its runs: start it without torchrun (a run of "
                        "several processes is torchrun ... bench run)")
    given, env = "--address", os.environ.get("RAY_ADDRESS") or None
    if engine == "ray" and env and (not address or (address == "auto" and env != "auto")):
        # as `ray job submit` gives it; ray.init joins it for "auto" too, so that is the address checked and named
        given = "$RAY_ADDRESS" if not address else "$RAY_ADDRESS (which Ray joins for --address auto)"
        address = env
    # A remote Ray cluster's nodes hold the data, perhaps at paths this machine lacks: its runs check their roots.
    # a repeated option adds to the list (--seeds 0 --seeds 1 is --seeds 0,1), as a repeated --set does
    methods_, datasets, seeds = (",".join(given) if given else None for given in (methods_, datasets, seeds))
    grid = plan(methods_, datasets, seeds, out, set_, config, check_roots=engine == "local" or not address)
    runs_dir = Path(grid[0].run.out)
    check_writable_folder(runs_dir, "choose another --out (run.out)")  # before any run starts
    check_runs_folder(runs_dir, "the grid")
    if report:  # its folder is named after --out's: a name too long, or a file in its way, is found now
        folder = report_dir(runs_dir)
        check_name_lengths(folder, "the report folder of --out")
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise UserError(f"{folder}, the folder the sweep writes its report in (named after --out), is a file: "
                            "move it away, choose another --out, or add --no-report")
    show = _tty(sys.stdout) if progress is None else progress
    if engine == "ray":
        from benchmark.ray_engine import import_ray

        import_ray()  # one line saying how to install it, before anything starts
        failed = _sweep_ray(grid, address, gpus_per_run, 1.0 if cpus_per_run is None else cpus_per_run, show, given)
    else:
        trained = []

        def announce(i, cfg):
            console.rule(f"[{i}/{len(grid)}] {cfg.run.dataset} {cfg.run.method} seed {cfg.run.seed}")

        def finished(cfg, outcome):
            result, run_dir = outcome
            trained.append(outcome.trained)
            m = result["metrics"]
            console.print(f"{cfg.run.method} seed {cfg.run.seed}: F1 {m['f1']:.4f}, mA {m['mA']:.4f}; "
                          f"{'wrote' if outcome.trained else 'result in'} {run_dir / 'result.json'}",
                          markup=False, highlight=False, soft_wrap=True)

        with stopped_in_one_line():
            failed = run_grid(grid, progress=show, log=console.print, announce=announce, finished=finished)
        console.rule()
        # (already complete: found so, or completed by another attempt while this one failed)
        console.print(f"{len(grid)} run{'s' if len(grid) != 1 else ''}: {sum(trained)} trained now, "
                      f"{len(grid) - sum(trained) - len(failed)} already complete, {len(failed)} failed")
    for run_id, error in failed if engine == "local" else ():  # Ray's progress said each as it failed
        err_console.print(f"failed: {run_id}: {error}", markup=False, highlight=False, soft_wrap=True)
    if report and len(failed) < len(grid):  # a report of the runs that completed (now or before)
        build_report(Path(grid[0].run.out), report_dir(Path(grid[0].run.out)))
    if failed:
        err_console.print(f"{len(failed)} of {len(grid)} runs failed: {', '.join(r for r, _ in failed)}",
                          soft_wrap=True)
        raise SystemExit(1)


def _sweep_ray(grid, address, gpus_per_run, cpus_per_run, show, given="--address") -> list[tuple[str, str]]:
    """The grid on Ray with a progress bar over runs and one line per finished run; ``given``: where ``address``
    came from (``--address`` or ``$RAY_ADDRESS``), for its errors."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from benchmark.ray_engine import run_grid_ray

    t0 = time.monotonic()
    bar = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn(), console=console, disable=not show)
    state = {"task": None}

    def on_skip(ids):
        for run_id in ids:
            console.print(f"skipped (complete): {run_id}", markup=False, highlight=False)
        console.print(f"{len(grid) - len(ids)} of {len(grid)} runs to train on Ray", highlight=False)
        state["task"] = bar.add_task("", total=len(grid) - len(ids))

    def on_finish(finished, counts):
        bar.update(state["task"], advance=1, description=f"done {counts['done']} · running {counts['running']} · "
                   f"queued {counts['queued']} · failed {counts['failed']}")
        minutes = (time.monotonic() - t0) / 60
        if finished.ok:
            r = finished.result
            where = r.get("worker", {})
            m = r["metrics"]  # in the local engine's words and units
            console.print(f"done: {finished.run_id}  F1 {m['f1']:.4f}, mA {m['mA']:.4f}  on {where.get('host')} "
                          f"({where.get('device')})  at {minutes:.1f} min", markup=False, highlight=False)
        else:
            err_console.print(f"failed: {finished.run_id}: {finished.error}", markup=False, highlight=False,
                              soft_wrap=True)

    with bar:
        try:
            return run_grid_ray(grid, address=address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run,
                                on_finish=on_finish, on_skip=on_skip, given=given)
        except (KeyboardInterrupt, Terminated) as exc:
            how, code = (exc.how, 128 + exc.signum) if isinstance(exc, Terminated) else ("interrupted", 130)
            lost = getattr(exc, "lost", [])  # finished runs not written (keep_finished); None: not known
            if lost is None:
                kept = "finished runs kept, except those not yet written: they train again"
            elif lost:
                kept = f"finished runs kept, but {', '.join(lost)} could not be written into {grid[0].run.out} and " \
                       "train again"
            else:
                kept = "finished runs kept"
            say_stopped(f"stopped ({how}): unfinished runs cancelled, {kept}; rerun the same command to continue")
            raise typer.Exit(code) from None


data_app = typer.Typer(no_args_is_help=True, help="Dataset tools.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="mars | duke | synthetic"),
    data_root: str = typer.Option(None, "--data-root", help="dataset root folder"),
    fmt: str = typer.Option(None, "--format", help="auto | mars2019 | release_csv | tracklet_csv"),
    verify_images: bool = typer.Option(False, "--verify-images", help="decode every frame and list unreadable ones"),
    config: str = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option(None, "--set", help=SET_HELP, metavar="SECTION.KEY=VALUE"),
):
    """Load a dataset as a run would and print a summary (or what is wrong with it)."""
    from benchmark.config import from_options, load_config
    from benchmark.datacheck import check_dataset, empty_splits

    overrides, flags = from_options({"--dataset": ("run.dataset", dataset), "--data-root": ("data.root", data_root),
                                     "--format": ("data.format", fmt)})
    cfg = load_config(config, overrides, set_, flags)
    _no_root_for_synthetic(cfg, data_root, fmt)
    summary = check_dataset(cfg, verify_images)
    table = Table(title=escape(summary.title))
    for col in ("split", "tracklets", "ids", "frames", "frames/tracklet (min / median / max)"):
        table.add_column(col)
    for row in summary.splits:
        spread = row["frames_per_tracklet"]
        table.add_row(row["split"], str(row["tracklets"]), "-" if row["ids"] is None else str(row["ids"]),
                      str(row["frames"]), f"{cfg.data.frames} (generated)" if spread is None
                      else " / ".join(map(str, spread)))
    console.print(table)
    ratios = Table(title="positive ratio per attribute")
    for col in ("attribute", "train", "test"):
        ratios.add_column(col)
    for name, *values in summary.positive_ratio:
        ratios.add_row(name, *("-" if v is None else f"{v:.3f}" for v in values))
    console.print(ratios)
    for line in summary.warnings:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    for p in summary.unreadable:
        err_console.print(p, markup=False, highlight=False, soft_wrap=True)
    if summary.unreadable_tracklets:
        raise UserError(f"{len(summary.unreadable_tracklets)} tracklet(s) have no readable frame "
                        f"({first_few(summary.unreadable_tracklets)}): a run stops on them; replace their files or "
                        f"remove the tracklets ({len(summary.unreadable)} unreadable frame(s) listed above)")
    if summary.unreadable:
        raise UserError(f"{len(summary.unreadable)} unreadable frame(s) (listed above); runs replace them by a "
                        "neighbour")
    # the same refusal a run would meet, said by the command that is meant to find it
    if refused := empty_splits(cfg.run.dataset, {row["split"]: row["tracklets"] for row in summary.splits},
                               summary.format):
        raise refused
    if verify_images:  # the check ran, and found nothing: said, so a clean tree reads otherwise than an unchecked one
        console.print("--verify-images: nothing to decode, the clips are drawn" if summary.frames_verified is None
                      else f"--verify-images: all {summary.frames_verified:,} frames decode", markup=False,
                      highlight=False, soft_wrap=True)


@data_app.command("export")
def data_export_cmd(
    dataset: str = typer.Option("synthetic", "--dataset", "-d", help="synthetic (the only generated dataset)"),
    split: str = typer.Option("test", help="train | test"),
    count: int = typer.Option(4, help="tracklets to write"),
    out: Path = typer.Option(Path("results/export"), parser=_path, help="folder to write into"),
    video: bool = typer.Option(False, "--video", help="also write each tracklet as an MP4 video"),
    seed: int = typer.Option(0, help="the run seed whose clips to write"),
    frames: int = typer.Option(6, help="frames per tracklet"),
):
    """Write synthetic tracklets as PNG frame folders (and videos) with their true labels (labels.csv)."""
    from benchmark.export import export_synthetic

    if dataset != "synthetic":
        raise UserError(f"--dataset {dataset}: only synthetic tracklets can be exported (mars and duke are on disk "
                        "already)")
    with stopped_in_one_line():
        folders = export_synthetic(out, split=split, count=count, frames=frames, seed=seed, video=video)
    console.print(f"wrote {len(folders)} tracklets{' (frames and videos)' if video else ''} and labels.csv under "
                  f"{out}")


@app.command("perf")
def perf_cmd(
    backbone: str = typer.Option("clip-tiny", help="open_clip model (random weights)"),
    profile: str = typer.Option(None, help="whose settings to use: synthetic (default for clip-tiny), mars or duke"),
    frames: int = typer.Option(6, help="frames per clip"),
    batch: int = typer.Option(4, help="clips per batch"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    amp: str = typer.Option("auto", help="auto (bf16 on CUDA) | bf16 | fp16 | off"),
    warmup: int = typer.Option(2, help="untimed iterations"),
    iters: int = typer.Option(5, help="timed iterations"),
    methods_: str = typer.Option("all", "--methods",
                                 help="comma-separated methods or method+variant rows (side_tuning+recompute), or all"),
    out: Path = typer.Option(Path("results/perf"), parser=_path, help="folder for the JSON and Markdown"),
    loader: bool = typer.Option(False, "--loader/--no-loader",
                                help="also measure the real-format loader (JPEG tracklets) per worker"),
    annotation: Path = typer.Option(None, parser=_path, help="MARS-Attribute CSV to build the loader's tree from "
                                    "(default: shared/fixtures/mars_attributes.csv beside this checkout)"),
    top_ops: int = typer.Option(0, "--top-ops", help="also profile each row: its N most expensive operators "
                                "(CPU) or kernels (CUDA) by self time, per step and per inference"),
    compile_mode: str = typer.Option("default", "--compile-mode",
                                     help="torch.compile's mode with --compile: default, reduce-overhead (adds CUDA "
                                     "graphs on a GPU), max-autotune, max-autotune-no-cudagraphs"),
    compiled: bool = typer.Option(False, "--compile/--no-compile",
                                  help="compile each row's model as train.compile does (time only; the first, "
                                  "compiling call is reported apart)"),
    wait: bool = typer.Option(False, "--wait", help="if another bench perf measures on this device or writes this "
                              "table, wait for it to end instead of stopping"),
):
    """Each method's training step, inference and memory against a frozen CLIP forward, as ratios."""
    from benchmark.perf import check_rows, default_profile, markdown, measuring, run_perf, save, select_rows, stem_of
    from benchmark.results import check_not_among_runs
    from benchmark.task import resolve_device
    from benchmark.writes import check_writable_folder, kept_only_if_used

    for option, value, least in (("--iters", iters, 1), ("--warmup", warmup, 0), ("--batch", batch, 2),
                                 ("--frames", frames, 1), ("--top-ops", top_ops, 0)):
        if value < least:
            raise UserError(f"{option} must be at least {least}, got {value}")
    from benchmark.loader_bench import DEFAULT_ANNOTATION
    from vtfpar.backbone import input_size
    from vtfpar.data import list_datasets

    # Every option is checked before the first measurement, which may take minutes.
    rows = select_rows(methods_)
    from benchmark.memory import check_batch_fits

    # an unknown backbone says so; a batch too large to hold (a typo, or a number past what torch can size) too
    check_batch_fits(batch, frames, input_size(backbone), "--batch", fix="lower --frames or --batch")
    amps = ("auto", "bf16", "fp16", "off")
    if amp not in amps:
        raise UserError(f"--amp {amp}: choose one of {', '.join(amps)}")
    profile = default_profile(backbone) if profile is None else profile
    if profile not in list_datasets():
        raise UserError(f"--profile {profile!r}: choose one of {', '.join(list_datasets())}")
    from benchmark.task import COMPILE_MODES

    if compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile-mode {compile_mode}: choose one of {', '.join(COMPILE_MODES)}")
    if compile_mode != "default" and not compiled:
        raise UserError(f"--compile-mode {compile_mode} is --compile's: add --compile, or drop --compile-mode")
    if annotation is not None and not loader:
        raise UserError("--annotation is the loader measurement's: add --loader, or drop --annotation")
    if loader and not (given := annotation or DEFAULT_ANNOTATION).is_file():
        raise UserError(f"--annotation {given}: {file_problem(given)}; give a MARS-Attribute CSV "
                        "(mars_attributes.csv of github.com/VisualComputingInstitute/MARS-Attribute)")
    if loader:
        from benchmark.loader_bench import check_annotation

        check_annotation(annotation or DEFAULT_ANNOTATION, batch)  # its header and rows, not only that it exists
    check_not_among_runs(out, "--out", "the tables")
    with kept_only_if_used(out):  # a command refused after the folder is checked leaves no empty --out behind
        check_writable_folder(out, "choose another --out")  # before the measurements, not after
        dev = resolve_device(device, "--device")
        check_rows(rows, backbone, profile, frames)  # a row that cannot be built, named before any is measured

        command = shlex.join(["bench", "perf", *sys.argv[2:]])  # a command that reruns as written, spaces and all
        stem = stem_of({"backbone": backbone, "device": str(dev), "batch": batch, "frames": frames, "profile": profile,
                        "amp": amp, "compiled": compiled, "compile_mode": compile_mode,
                        "rows": [label for label, _, _ in rows]})
        for name in (f"{stem}{part}.{suffix}" for part in ("", ".partial") for suffix in ("json", "md")):
            if (out / name).is_dir():  # found before the measurements, not when the table is saved
                raise UserError(f"--out {out}: {name} is a folder where this table is written; move it away, or choose "
                                "another --out")

        for line in _sections_dropped(Path(f"{out / stem}.json"), loader, top_ops, warmup, iters):
            _warn(line)
        if warmup == 0:
            _warn("--warmup 0: every first iteration is timed cold (allocations, caches, lazy initialisation), which "
                  "the medians of few --iters do not hide; give --warmup 1 or more for a table to compare")

        def keep(partial: dict) -> None:  # rows so far, so a stopped run (Ctrl-C, a job's time limit) keeps them
            stem = save(out, partial, command, partial=True)
            if len(partial["methods"]) == 1:
                console.print(f"(each row is saved as it is measured, to {stem}.json and .md)")

        with measuring(out, stem, dev, wait=wait, log=console.print):
            result = run_perf(backbone, profile, frames, batch, dev, amp, warmup, iters, rows, log=console.print,
                              loader_annotation=(annotation or DEFAULT_ANNOTATION) if loader else None, top_ops=top_ops,
                              compiled=compiled, on_row=keep, compile_mode=compile_mode)
            stem = save(out, result, command)
        console.print(markdown(result), markup=False, highlight=False)
        console.print(f"wrote {stem}.json and .md")


def _sections_dropped(table: Path, loader: bool, top_ops: int, warmup: int, iters: int) -> list[str]:
    """Warnings, before measuring, that the table of the same name holds sections this run does not measure
    (--loader's real-format loader, --top-ops' operator profiles), which replacing it drops, or was timed over
    more --warmup or --iters iterations than this run times."""
    from benchmark.writes import json_from

    try:
        earlier = json_from(table.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict):
        return []
    held = {"--loader": bool(earlier.get("loader_real")) and not loader,
            "--top-ops N": not top_ops and any(isinstance(row, dict) and row.get("top_operators")
                                               for row in (earlier.get("methods") or {}).values())}
    timed = earlier.get("clip_forward") if isinstance(earlier.get("clip_forward"), dict) else {}
    fewer = [f"{flag} {timed[key]}" for flag, key, now in (("--warmup", "warmup", warmup), ("--iters", "iters", iters))
             if isinstance(timed.get(key), int) and timed[key] > now]
    return [f"{table} holds the {'real-format loader' if flag == '--loader' else 'operator profile'} section "
            f"that this run does not measure: the table is replaced without it (add {flag} to measure it again)"
            for flag, dropped in held.items() if dropped] + (
        [f"{table} was timed with {' and '.join(fewer)}, more than this run: the table is replaced by one "
         f"with fewer warm-up or timed iterations (give {' '.join(fewer)} to keep its precision, or --out another "
         "folder)"]
        if fewer else [])


@app.command("pretrain-clip")
def pretrain_clip_cmd(
    out: Path = typer.Option(None, parser=_path,
                             help="weights file (default: the embedded clip-tiny-synthetic.safetensors)"),
    seed: int = typer.Option(1000, help="seed of the pre-training draw and of the initialisation"),
    images: int = typer.Option(20000, help="distinct frame-caption pairs"),
    heldout: int = typer.Option(1000, help="held-out pairs for the zero-shot numbers"),
    epochs: int = typer.Option(24, help="passes over the pairs (a new caption each time)"),
    batch_size: int = typer.Option(256, help="pairs per contrastive batch"),
    lr: float = typer.Option(2e-3, help="peak AdamW learning rate (warm-up, then cosine)"),
    threads: int = typer.Option(2, help="torch CPU threads (fixed, so the result is reproducible)"),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="progress bars"),
):
    """Pre-train the tiny CLIP contrastively on synthetic frame-caption pairs (CPU, minutes)."""
    from benchmark.pretrain import run_pretrain
    from vtfpar.pretrain import PretrainConfig

    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    try:
        cfg = PretrainConfig(seed=seed, images=images, heldout=heldout, epochs=epochs, batch_size=batch_size, lr=lr)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    run_pretrain(cfg, out, threads, _tty(sys.stdout) if progress is None else progress, shlex.join(sys.argv[1:]),
                 console.print)


def _command_named() -> str:
    """``bench`` plus the (sub)command words of the command line that name real commands."""
    words, group = ["bench"], app
    for arg in sys.argv[1:3]:
        names = {c.name for c in group.registered_commands} | {g.name for g in group.registered_groups}
        if arg not in names:
            break
        words.append(arg)
        group = next((g.typer_instance for g in group.registered_groups if g.name == arg), None)
        if group is None:
            break
    return " ".join(words)


# What a path that the system refused means and how to fix it, for a refusal no command explains itself (a folder
# that cannot be listed, a file that cannot be read where a command only looks whether it is there).
_PATH_ERRORS = {
    errno.ENAMETOOLONG: "a name in it is longer than the file system takes; choose a shorter one",
    errno.ELOOP: "its symbolic links lead back to themselves; give another path",
    errno.EACCES: "permission denied (this user may not read or write it, or search a folder above it): fix its "
                  "permissions, or give another path",
    errno.EPERM: "operation not permitted on it for this user: fix its permissions or attributes, or give another "
                 "path",
    errno.EROFS: "it is on a read-only file system: give a path on a writable one",
}


def _usage_error_types() -> tuple[type, ...]:
    """Click's usage-error base class: typer vendors its own click, a plain click may be installed too."""
    import importlib

    types = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError, AttributeError):
            types.append(importlib.import_module(module).ClickException)
    return tuple(types)


def _ceiling_note(ceiling, exc: BaseException) -> str:
    """Where the host's ceiling came from (``benchmark.memory``), for a host allocation that failed under it."""
    if ceiling is None or type(exc).__name__ == "OutOfMemoryError":  # torch's CUDA out-of-memory: not the host's
        return ""
    return f" ({ceiling.describe()})"


def _stdout_refuses(exc: OSError) -> bool:
    """Whether ``exc`` was raised writing standard output (everything there goes through ``console``), so that an
    error without a file name is said as standard output's only when it is."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_locals.get("self") is console:
            return True
        tb = tb.tb_next
    return False


def main() -> None:
    _quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ceiling = None
    _stop["said"] = False
    try:
        with stop_on_signals(), memory_ceiling() as ceiling:
            code = app(standalone_mode=False)  # typer returns the exit code of typer.Exit (and of Ctrl-C: 130)
        if code == 130 and not _stop["said"]:  # typer turned a Ctrl-C into a bare exit code
            err_console.print("stopped (interrupted)")
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except UserError as exc:
        err_console.print(f"error: {one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except OSError as exc:
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) and _stdout_refuses(exc):
            # standard output that takes nothing more (a full disk it is redirected to): said once, and the
            # interpreter's own flush of what is left at exit goes nowhere instead of printing a second error
            with contextlib.suppress(OSError):
                err_console.print(f"error: cannot write to standard output ({exc.strerror or exc}); redirect it "
                                  "elsewhere", markup=False, highlight=False, soft_wrap=True)
            with contextlib.suppress(OSError, AttributeError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(2) from None
        why = _PATH_ERRORS.get(exc.errno)
        if why is None or exc.filename is None:
            raise
        err_console.print(f"error: {exc.filename}: {why}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except ALLOCATION_ERRORS as exc:
        if str(exc).startswith("Symlink loop from "):  # Python 3.11's Path.resolve on links that lead back
            err_console.print(f"error: {one_line(exc)}: these symbolic links lead back to themselves; give another "
                              "path", markup=False, highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        if not out_of_memory(exc, ceiling.bytes if ceiling else None):  # the ceiling is lifted by now
            raise
        err_console.print(f"error: {out_of_memory_message(exc, _command_named())}{_ceiling_note(ceiling, exc)}",
                          markup=False,
                          highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except Terminated as exc:
        err_console.print(f"stopped ({exc.how})")
        raise SystemExit(128 + exc.signum) from None
    except KeyboardInterrupt:
        err_console.print("stopped (interrupted)")
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        err_console.print("stopped")
        raise SystemExit(130) from None
    except _usage_error_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `bench` or `bench data` alone: the help was shown
            raise SystemExit(0) from None
        message, hint = " ".join(exc.format_message().split()), _sweep_hint(exc)
        if hint:  # click's guess at a similar option is beside the point then
            message = re.sub(r" \(Possible options: [^)]*\)", "", message)
        err_console.print(f"error: {message}{hint} (see {_command_named()} --help)", markup=False,
                          highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


# bench run's options that a sweep takes otherwise: a setting (--set KEY=VALUE) or an axis of its grid
_RUN_ONLY_OPTIONS = {"--epochs": "--set train.epochs=N", "--batch-size": "--set train.batch_size=N",
                     "--frames": "--set data.frames=N", "--device": "--set run.device=DEVICE",
                     "--backbone": "--set model.backbone=NAME", "--pretrained": "--set model.pretrained=TAG_OR_FILE",
                     "--data-root": "--set data.root=DIR", "--method": "--methods", "--dataset": "--datasets",
                     "--seed": "--seeds"}


def _sweep_hint(exc: Exception) -> str:
    """For ``bench sweep`` given an option of ``bench run``'s: what the sweep takes instead."""
    name = getattr(exc, "option_name", None)
    if _command_named() != "bench sweep" or name not in _RUN_ONLY_OPTIONS:
        return ""
    return f"; a sweep takes {_RUN_ONLY_OPTIONS[name]} instead"


def entry() -> None:
    """The ``bench`` command (console script and ``python -m benchmark.cli``): ``main``, then the process ends as
    soon as its work is done, with ``main``'s exit code (``benchmark.process_end``: Python's shutdown would take
    seconds more). An exit that is not a number, or an exception, takes the ordinary way out. Tests call ``main``."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is not None and type(exc.code) is not int:
            raise
        code = exc.code or 0
    from benchmark.process_end import end_process

    end_process(code)


if __name__ == "__main__":
    entry()
