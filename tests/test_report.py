"""`bench report` and `bench sweep` on real runs: files exist, numbers equal the run files."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.report import load_runs, write_report
from benchmark.report.charts import pareto_front
from benchmark.results import config_digest
from methods import list_methods
from tests.test_cli import BENCH, ROOT


@pytest.fixture(scope="module")
def runs_dir(runs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report_runs")
    for _, run_dir in runs.values():
        shutil.copytree(run_dir, folder / run_dir.name)
    (folder / "broken").mkdir()
    (folder / "broken" / "result.json").write_text("{not json")
    (folder / "deep").mkdir()
    (folder / "deep" / "result.json").write_text("[" * 100_000 + "]" * 100_000)  # deeper than json reads
    return folder


def test_report_writes_tables_and_charts_with_the_run_numbers(runs, runs_dir, tmp_path):
    loaded = load_runs(runs_dir)
    assert [p for p, _ in loaded.problems] == [str(runs_dir / name / "result.json") for name in ("broken", "deep")]
    written, _ = write_report(loaded, tmp_path)
    folder = tmp_path / "synthetic"
    for name in ("summary.md", "summary.csv", "summary.tex", "per_attribute.md", "per_attribute.csv"):
        assert (folder / name).is_file(), name
    for chart in ("f1_vs_params", "f1_vs_memory", "latency", "per_attribute_f1", "curves", "curves_by_method"):
        for ext in ("png", "svg"):
            assert (folder / f"{chart}.{ext}").stat().st_size > 1000, chart
        with Image.open(folder / f"{chart}.png") as im:
            assert im.size[0] > 400 and im.size[1] > 300
    csv = pd.read_csv(folder / "summary.csv")
    assert len(csv) == len(runs)
    for path in runs_dir.glob("synthetic_*/result.json"):
        r = json.loads(path.read_text())
        row = csv[csv["method"] == r["method"]].iloc[0]
        assert row["f1"] == r["metrics"]["f1"] and row["mA"] == r["metrics"]["mA"]  # one seed: mean = value
        assert row["grouped_f1"] == r["metrics"]["grouped"]["f1"]  # the paper code's F1, beside the instance-based
        assert row["trainable_params"] == r["params"]["trainable"]
        assert row["method_params"] == r["params"]["method"]
        assert row["gflops"] == r["flops"]["gflops_per_clip"]
        assert row["infer_ms_iqr"] == pytest.approx(1000 * r["timing"]["inference_latency"]["iqr_s"])  # the whiskers
        assert np.isnan(row["f1_std"])  # one seed has no spread, and says so: no "± 0.00"
        assert f"| {r['method']} | 1 | {100 * r['metrics']['f1']:.2f} | " in (folder / "summary.md").read_text()
    assert "deployment form" in (folder / "summary.md").read_text()
    assert "F1, Acc, Prec, Rec instance-based" in (folder / "summary.md").read_text()
    assert "| trainable params | method params |" in (folder / "summary.md").read_text()
    assert "| frozen | 1 | " in (folder / "summary.md").read_text()
    linked = re.findall(r"^!\[[^\]]+\]\(([^)]+)\)$", (folder / "summary.md").read_text().split("\n## Charts\n")[1],
                        re.M)  # every chart shown where summary.md is read, each a file beside it
    assert linked == [f"{c}.png" for c in ("f1_vs_params", "f1_vs_memory", "latency", "per_attribute_f1", "curves",
                                           "curves_by_method")] and all((folder / name).is_file() for name in linked)
    tex = (folder / "summary.tex").read_text()
    assert "\\toprule" in tex and "side\\_tuning" in tex


def _variant(source, folder, seed: int, f1: float, **changes):
    """A copy of a finished run as if trained with another seed and settings (``train.epochs=...``)."""
    r = json.loads((source / "result.json").read_text())
    r["seed"] = r["config"]["run"]["seed"] = seed
    r["metrics"]["f1"] = f1
    for key, value in changes.items():
        section, name = key.split("__")
        r["config"][section][name] = value
    r["config_sha256"] = config_digest(r["config"])  # as the run trained so records it
    r["run_id"] = f"{source.name}_variant_{seed}_{len(changes)}"
    (folder / r["run_id"]).mkdir()
    (folder / r["run_id"] / "result.json").write_text(json.dumps(r))


def test_one_seed_of_an_experiment_under_two_run_ids_is_counted_once(runs, tmp_path):
    """A run made again after its run id changed (a setting that left the id, such as the device) is the same seed
    of the same experiment: averaged twice it would weigh that seed double while the seeds column says 1."""
    source = runs["frozen"][1]
    folder = tmp_path / "runs"
    shutil.copytree(source, folder / source.name)
    r = json.loads((source / "result.json").read_text())
    r["run_id"] = "synthetic_frozen_clip-tiny_s0_0123456789"
    r["metrics"]["f1"] = 0.9
    (folder / r["run_id"]).mkdir()
    (folder / r["run_id"] / "result.json").write_text(json.dumps(r))
    _variant(source, folder, seed=1, f1=0.5)  # another seed of it still averages in
    loaded = load_runs(folder)
    assert len(loaded.table) == 2 and f"{source.name}_variant_1_0" in set(loaded.table["run_id"])
    ((skipped_path, said),) = loaded.problems  # the one read second of the two (in path order)
    skipped, kept = sorted([source.name, r["run_id"]], reverse=True)
    assert Path(skipped_path).parent.name == skipped and kept in set(loaded.table["run_id"])
    assert said == (f"run {skipped} is seed 0 of the same experiment as run {kept}, read from "
                    f"{folder / kept / 'result.json'} (counted once; remove one)")


def test_damaged_results_and_copies_of_a_run_are_skipped_and_named(runs, tmp_path):
    """Only complete, well-formed results are averaged, each run once: a copy of a run folder would
    otherwise pass for a second seed, and a NaN F1 or a missing dataset would make a row no one can read."""
    source = runs["frozen"][1]
    folder = tmp_path / "runs"
    shutil.copytree(source, folder / source.name)
    shutil.copytree(source, folder / f"0-backup-{source.name}")  # sorts first, and is still the copy
    damaged = {"no_status": lambda r: r.pop("status"), "odd_status": lambda r: r.update(status="paused"),
               "nan_f1": lambda r: r["metrics"].update(f1=float("nan")), "no_dataset": lambda r: r.update(dataset=None),
               "text_seed": lambda r: r.update(seed="0"), "f1_of_5": lambda r: r["metrics"].update(f1=5),
               "text_flops": lambda r: r.update(flops={"gflops_per_clip": "n/a"}),
               "text_loss": lambda r: r["history"][0].update(loss="n/a"),
               "list_measured_in": lambda r: r.update(measured_in=["deployment form"]),
               "huge_epoch": lambda r: r["history"][0].update(epoch=10**400),
               "huge_params": lambda r: r["params"].update(trainable=10**400),
               "edited_method": lambda r: r.update(method="lora"),  # the frozen run would be listed as LoRA
               "edited_config": lambda r: r["config"]["train"].update(threshold=0.3),  # another experiment's row
               "thinned_attributes": lambda r: r["metrics"].update(per_attribute=[]),
               "swapped_attributes": lambda r: (scores := r["metrics"]["per_attribute"]).insert(0, scores.pop(1))}
    for name, damage in damaged.items():
        r = json.loads((source / "result.json").read_text())
        damage(r)
        r["run_id"] = name
        (folder / name).mkdir()
        (folder / name / "result.json").write_text(json.dumps(r))
    loaded = load_runs(folder)
    assert list(loaded.table["run_id"]) == [source.name]
    why = {Path(p).parent.name: w for p, w in loaded.problems}
    assert why[f"0-backup-{source.name}"] == (f"a copy of run {source.name}, already read from "
                                          f"{folder / source.name / 'result.json'} (counted once)")
    assert why["no_status"] == "not a result file (ValueError: status None is neither complete nor failed)"
    assert why["odd_status"] == "not a result file (ValueError: status 'paused' is neither complete nor failed)"
    assert why["edited_method"] == ("not a result file (ValueError: its method 'lora' is not its config's "
                                    "run.method 'frozen')")
    assert why["nan_f1"] == ("not a result file (ValueError: a complete result without metrics.f1 (a fraction in "
                            "[0, 1]))")
    assert why["no_dataset"] == "not a result file (ValueError: a complete result without dataset (a name))"
    assert why["text_seed"] == "not a result file (ValueError: a complete result without seed (an integer))"
    assert why["f1_of_5"].endswith("without metrics.f1 (a fraction in [0, 1]))")
    assert why["text_flops"] == "not a result file (ValueError: flops.gflops_per_clip is 'n/a', not a finite number)"
    assert why["text_loss"] == "not a result file (ValueError: history loss is 'n/a', not a finite number)"
    assert why["list_measured_in"].endswith("measured_in is \"['deployment form']\", not a text)")
    assert why["huge_epoch"].startswith("not a result file (ValueError: history epoch '1000000000")
    assert why["huge_params"].endswith("without params.trainable (a finite number))")
    assert why["edited_config"] == (
        "run edited_config: its config is not the one run edited_config was made with (it was edited since; "
        "config_sha256 differs): restore it, or train the run again with bench run ... --force")
    n = len(json.loads((source / "result.json").read_text())["data"]["attributes"])
    assert why["thinned_attributes"] == (f"not a result file (ValueError: metrics.per_attribute names 0 attributes, "
                                         f"not the {n} of data.attributes in their order)")
    assert why["swapped_attributes"] == (f"not a result file (ValueError: metrics.per_attribute names {n} "
                                         f"attributes, not the {n} of data.attributes in their order)")
    assert len(why) == 16
    (folder / "fifo_run").mkdir()
    os.mkfifo(folder / "fifo_run" / "result.json")
    why = {Path(p).parent.name: w for p, w in load_runs(folder).problems}  # read without waiting for a writer
    assert why["fifo_run"] == "not a result file (ValueError: not a regular file)"


def test_a_dataset_name_never_leads_the_report_out_of_its_folder(runs, tmp_path):
    """The report's folder is named by the results' dataset: a hand-edited one that is a path stays a name."""
    source = runs["frozen"][1]
    folder = tmp_path / "runs"
    for n, dataset in enumerate(["../../escaped", str(tmp_path / "absolute"), ".."]):
        r = json.loads((source / "result.json").read_text())
        r.update(dataset=dataset, run_id=f"run{n}")
        r["config"]["run"]["dataset"] = dataset  # edited in both places and signed: a file that agrees with itself
        r["config_sha256"] = config_digest(r["config"])
        (folder / r["run_id"]).mkdir(parents=True)
        (folder / r["run_id"] / "result.json").write_text(json.dumps(r))
        written, _ = write_report(load_runs(folder), tmp_path / "report" / str(n))
        assert written and all(p.resolve().is_relative_to((tmp_path / "report" / str(n)).resolve()) for p in written)
        shutil.rmtree(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_report_averages_seeds_only_within_one_setting(runs, tmp_path):
    """Runs of one method with other settings are other experiments: their own rows, named by what differs."""
    source = runs["frozen"][1]
    folder = tmp_path / "runs"
    folder.mkdir()
    train = json.loads((source / "result.json").read_text())["config"]["train"]
    epochs, lr = train["epochs"], train["lr"]
    _variant(source, folder, 0, 0.40)
    _variant(source, folder, 1, 0.50)
    _variant(source, folder, 2, 0.90, train__epochs=epochs + 5)
    _variant(source, folder, 3, 0.30, train__lr=0.5)
    _variant(source, folder, 4, 0.32, train__lr=0.5)
    _variant(source, folder, 5, 0.20, train__lr=5e-05)
    _variant(source, folder, 6, 0.21, train__lr=0.0005)
    assert 0.0005 < lr < 0.5
    loaded = load_runs(folder)
    _, shown = write_report(loaded, tmp_path / "report")
    csv = pd.read_csv(tmp_path / "report" / "synthetic" / "summary.csv").set_index("label")
    base = f"frozen (train.epochs={epochs}, train.lr={lr})"
    assert list(csv.index) == [  # sorted by the settings' values, numbers as numbers
        f"frozen (train.epochs={epochs}, train.lr=5e-05)", f"frozen (train.epochs={epochs}, train.lr=0.0005)", base,
        f"frozen (train.epochs={epochs}, train.lr=0.5)", f"frozen (train.epochs={epochs + 5}, train.lr={lr})"]
    assert csv.loc[base, "seeds"] == 2 and csv.loc[base, "f1"] == pytest.approx(0.45)
    assert csv.loc[base, "f1_std"] == pytest.approx(np.std([0.40, 0.50], ddof=1))
    assert np.isnan(csv.loc[f"frozen (train.epochs={epochs + 5}, train.lr={lr})", "f1_std"])
    (rows,) = [rows for _, rows in shown.values()]
    assert [base, "2", "45.00 ± 7.07"] == rows[2][:3]
    grid = pd.read_csv(tmp_path / "report" / "synthetic" / "per_attribute.csv", index_col=0)
    assert list(grid.columns.drop("always positive", errors="ignore")) == list(csv.index)


def test_measurements_are_in_every_result(runs):
    for result, _ in runs.values():
        assert result["memory"]["train_step"]["peak_rss_bytes"] > 0
        assert result["timing"]["train_step"]["median_s"] > 0
        assert result["timing"]["inference_latency"]["ms_per_clip"] > 0
        assert result["flops"]["gflops_per_clip"] > 0
        assert result["flops"]["convention"].startswith("1 multiply-add")
    by = {r["method"]: r for r, _ in runs.values()}
    # Side tuning adds its side networks to the same CLIP forward; prompt tuning runs the text encoder per clip.
    assert by["side_tuning"]["flops"]["gflops_per_clip"] > by["frozen"]["flops"]["gflops_per_clip"]
    assert by["prompt_tuning"]["flops"]["by_module_gflops"]["text"] > 0 == by["frozen"]["flops"]["by_module_gflops"][
        "text"]


def test_pareto_front():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [0.5, 0.4, 0.7, 0.6]
    assert list(pareto_front(pd.Series(x).to_numpy(), pd.Series(y).to_numpy())) == [0, 2]


def test_report_cli_skips_broken_files_and_errors_without_runs(runs_dir, tmp_path, bench_proc):
    r = subprocess.run([*BENCH, "report", "--runs", str(runs_dir), "--out", str(tmp_path / "rep")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "broken" in r.stderr and "side_tuning" in r.stdout
    r = bench_proc("report", "--runs", str(tmp_path / "none"))
    assert r.returncode == 2 and "runs folder not found" in r.stderr
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    r = bench_proc("report", "--runs", str(tmp_path / "loop"))
    assert r.returncode == 2 and r.stderr == f"error: runs folder {tmp_path / 'loop'}: its symbolic links lead back " \
        "to themselves (pass --runs DIR)\n", r.stderr
    (tmp_path / "a_file").write_text("")
    r = bench_proc("report", "--runs", str(tmp_path / "a_file"))
    assert r.returncode == 2 and f"runs folder is a file, not a folder: {tmp_path / 'a_file'}" in r.stderr
    run = next(p.parent for p in runs_dir.glob("*/result.json") if p.parent.name not in ("broken", "deep"))
    r = bench_proc("report", "--runs", str(run), "--out", str(tmp_path / "rep2"))
    assert r.returncode == 2 and f"--runs {run} is one run's folder; give the folder that holds the run folders " \
        f"(--runs {runs_dir})" in r.stderr
    before = sorted(p.name for p in run.iterdir())
    r = bench_proc("report", "--runs", str(runs_dir), "--out", str(run / "report"))
    assert r.returncode == 2 and f"is inside the run folder {run}; write the report elsewhere" in r.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def test_report_reads_the_runs_where_the_config_puts_them(runs, tmp_path, bench_proc):
    """Without --runs, bench report reads the run.out that bench run writes to: that of the config file, with the
    profile of --dataset."""
    _, run_dir = runs["frozen"]
    shutil.copytree(run_dir, tmp_path / "mine" / run_dir.name)
    config = tmp_path / "my.toml"
    config.write_text(f'[run]\nout = "{tmp_path / "mine"}"\n[datasets.mars.run]\nout = "{tmp_path / "mars"}"\n')
    r = bench_proc("report", "--config", config, "--out", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    assert "frozen" in (tmp_path / "report" / "synthetic" / "summary.csv").read_text()
    r = bench_proc("report", "--config", config, "--dataset", "mars", "--out", tmp_path / "report")
    assert r.returncode == 2 and f"runs folder not found: {tmp_path / 'mars'}" in r.stderr


def test_sibling_sweeps_keep_a_report_each():
    from benchmark.sweep import report_dir

    assert report_dir(Path("results/runs")) == Path("results/report")
    assert report_dir(Path("exp1/runs")) == Path("exp1/report")
    assert {report_dir(Path("a/lr1")), report_dir(Path("a/lr2"))} == {Path("a/lr1_report"), Path("a/lr2_report")}
    here = Path.cwd()
    assert report_dir(Path(".")) == here.parent / f"{here.name}_report"  # named by the folder ".", not "_report"
    assert report_dir(Path("..")) == here.parent.parent / f"{here.parent.name}_report"
    assert report_dir(Path("/")) == Path("/report")


def test_sweep_skips_done_runs_and_records_failures(tmp_path, bench_proc):
    tiny = ["--set", "train.epochs=1", "--set", "data.train_clips=24", "--set", "data.test_clips=16",
            "--set", "data.num_workers=0", "--set", "measure.enabled=false", "--no-progress"]
    out = tmp_path / "runs"
    r = subprocess.run([*BENCH, "sweep", "--methods", "frozen,vpt", "--seeds", "0,1", "--out", str(out), *tiny],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    results = sorted(out.glob("*/result.json"))
    assert len(results) == 4
    assert (tmp_path / "report" / "synthetic" / "summary.csv").is_file()
    for path in results:  # each finished run in one line, with its scores and where they are
        m = json.loads(path.read_text())
        line = (f"{m['method']} seed {m['seed']}: F1 {m['metrics']['f1']:.4f}, mA {m['metrics']['mA']:.4f}; wrote "
                f"{path}")
        assert line in r.stdout.splitlines(), r.stdout
    assert "4 runs: 4 trained now, 0 already complete, 0 failed" in r.stdout
    # the same grid, its options repeated rather than comma-separated (each repeat adds, as --set's do)
    r = bench_proc("sweep", "--methods", "frozen", "--methods", "vpt", "--seeds", "0", "--seeds", "1", "--out", out,
                   "--no-report", *tiny)
    assert r.returncode == 0 and r.stdout.count("already complete") == 5, r.stdout
    assert "4 runs: 0 trained now, 4 already complete, 0 failed" in r.stdout and r.stdout.count("; result in ") == 4
    empty = tmp_path / "MARS"  # a folder, but no dataset: found when the run reads it
    empty.mkdir()
    r = bench_proc("sweep", "--methods", "frozen", "--datasets", "mars", "--seeds", "5", "--out", out, "--no-report",
                   *tiny, "--set", f"data.root={empty}", "--set", "model.backbone=clip-tiny", "--set",
                   "model.pretrained=none")
    assert r.returncode == 1 and "1 of 1 runs failed" in r.stderr
    assert "1 run: 0 trained now, 0 already complete, 1 failed" in r.stdout
    failed = [json.loads(p.read_text()) for p in out.glob("*_s5_*/result.json")]
    assert failed and failed[0]["status"] == "failed" and "no annotation CSV in it" in failed[0]["error"]


@pytest.mark.parametrize("setting,fragment", [
    ("model.pretrained=/nowhere/ViT-B-16.pt", "checkpoint file not found: /nowhere/ViT-B-16.pt"),
    ("model.backbone=ViT-Q-99", "command line: unknown backbone 'ViT-Q-99'"),
    ("data.image_size=32", "data.image_size 32 differs from backbone clip-tiny's 64 px"),
    ("methods.side_tuning.taps=[0, 2, 5]", "side_tuning: taps [5] are not layers of this 4-layer backbone"),
])
def test_a_sweep_checks_every_runs_settings_as_bench_run_does_before_the_first_trains(setting, fragment, tmp_path,
                                                                                       bench_proc):
    """A setting that one backbone, weights file or method cannot take (side tuning, last in the registry, with
    taps past the backbone's depth) stops the whole sweep in one line before any run trains, rather than leaving a
    failed run per seed behind, or surfacing hours into the grid."""
    out = tmp_path / "runs"
    r = bench_proc("sweep", "--methods", "all", "--seeds", "0,1", "--out", out, "--no-report", "--set", setting)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and fragment in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "trained now" not in r.stdout
    assert not out.exists() or not any(out.iterdir())


def test_latex_takes_every_special_character_as_text():
    """A label may hold any setting's value (a root with ``~``, a path with ``_``, ``$``, braces): each is LaTeX's
    text for it, escaped once (a backslash's ``\\textbackslash{}`` keeps its braces)."""
    from benchmark.report.tables import latex

    tex = latex(["method", "F1 (%)"], [[r"lora (data.root=~/a_b$c{d}^e\f, 100% & #)", "48.61 ± 1.76"]], "x")
    assert (r"lora (data.root=\textasciitilde{}/a\_b\$c\{d\}\textasciicircum{}e\textbackslash{}f, 100\% \& \#) & "
            r"48.61 $\pm$ 1.76 \\") in tex.splitlines(), tex


def test_results_of_the_first_schema_still_load():
    """The committed reference runs were written with schema 1; they load, upgraded, into the report."""
    from benchmark.results import SCHEMA_VERSION, read_result

    runs = ROOT / "results" / "reference" / "h100" / "runs"
    some = next(runs.iterdir())
    result = read_result(some)
    assert result["schema"] == SCHEMA_VERSION and result["status"] == "complete"
    assert result["measured_in"] == "training form"  # schema 1 timed inference unfolded
    loaded = load_runs(runs)
    assert len(loaded.table) == len(list(runs.glob("*/result.json"))) and not loaded.problems


def test_point_labels_never_overlap_and_crowded_ones_are_left_to_the_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.report.charts import place_labels

    def placed(points):
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.scatter([p[0] for p in points], [p[1] for p in points])
        labels = place_labels(ax, points)
        renderer = fig.canvas.get_renderer()
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        frame = ax.get_window_extent(renderer)
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        plt.close(fig)
        return [label.get_text() for label in labels]

    far = (5.0, 5.0, "far_away")
    rng = np.random.default_rng(0)
    crowd = [(float(x), float(y), f"method_{i}") for i, (x, y) in enumerate(rng.normal(0, 0.5, (12, 2)))]
    names = placed([*crowd, far])
    assert "far_away" in names and 1 < len(names) < len(crowd) and "method_9" not in names, names
    assert "method_9" in placed([crowd[9], *crowd[:9], *crowd[10:], far])  # the first comes first
    # points on top of one another: any name among them reads as a neighbour's, so the legend alone names them
    assert placed([*((float(x), float(y), f"m{i}") for i, (x, y) in enumerate(rng.normal(0, 0.02, (12, 2)))),
                   far]) == ["far_away"]


def test_a_point_label_never_runs_on_towards_another_point_level_with_it():
    """Two points close together, one up and to the left of the other: the lower one's first-choice spot (above,
    to the right) would put its name level with the upper point, a few pixels past it, where a reader takes it for
    the upper point's (and the upper one's name, beside it, for the lower's). Each name goes where it reads as
    its own point's, in either order of placing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.report.charts import place_labels

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    fig.canvas.draw()
    lower = (50.0, 50.0)
    upper = tuple(ax.transData.inverted().transform(ax.transData.transform(lower) + (-5, 11)))  # px: left, up
    for points in ([(*lower, "bitfit"), (*upper, "vpt")], [(*upper, "vpt"), (*lower, "bitfit")]):
        for text in list(ax.texts):
            text.remove()
        spots = {label.get_text(): label.xyann for label in place_labels(ax, points)}
        assert spots == {"bitfit": (6, -4), "vpt": (6, 4)}, spots  # below right, and above right
    plt.close(fig)


def test_point_labels_keep_off_the_pareto_front_where_they_can_and_cross_it_rather_than_vanish():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.path import Path as Polyline

    from benchmark.report.charts import place_labels, step_vertices

    assert step_vertices([1, 2, 4], [10, 20, 30]).tolist() == [[1, 10], [2, 10], [2, 20], [4, 20], [4, 30]]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # a front passing just above the point, through its first-choice spot (above and to the right)
    front = np.array([[0.0, 5.3], [10.0, 5.3]])
    line = Polyline(ax.transData.transform(front))
    (label,) = place_labels(ax, [(5.0, 5.0, "lora")], lines=[front])
    assert not line.intersects_bbox(label.get_window_extent(renderer), filled=False)
    # a point boxed in by fronts on every side still gets its name
    box = [np.array([[x0, y0], [x1, y1]]) for x0, y0, x1, y1 in
           [(0, 4.8, 10, 4.8), (0, 5.2, 10, 5.2), (4.7, 0, 4.7, 10), (5.3, 0, 5.3, 10)]]
    ax2 = fig.add_axes((0.1, 0.1, 0.3, 0.3), xlim=(0, 10), ylim=(0, 10))
    assert [t.get_text() for t in place_labels(ax2, [(5.0, 5.0, "vpt")], lines=box)] == ["vpt"]
    plt.close(fig)


def test_sweep_checks_every_dataset_root_before_any_run(tmp_path, bench_proc):
    out = tmp_path / "runs"
    r = bench_proc("sweep", "--methods", "frozen", "--datasets", "synthetic,mars", "--seeds", "0", "--out", out,
                   "--set", f"data.root={tmp_path / 'nope'}")
    assert r.returncode == 2 and r.stderr.strip() == (  # --set data.root is every dataset's: the hint is per dataset
        f"error: dataset root not found: {tmp_path / 'nope'} (mars: set its root = \"DIR\" under "
        "[datasets.mars.data] in your config file (--config FILE or ./bench.toml, read over the shipped one))"
    ), r.stderr
    assert not out.exists() or not any(out.iterdir())  # not one run started, no failed runs left behind
    r = bench_proc("sweep", "--methods", "frozen", "--datasets", "mars", "--out", out)
    assert r.returncode == 2 and "(mars: pass an existing folder with --set data.root=DIR, or set its" in r.stderr


def test_a_sweep_whose_open_clip_weights_cannot_be_fetched_stops_before_any_run(tmp_path, bench_proc, monkeypatch):
    """Offline, with the weights of a tag not in the Hugging Face cache, every run of the grid would fail alike, one
    after another (one Ray task each): said once, before the first."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # in no machine's cache
    monkeypatch.setattr("vtfpar.backbone._hub_reachable", lambda: False)  # and no network, as here and in CI
    out = tmp_path / "runs"
    r = bench_proc("sweep", "--methods", "frozen,lora", "--seeds", "0,1", "--out", out, "--set",
                   "model.backbone=ViT-B-16", "--set", "model.pretrained=openai")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: could not fetch ViT-B-16 weights 'openai': they are not in this machine's Hugging Face cache and the "
        "Hub does not answer (no network?); download them where you have network (open_clip.create_model caches "
        "them under ~/.cache/huggingface) and pass the file with --pretrained /path/to/open_clip_model.safetensors"
    ), r.stderr
    assert not out.exists() or not any(out.iterdir())
    import huggingface_hub.constants

    from vtfpar.backbone import check_weights_fetchable
    from vtfpar.errors import UserError

    monkeypatch.setattr("vtfpar.backbone._hub_reachable", lambda: True)
    check_weights_fetchable("ViT-B-16", "openai")  # the Hub answers: fetched when the run loads them
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the Hub is not asked
    with pytest.raises(UserError, match="could not fetch ViT-B-16 weights 'openai'"):
        check_weights_fetchable("ViT-B-16", "openai")


def test_a_sweep_whose_runs_or_report_have_no_place_stops_before_any_run(tmp_path, bench_proc):
    """``--out`` that is one run's folder (its grid would be trained inside it) or a file where the report's folder
    goes (named after ``--out``): one line naming it before the first run, not after the whole grid."""
    run_dir = _finished(tmp_path / "runs", 0)
    r = bench_proc("sweep", "--methods", "frozen", "--seeds", "0", "--out", run_dir)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: --out {run_dir} is one run's folder: the grid would be trained inside it; give the folder that "
        f"holds the run folders (such as {run_dir.parent})"), r.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]
    out = tmp_path / "exp" / "runs"
    out.parent.mkdir()
    (tmp_path / "exp" / "report").write_text("mine")
    r = bench_proc("sweep", "--methods", "frozen", "--seeds", "0", "--out", out)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {tmp_path / 'exp' / 'report'}, the folder the sweep writes its report in (named after --out), is a "
        "file: move it away, choose another --out, or add --no-report"), r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_finished_sweep_needs_no_data(tmp_path, bench_proc):
    """Rerunning a sweep whose runs are complete (to rebuild its report, with the dataset unmounted) skips them."""
    from benchmark.config import load_config
    from benchmark.writes import atomic_write_json

    out, gone = tmp_path / "runs", tmp_path / "gone"
    cfg = load_config(None, {"run": {"method": "frozen", "dataset": "mars", "seed": 0, "out": str(out)}},
                      [f"data.root={gone}"])
    row = {k: 0.5 for k in ("f1", "mA", "accuracy", "precision", "recall")}
    atomic_write_json(out / cfg.run_id() / "result.json", {
        "schema": 2, "status": "complete", "run_id": cfg.run_id(), "method": "frozen", "dataset": "mars",
        "backbone": cfg.model.backbone, "seed": 0, "config": cfg.to_dict(), "metrics": row,
        "baselines": {"majority": row}, "params": {"trainable": 1, "total": 2}})
    (out / cfg.run_id() / "model.pt").write_bytes(b"")  # a finished run has its weights (not read to skip it)
    r = bench_proc("sweep", "--methods", "frozen", "--datasets", "mars", "--seeds", "0", "--out", out, "--no-report",
                   "--set", f"data.root={gone}")
    assert r.returncode == 0 and "already complete" in r.stdout, r.stderr
    r = bench_proc("sweep", "--methods", "frozen", "--datasets", "mars", "--seeds", "0,1", "--out", out,
                   "--no-report", "--set", f"data.root={gone}")
    assert r.returncode == 2 and f"dataset root not found: {gone}" in r.stderr  # seed 1 still needs the data


def test_a_sweep_axis_and_a_set_of_its_key_name_the_flag(bench_proc):
    r = bench_proc("sweep", "--methods", "frozen", "--seeds", "0,1", "--set", "run.seed=3")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: --set run.seed=3: a sweep's seeds are its --seeds; drop the --set"), r.stderr
    r = bench_proc("sweep", "--methods", "all", "--set", "run.method=lora")
    assert r.returncode == 2 and "a sweep's methods are its --methods" in r.stderr, r.stderr
    # bench run's options: what a sweep takes instead, not click's guess at a similar option (--report)
    r = bench_proc("sweep", "--methods", "frozen", "--epochs", "1")
    assert r.returncode == 2 and r.stderr == ("error: No such option: --epochs; a sweep takes --set train.epochs=N "
                                              "instead (see bench sweep --help)\n"), r.stderr
    r = bench_proc("sweep", "--method", "frozen")
    assert r.stderr == "error: No such option: --method; a sweep takes --methods instead (see bench sweep --help)\n"
    r = bench_proc("sweep", "--methodz", "frozen")  # not one of bench run's: click's guess stands
    assert r.stderr.startswith("error: No such option: --methodz (Possible options: --methods") and "sweep takes" \
        not in r.stderr, r.stderr
    for seeds in ("0,,1", "0,1,", ","):
        r = bench_proc("sweep", "--methods", "frozen", "--seeds", seeds)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert ("an empty item between commas" if seeds != "," else "--seeds is empty") in r.stderr


@pytest.mark.parametrize("setting,line", [
    ("data.frames=10000000", r"error: one batch of 64 clips x 10000000 frames at 64 px is [\d.]+ GiB, more than the "
                             r"[\d.]+ GiB .*: lower data.frames or train.eval_batch_size"),  # measured: 64 to time
    ("data.train_clips=1", r"error: dataset synthetic has one training clip; the head's BatchNorm trains on two or "
                           r"more \(data.train_clips for synthetic, more tracklets otherwise\)"),
    ("run.device=cuda:0", r"error: run.device is 'cuda:0' but CUDA is not available here \(use --set run.device=cpu "
                          r"or auto\)"),
])
def test_what_every_run_of_a_sweep_would_fail_on_alike_stops_it_before_the_first(tmp_path, bench_proc, setting, line):
    """A device the machine lacks, a batch too large for its memory, a split of one clip: every run of the grid
    fails on it the same way. Said once, before any run, nothing written, rather than one failed run after
    another and a folder of failed results (in the sweep's words: it has no --frames or --device)."""
    import torch

    if setting.startswith("run.device") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "runs"
    r = bench_proc("sweep", "--methods", "frozen,bitfit", "--seeds", "0,1", "--out", out, "--set", setting)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and re.fullmatch(line, r.stderr.strip()), r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_filter_names_an_unknown_method_or_dataset_and_an_empty_result_says_which_filters(tmp_path, bench_proc):
    (tmp_path / "runs" / "broken").mkdir(parents=True)
    (tmp_path / "runs" / "broken" / "result.json").write_text("{")  # skipped, but not what a misspelt filter says
    for flag, name in (("--method", "nope"), ("--dataset", "mrs")):
        r = bench_proc("report", "--runs", tmp_path / "runs", "--out", tmp_path / "report", flag, name)
        assert r.returncode == 2 and r.stderr.startswith(f"error: {flag} {name}: no such {flag[2:]}; choose one of "), \
            r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
    afile = tmp_path / "a_file"  # an --out it cannot write in: that one line, not the runs it would skip
    afile.write_text("")
    for out, why in ((afile, "it is a file"), (afile / "sub", f"{afile} is a file")):
        r = bench_proc("report", "--runs", tmp_path / "runs", "--out", out)
        assert r.returncode == 2 and r.stderr == f"error: cannot write in {out}: {why}, not a folder; choose another " \
            "--out\n", r.stderr
    (tmp_path / "runs" / "broken" / "result.json").unlink()
    r = bench_proc("report", "--runs", tmp_path / "runs", "--out", tmp_path / "report", "-m", "lora", "-d", "mars")
    assert r.returncode == 2 and r.stderr.strip() == f"error: no complete runs in {tmp_path / 'runs'} for " \
        "dataset=mars and method=lora", r.stderr
    assert not (tmp_path / "report").exists()


def test_a_report_is_not_written_among_the_run_folders(tmp_path, bench_proc):
    runs = tmp_path / "runs"
    runs.mkdir()
    for out, where in ((runs, "is the runs folder"), (runs / "report", "is inside the runs folder")):
        r = bench_proc("report", "--runs", runs, "--out", out)
        assert r.returncode == 2 and r.stderr.strip() == f"error: --out {out} {where} {runs}, among the run folders; " \
            f"write the report elsewhere (such as {tmp_path / 'report'})", r.stderr
    assert list(runs.iterdir()) == []


def test_a_label_shows_a_list_setting_as_set_takes_it_and_an_empty_one_as_brackets():
    from benchmark.report.experiments import experiment_labels

    settings = [{"method.taps": []}, {"method.taps": [0, 4]}]
    table = pd.DataFrame({"dataset": "synthetic", "backbone": "clip-tiny", "method": "side_tuning",
                          "setting": [json.dumps(s) for s in settings]})
    assert list(experiment_labels(table)) == ["side_tuning (methods.side_tuning.taps=[])",
                                              "side_tuning (methods.side_tuning.taps=0,4)"]
    # settings that read alike are told apart, so that summarise (by label) never averages two of them
    settings = [{"method.target": ["q,k"]}, {"method.target": ["q", "k"]}, {"method.target": ["q", "k"]}]
    table = pd.DataFrame({"dataset": "synthetic", "backbone": "clip-tiny", "method": "lora",
                          "setting": [json.dumps(s) for s in settings]})
    assert list(experiment_labels(table)) == ['lora (methods.lora.target=["q,k"])',
                                              'lora (methods.lora.target=["q","k"])',
                                              'lora (methods.lora.target=["q","k"])']
    settings = [{"train.epochs": 1}, {"train.epochs": "1"}, {"train.epochs": 5}]
    table = pd.DataFrame({"dataset": "synthetic", "backbone": "clip-tiny", "method": "lora",
                          "setting": [json.dumps(s) for s in settings]})
    assert list(experiment_labels(table)) == ["lora (train.epochs=1)", 'lora (train.epochs="1")',
                                              "lora (train.epochs=5)"]


def _finished(out: Path, seed: int = 0, method: str = "frozen", pretrained: str | None = None,
              sets: tuple[str, ...] = ()) -> Path:
    """A complete result of a synthetic run written as training writes it (no weights, charts or measurements:
    what a report of its numbers needs), in its run folder under ``out``; ``sets`` as ``--set`` takes them."""
    from benchmark.config import load_config
    from benchmark.writes import atomic_write_json

    cfg = load_config(None, {"run": {"method": method, "dataset": "synthetic", "seed": seed, "out": str(out)}},
                      [*sets, *([f"model.pretrained={pretrained}"] if pretrained else [])] or None)
    row = {k: 0.5 + seed / 100 for k in ("f1", "mA", "accuracy", "precision", "recall")}
    run = out / cfg.run_id()
    atomic_write_json(run / "result.json", {
        "schema": 2, "status": "complete", "run_id": cfg.run_id(), "method": method, "dataset": "synthetic",
        "backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained, "seed": seed, "config": cfg.to_dict(),
        "metrics": row, "baselines": {"majority": row}, "params": {"trainable": 10, "total": 20}})
    return run



def test_a_cpu_runs_host_and_threads_are_read_as_conditions_of_its_costs(tmp_path):
    """On a CPU the host and torch's thread count are what a step's time depends on besides the method (a Ray task
    trains with --cpus-per-run threads); on a GPU the device names the card, and neither is read."""
    runs = tmp_path / "runs"
    envs = {0: {"device": "cpu", "host": "a", "torch_threads": 2},
            1: {"device": "cpu", "host": "b", "torch_threads": 1},
            2: {"device": "cuda:0 (NVIDIA H100 80GB HBM3)", "host": "c", "torch_threads": 8}}
    for seed, env in envs.items():
        path = _finished(runs, seed) / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "env": env}))
    table = load_runs(runs).table.set_index("seed")
    assert table.loc[0, ["cpu_host", "threads"]].tolist() == ["a", 2]
    assert table.loc[1, ["cpu_host", "threads"]].tolist() == ["b", 1]
    assert table.loc[2, ["cpu_host", "threads"]].isna().all()


def test_seeds_trained_in_another_precision_are_rows_of_their_own(tmp_path):
    """train.amp = auto trains in bf16 on a GPU and in fp32 on a CPU under one run id: the report resolves it by
    each result's device, so fp32 and bf16 seeds are never averaged together, and says which row is which."""
    runs = tmp_path / "runs"
    gpu = " (NVIDIA H100 80GB HBM3)"  # as env.device names a GPU
    for seed, device in ((0, "cpu"), (1, "cpu"), (2, "cuda" + gpu), (3, "cuda:1" + gpu)):
        path = _finished(runs, seed) / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "env": {"device": device}}))
    table = load_runs(runs).table
    assert sorted(table.groupby("label")["seed"].apply(sorted).items()) == [
        ("frozen (train.amp=bf16)", [2, 3]), ("frozen (train.amp=off)", [0, 1])]
    # bf16 set explicitly (another run id), on a GPU: the precision auto has there, so the same row
    path = _finished(runs, 4, sets=("train.amp=bf16",)) / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "env": {"device": "cuda:0" + gpu}}))
    assert sorted(load_runs(runs).table.groupby("label")["seed"].apply(sorted).items()) == [
        ("frozen (train.amp=bf16)", [2, 3, 4]), ("frozen (train.amp=off)", [0, 1])]

def test_seeds_evaluated_with_another_batch_are_one_experiment(tmp_path):
    """train.eval_batch_size (memory, not results) is in the run id, but seeds that differ in it are one row of the
    report: averaged, not split into rows of one seed. What is measured at the evaluation batch (inference memory and
    throughput) averages only over seeds measured at one. train.eval_every stays a row's own (its seeds' curves are
    scored on other epochs), and random weights are one backbone however a result spells them."""
    runs = tmp_path / "runs"
    for seed, sets in ((0, ()), (1, ("train.eval_batch_size=7",)), (2, ("train.eval_every=2",))):
        path = _finished(runs, seed, pretrained="none", sets=sets) / "result.json"
        r = json.loads(path.read_text())
        batch = r["config"]["train"]["eval_batch_size"]
        r["memory"] = {"train_step": {"kind": "cpu_peak_rss", "peak_rss_bytes": (900 + seed) * 2**20},
                       "inference": {"kind": "cpu_peak_rss", "peak_rss_bytes": (400 + batch) * 2**20},
                       "eval_batch": batch}
        r["timing"] = {"inference_throughput": {"clips_per_s": float(batch)}}
        if seed == 1:  # as a result of a version that took "random" for random weights records it
            r["pretrained"] = r["config"]["model"]["pretrained"] = "random"
            r["config_sha256"] = config_digest(r["config"])
        path.write_text(json.dumps(r))
    assert len({p.name for p in runs.iterdir()}) == 3  # three run ids
    loaded = load_runs(runs)
    assert loaded.problems == [] and set(loaded.table["backbone"]) == {"clip-tiny (none)"}
    assert sorted(loaded.table.groupby("label")["seed"].apply(sorted).items()) == [
        ("frozen (train.eval_every=1)", [0, 1]), ("frozen (train.eval_every=2)", [2])]
    write_report(loaded, tmp_path / "rep")
    csv = pd.read_csv(tmp_path / "rep" / "synthetic" / "summary.csv").set_index("label")
    row = csv.loc["frozen (train.eval_every=1)"]
    assert row["seeds"] == 2 and row["f1"] == pytest.approx(0.505) and row["train_mem_mib"] == pytest.approx(900.5)
    assert np.isnan(row["infer_mem_mib"]) and np.isnan(row["infer_clips_per_s"])
    (runs / loaded.table.set_index("seed").loc[1, "run_id"]).rename(tmp_path / "aside")
    write_report(load_runs(runs), tmp_path / "rep")
    csv = pd.read_csv(tmp_path / "rep" / "synthetic" / "summary.csv").set_index("label")
    assert csv.loc["frozen (train.eval_every=1)", "infer_mem_mib"] == pytest.approx(464)  # seed 0 alone


def test_methods_trained_on_other_budgets_say_so_on_every_row(tmp_path):
    """A table never shows methods trained with other shared settings (epochs, clips) side by side as if alike:
    every row's label carries the settings that differ across the table, and summary.md and the terminal say so.
    A method's own settings (methods.lora.rank) are told apart only between that method's runs."""
    from benchmark.report.experiments import differing_settings, experiment_labels, unlike_methods
    from vtfpar.fusion import SHARED_START

    runs = tmp_path / "runs"
    for method, sets in (("frozen", ("train.epochs=3",)), ("lora", ("train.epochs=3", "methods.lora.rank=4")),
                         ("lora", ("train.epochs=3", "methods.lora.rank=8")), ("side_tuning", ())):
        _record_start(_finished(runs, 0, method, sets=sets), SHARED_START)
    loaded = load_runs(runs)
    labels = dict(zip(loaded.table["run_id"], loaded.table["label"], strict=True))
    assert sorted(labels.values()) == ["frozen (train.epochs=3)",
                                       "lora (train.epochs=3, methods.lora.rank=4)",
                                       "lora (train.epochs=3, methods.lora.rank=8)",
                                       "side_tuning (train.epochs=8)"]
    warned = []
    write_report(loaded, tmp_path / "rep", warned.append)
    said = ("its rows differ in train.epochs (each row's label says its values), and some methods have no row "
            "trained as another's: compare those as runs of different settings, not only of different methods")
    assert [line.split(": ", 1)[1] for line in warned] == [said]
    summary = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    assert "Its rows differ in train.epochs" in summary
    # The throughput column is a timed step, not the training log's epoch rate (which loads data too): said.
    assert "| step clips/s |" in summary and "data loading left out" in summary
    caption = (tmp_path / "rep" / "synthetic" / "summary.tex").read_text()
    assert "data loading left out" in caption and "Its rows differ in train.epochs" in caption
    csv = pd.read_csv(tmp_path / "rep" / "synthetic" / "summary.csv", dtype=str)
    assert set(csv["trainable_params"]) == {"10"} and set(csv["total_params"]) == {"20"}  # counts, not "10.0"
    # Alike budgets: a label names the method alone, as before.
    def table(*rows):
        return pd.DataFrame({"dataset": "synthetic", "backbone": "clip-tiny", "method": [m for m, _ in rows],
                             "setting": [json.dumps({"run.method": m, **d}) for m, d in rows]})

    alike = table(("frozen", {"train.epochs": 8}), ("lora", {"train.epochs": 8}))
    assert list(experiment_labels(alike)) == ["frozen", "lora"]
    # What says nothing of training (where the data lay) and a key that older results lack are not told apart.
    unlike = table(("frozen", {"train.epochs": 8, "data.root": "/a"}),
                   ("lora", {"train.epochs": 8, "data.root": "/b", "data.new_key": 1}))
    assert list(experiment_labels(unlike)) == ["frozen", "lora"] and differing_settings(unlike) == []
    # A learning-rate sweep of one method: every row names its rate, but frozen and lora have a row trained alike,
    # so the table compares them and says nothing more; only one method per budget is unlike.
    sweep = table(("frozen", {"train.lr": 1e-3}), ("lora", {"train.lr": 1e-3}), ("lora", {"train.lr": 1e-2}))
    assert list(experiment_labels(sweep)) == ["frozen (train.lr=0.001)", "lora (train.lr=0.001)",
                                              "lora (train.lr=0.01)"]
    assert not unlike_methods(sweep, ["train.lr"])
    assert unlike_methods(table(("frozen", {"train.lr": 1e-3}), ("lora", {"train.lr": 1e-2})), ["train.lr"])


def _record_start(run: Path, start: int) -> None:
    r = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps({**r, "fusion_start": start}))


def test_a_table_whose_runs_started_fusion_from_other_weights_says_which(tmp_path):
    """Runs whose fusion and head drew their first weights after their method's own modules (fusion_start 1), or
    whose start cannot be told (None): summary.md and the terminal name them where a table compares two or more
    experiments (methods, or one method's settings), and only there."""
    from vtfpar.fusion import SHARED_START
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _record_start(_finished(runs, seed, "frozen"), 1)
        _record_start(_finished(runs, seed, "lora"), SHARED_START)
    warned = []
    write_report(load_runs(runs), tmp_path / "rep", warned.append)
    (line,) = warned
    said = ("2 of 4 runs (frozen) were made before commit e0e8a9f, when each method drew fusion and head after its "
            "own modules: differences between experiments include their starts; `bench run --force` remakes them")
    assert line.startswith("synthetic, ") and line.endswith(said)
    assert f"\n\n{said}.\n\n" in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    _record_start(_finished(runs, 0, "frozen"), SHARED_START)
    _record_start(_finished(runs, 1, "frozen"), None)  # cannot be told
    warned.clear()
    write_report(load_runs(runs), tmp_path / "rep", warned.append)
    (line,) = warned
    assert "1 of 4 runs (frozen) record no fusion start and this checkout's git history cannot place" in line
    _record_start(_finished(runs, 1, "frozen"), SHARED_START)  # every run of its seed's start: nothing to say
    warned.clear()
    write_report(load_runs(runs), tmp_path / "rep", warned.append)
    assert warned == [] and "fusion" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    _record_start(_finished(runs, 1, "frozen"), 1)
    warned.clear()  # one experiment alone compares nothing
    write_report(load_runs(runs, method="frozen"), tmp_path / "alone", warned.append)
    assert warned == []
    warned.clear()  # two settings of one method are two experiments
    frozen = _finished(runs, 1, "frozen")
    _record_start(frozen, 1)
    _variant(frozen, runs, 1, 0.4, train__lr=0.01)
    _record_start(frozen, SHARED_START)
    write_report(load_runs(runs, method="frozen"), tmp_path / "settings", warned.append)
    (line,) = warned
    assert "1 of 3 runs (frozen (train.lr=0.01)) were made before" in line, line


def test_a_run_that_records_no_fusion_start_is_placed_by_its_commit():
    from benchmark.results import SHARED_START_SINCE, _git, fusion_start
    from vtfpar.fusion import SHARED_START
    if _git("cat-file", "-t", SHARED_START_SINCE) != "commit":
        pytest.skip("needs this repository's history (a clone, not a copied tree)")
    before, since = _git("rev-parse", f"{SHARED_START_SINCE}^"), _git("rev-parse", SHARED_START_SINCE)
    assert fusion_start({"env": {"git_commit": before}}) == 1
    assert fusion_start({"env": {"git_commit": since}}) == SHARED_START
    assert fusion_start({"env": {"git_commit": _git("rev-parse", "HEAD")}}) == SHARED_START
    assert fusion_start({"fusion_start": SHARED_START, "env": {"git_commit": before}}) == SHARED_START  # recorded
    for unknown in ({"env": {"git_commit": "0" * 40}}, {"env": {"git_commit": None}}, {"env": {}}, {}):
        assert fusion_start(unknown) is None


def test_a_tables_summary_reads_table_first_then_its_notes_and_prior_baselines(tmp_path):
    """summary.md: warnings, the table, the prior baselines a row should clear, then one note per line; the LaTeX
    caption carries the same notes."""
    runs = tmp_path / "runs"
    results = [json.loads((_finished(runs, seed) / "result.json").read_text()) for seed in (0, 1)]
    write_report(load_runs(runs), tmp_path / "rep")
    text = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    table, after = text.index("| method |"), text.index("Prior baselines")
    assert table < after < text.index("- F1, Acc, Prec, Rec instance-based") < text.index("- Memory: ")
    f1 = np.mean([r["baselines"]["majority"]["f1"] for r in results])
    assert f"learn nothing from the clips: majority {100 * f1:.2f}." in text
    caption = (tmp_path / "rep" / "synthetic" / "summary.tex").read_text()
    assert "Memory: " in caption and "Infer ms/clip: batch 1" in caption and "Prior baselines" in caption


def test_the_per_attribute_heatmap_gets_its_chance_column_from_each_runs_prior_baseline(tmp_path):
    """Answering "present" for every clip (the all-positive baseline each result records per attribute) is the
    floor a method's per-attribute F1 is read against: it is loaded with the attributes' F1 for the heatmap."""
    import shutil

    source = sorted((ROOT / "results" / "reference" / "synthetic" / "runs").glob("*/result.json"))[0].parent
    shutil.copytree(source, tmp_path / "runs" / source.name)
    result = json.loads((source / "result.json").read_text())
    loaded = load_runs(tmp_path / "runs").per_attribute.set_index("attribute")
    prior = result["baselines"]["all_positive"]["per_attribute_f1"]
    assert loaded["prior_f1"].to_dict() == pytest.approx(prior) and len(prior) == len(loaded) > 10
    written, _ = write_report(load_runs(tmp_path / "runs"), tmp_path / "rep")
    assert any(p.name == "per_attribute_f1.png" for p in written)
    # the per-attribute table has the same first column
    (folder,) = {p.parent for p in written if p.name == "per_attribute.csv"}
    grid = pd.read_csv(folder / "per_attribute.csv", index_col=0)
    assert grid.columns[0] == "always positive" and grid.shape[1] == 2
    assert grid["always positive"].to_dict() == pytest.approx(prior)
    assert grid[grid.columns[1]].to_dict() == pytest.approx({a["name"]: a["f1"]
                                                             for a in result["metrics"]["per_attribute"]})
    md = (folder / "per_attribute.md").read_text()
    assert "| attribute | always positive |" in md and "- always positive: every attribute predicted present" in md


def test_the_per_attribute_table_shows_each_cells_spread_over_seeds(tmp_path):
    """A row's F1 on one attribute moves with the seed (a few hundred test clips): per_attribute.md shows mean ±
    sample std, per_attribute_std.csv the std at full precision; a row of one seed shows its mean alone."""
    runs = tmp_path / "runs"
    for method, scores in (("side_tuning", (0.928, 0.784, 0.880)), ("frozen", (0.3,))):
        for seed, f1 in enumerate(scores):
            path = _finished(runs, seed, method) / "result.json"
            r = json.loads(path.read_text())
            r["metrics"]["per_attribute"] = [{"name": "hat", "f1": f1}, {"name": "bag", "f1": 0.5}]
            path.write_text(json.dumps(r))
    write_report(load_runs(runs), tmp_path / "rep")
    md = (tmp_path / "rep" / "synthetic" / "per_attribute.md").read_text()
    std = np.std([0.928, 0.784, 0.880], ddof=1)
    assert f"| hat | 30.0 | {100 * np.mean([0.928, 0.784, 0.880]):.1f} ± {100 * std:.1f} |" in md, md
    assert "| bag | 50.0 | 50.0 ± 0.0 |" in md
    spread = pd.read_csv(tmp_path / "rep" / "synthetic" / "per_attribute_std.csv", index_col=0)
    assert spread.loc["hat", "side_tuning"] == pytest.approx(std) and np.isnan(spread.loc["hat", "frozen"])


def test_a_result_without_per_attribute_metrics_or_history_is_reported(tmp_path):
    """Both are optional in a complete result: a report of such runs has their summary, and no per-attribute
    table or training curves. A chart of one row compares nothing: the parameter chart comes with a second."""
    _finished(tmp_path / "runs", 0)
    written, _ = write_report(load_runs(tmp_path / "runs"), tmp_path / "rep")
    assert sorted(p.name for p in written) == ["runs.csv", "runs.csv", "summary.csv", "summary.md", "summary.tex"]
    assert "## Charts" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()  # none drawn: none named
    _finished(tmp_path / "runs", 0, method="lora")
    written, _ = write_report(load_runs(tmp_path / "runs"), tmp_path / "rep2")
    assert sorted(p.name for p in written) == ["f1_vs_params.png", "f1_vs_params.svg", "runs.csv", "runs.csv",
                                               "summary.csv", "summary.md", "summary.tex"]


def test_a_pareto_step_is_unsure_where_its_rise_is_within_either_ends_seed_std():
    from benchmark.report.charts import steps_within_noise

    within = steps_within_noise([70.0, 70.2, 75.0, 75.1], [0.3, np.nan, 0.1, 0.0])
    assert within.tolist() == [True, False, True]  # 0.2 <= 0.3 (the first end's); 4.8 > 0.1; 0.1 <= 0.1
    assert steps_within_noise([70.0, 70.01], [np.nan, 0.0]).tolist() == [False]  # one seed each: no spread to judge
    assert steps_within_noise([70.0], [1.0]).tolist() == []


def test_f1_curves_are_the_mean_and_sample_std_of_each_rows_seeds_per_epoch():
    from benchmark.report.charts import f1_curves

    curves = pd.DataFrame({"label": ["a", "a", "a", "a", "b", "b"], "epoch": [1, 2, 1, 2, 1, 2],
                           "f1": [0.5, 0.6, 0.7, np.nan, 0.4, 0.9]})
    stats = f1_curves(curves).set_index(["label", "epoch"])
    assert stats.loc[("a", 1), "mean"] == pytest.approx(0.6)
    assert stats.loc[("a", 1), "std"] == pytest.approx(0.2 / 2**0.5)  # the sample std (n - 1), as the tables'
    assert stats.loc[("a", 2), "mean"] == 0.6 and stats.loc[("a", 2), "seeds"] == 1  # an epoch without F1: left out
    assert np.isnan(stats.loc[("a", 2), "std"]) and np.isnan(stats.loc[("b", 1), "std"])
    assert list(stats.loc["b", "mean"]) == [0.4, 0.9]


def test_the_rows_that_train_nothing_of_their_own_are_known_with_or_without_the_recorded_count():
    """The level every panel of curves_by_method is drawn against: 0 method parameters where results record them;
    in results that predate the count, a registered method that declares none (frozen's prefixes=())."""
    from benchmark.report.charts import trains_nothing_of_its_own

    s = pd.DataFrame({"label": ["frozen", "lora", "gone", "frozen (lr=0.01)", "lora (rank=0)"],
                      "method": ["frozen", "lora", "no_longer_registered", "frozen", "lora"],
                      "method_params": [np.nan, np.nan, np.nan, 5.0, 0.0]})
    assert trains_nothing_of_its_own(s) == {"frozen", "lora (rank=0)"}  # a recorded count decides where there is one
    assert trains_nothing_of_its_own(s.drop(columns="method_params")) == {"frozen", "frozen (lr=0.01)"}


def test_crowded_training_curves_are_also_drawn_a_panel_per_row(tmp_path):
    """Up to four rows' F1 curves share one axes; with more, they cross and hide one another, so the report also
    draws ``curves_by_method``: a panel per row."""
    from benchmark.report.charts import CROWDED_CURVES

    runs = tmp_path / "runs"
    names = list_methods()[:CROWDED_CURVES + 1]
    for seed, method in itertools.product((0, 1), names):
        run = _finished(runs, seed, method)
        result = json.loads((run / "result.json").read_text())
        result["history"] = [{"epoch": e, "loss": 1 / e, "f1": 0.3 + 0.1 * e + seed / 50} for e in (1, 2, 3)]
        (run / "result.json").write_text(json.dumps(result))
    written, _ = write_report(load_runs(runs), tmp_path / "rep")
    assert {p.name for p in written} >= {"curves.png", "curves_by_method.png", "curves_by_method.svg"}
    with Image.open(tmp_path / "rep" / "synthetic" / "curves_by_method.png") as im:
        assert im.size[0] > 1000 and im.size[1] > 400  # a grid of panels, not one axes
    written, _ = write_report(load_runs(runs, method=names[0]), tmp_path / "one")
    assert "curves.png" in {p.name for p in written} and "curves_by_method.png" not in {p.name for p in written}
    for method in names[CROWDED_CURVES:]:
        for run in runs.glob(f"synthetic_{method}_*"):
            shutil.rmtree(run)
    written, _ = write_report(load_runs(runs), tmp_path / "four")
    assert "curves.png" in {p.name for p in written} and "curves_by_method.png" not in {p.name for p in written}


def test_unfinished_runs_are_named_with_how_to_finish_them(tmp_path, bench_proc):
    """A run stopped in its first training (a checkpoint) or in a --force rerun (its earlier result set aside) has
    no result.json: the report leaves it out and says so, rather than show a row with a seed fewer."""
    runs = tmp_path / "runs"
    _finished(runs, 0)
    first = _finished(runs, 1)
    (first / "result.json").unlink()
    (first / "checkpoint.pt").write_bytes(b"epoch 1")
    again = _finished(runs, 2)
    (again / "result.json").rename(again / "result.previous.json")
    (again / "checkpoint.pt").write_bytes(b"epoch 1")
    other = _finished(runs, 3, method="vpt")
    (other / "result.json").unlink()
    (other / "checkpoint.pt").write_bytes(b"epoch 1")
    (runs / "notes").mkdir()  # a folder that is no run: not a problem of the report's
    assert {Path(p).name for p, _ in load_runs(runs, method="frozen").problems} == {first.name, again.name}
    r = bench_proc("report", "--runs", runs, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"skipped {first}: run {first.name} has not finished (a checkpoint, no result.json): finish it first by "
        "rerunning its bench run command, which resumes it",
        f"skipped {again}: run {again.name} was stopped while being trained again (bench run --force): finish it by "
        f"rerunning that command without --force, which resumes it; its earlier result is "
        f"{again / 'result.previous.json'}",
        f"skipped {other}: run {other.name} has not finished (a checkpoint, no result.json): finish it first by "
        "rerunning its bench run command, which resumes it"]


def test_the_report_line_counts_in_the_singular_and_plural(tmp_path, bench_proc):
    _finished(tmp_path / "runs", 0)
    r = bench_proc("report", "--runs", tmp_path / "runs", "--out", tmp_path / "rep")
    assert r.returncode == 0 and f"1 run, wrote 5 files under {tmp_path / 'rep'}:" in r.stdout, r.stdout
    _finished(tmp_path / "runs", 1)
    r = bench_proc("report", "--runs", tmp_path / "runs", "--out", tmp_path / "rep")
    assert r.returncode == 0 and "2 runs, wrote 5 files" in r.stdout, r.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_of_another_layout_removes_the_previous_reports_files_and_no_others(tmp_path):
    """Runs of a second set of weights give a folder per backbone: the single-backbone folder's tables would
    stay with old numbers beside them. Only what a report wrote is removed; the user's files stay."""
    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0)
    write_report(load_runs(runs), out)
    assert (out / "synthetic" / "summary.md").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "synthetic" / "draft.tex").write_text("mine")
    _finished(runs, 0, pretrained="none")
    written, _ = write_report(load_runs(runs), out)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["synthetic", "synthetic_clip-tiny_none", "synthetic_clip-tiny_vtfpar-synthetic"]
    assert sorted(p.name for p in (out / "synthetic").iterdir()) == ["draft.tex"]  # the report's own files gone
    assert (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / ".bench-report.json").read_text())["files"]
    assert sorted(out / f for f in manifest) == sorted(written)
    shutil.rmtree(runs / next(p.name for p in runs.iterdir() if "none" not in json.loads(
        (p / "result.json").read_text())["pretrained"]))  # back to one set of weights
    write_report(load_runs(runs), out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["synthetic"]  # emptied folders removed
    assert (out / "synthetic" / "draft.tex").is_file() and (out / "synthetic" / "summary.md").is_file()


def test_reports_of_one_dataset_each_into_one_folder_keep_each_other(tmp_path):
    """``bench report --dataset mars`` after ``--dataset synthetic``: the synthetic report is not the mars one's
    to remove, and stays listed for the report that covers it next."""
    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0)
    mars = _finished(runs, 1)
    result = json.loads((mars / "result.json").read_text())
    result["config"]["run"]["dataset"] = "mars"
    (mars / "result.json").write_text(json.dumps({**result, "dataset": "mars"}))
    write_report(load_runs(runs, dataset="synthetic"), out)
    write_report(load_runs(runs, dataset="mars"), out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["mars", "synthetic"]
    assert (out / "synthetic" / "summary.md").is_file() and (out / "mars" / "summary.md").is_file()
    listed = json.loads((out / ".bench-report.json").read_text())["files"]
    assert "synthetic/summary.md" in listed and "mars/summary.md" in listed
    (mars / "result.json").unlink()  # the synthetic runs alone: the mars folder is another dataset's, kept
    write_report(load_runs(runs), out)
    assert (out / "mars" / "summary.md").is_file()


def test_a_datasets_folder_and_runs_list_do_not_depend_on_the_other_datasets_reported(tmp_path):
    """Runs of mars on one backbone, of synthetic on two sets of weights: mars's folder is ``mars/`` in a report of
    both and in one of mars alone (``--dataset mars`` replaces it, rather than write ``mars_<backbone>/`` beside
    it), and each folder lists its own table's runs in its runs.csv, which a filtered report replaces with it."""
    import pandas as pd

    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0)
    _finished(runs, 0, pretrained="none")
    mars = _finished(runs, 1)
    result = json.loads((mars / "result.json").read_text())
    result["config"]["run"]["dataset"] = "mars"
    (mars / "result.json").write_text(json.dumps({**result, "dataset": "mars"}))
    write_report(load_runs(runs), out)
    folders = ["mars", "synthetic_clip-tiny_none", "synthetic_clip-tiny_vtfpar-synthetic"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == folders
    listed = {f: list(pd.read_csv(out / f / "runs.csv")["run_id"]) for f in folders}
    assert listed == {"mars": [mars.name], **{f: [r.name for r in runs.iterdir() if r != mars and json.loads(
        (r / "result.json").read_text())["pretrained"] == f.rsplit("_", 1)[1]] for f in folders[1:]}}
    assert len(pd.read_csv(out / "runs.csv")) == 3
    before = _files(out)
    write_report(load_runs(runs, dataset="mars"), out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == folders
    after = _files(out)
    assert {f for f in after if after[f] != before.get(f)} <= {"runs.csv", ".bench-report.json"} | {
        f for f in after if f.startswith("mars/")}  # the synthetic tables and their runs.csv stay as they were
    assert all(after[f] == before[f] for f in before if f.startswith("synthetic"))
    assert list(pd.read_csv(out / "mars" / "runs.csv")["run_id"]) == [mars.name]
    vpt = _finished(runs, 0, method="vpt", pretrained="none")  # --method vpt: one backbone of synthetic's two
    write_report(load_runs(runs, method="vpt"), out)
    assert list(pd.read_csv(out / "synthetic_clip-tiny_none" / "runs.csv")["run_id"]) == [vpt.name]
    assert not (out / "synthetic").exists()


def test_each_table_says_what_its_own_runs_memory_is(tmp_path):
    """Runs of one dataset measured on a GPU (CUDA allocator) and of another on a CPU (process RSS): each table's
    note and memory chart name its own runs' kind, and a table holding both says so."""
    runs = tmp_path / "runs"

    def measured(run: Path, kind: str, dataset: str = "synthetic") -> None:
        r = json.loads((run / "result.json").read_text())
        r["config"]["run"]["dataset"] = r["dataset"] = dataset
        size = {"max_allocated_bytes": 2**31} if kind == "cuda" else {"peak_rss_bytes": 2**30}
        r["memory"] = {"train_step": {"kind": kind, **size}}
        (run / "result.json").write_text(json.dumps(r))

    measured(_finished(runs, 0, "frozen"), "cuda", "mars")
    measured(_finished(runs, 1, "frozen"), "cpu_peak_rss")
    measured(_finished(runs, 1, "lora"), "cpu_peak_rss")
    write_report(load_runs(runs), tmp_path / "rep")
    note = {d: (tmp_path / "rep" / d / "summary.md").read_text().split("- Memory: ")[1].split(".\n")[0]
            for d in ("mars", "synthetic")}
    assert note == {"mars": "peak torch.cuda.max_memory_allocated per phase",
                    "synthetic": "CPU process peak RSS per phase (includes weights and libraries)"}
    measured(_finished(runs, 2, "frozen"), "cuda")  # a GPU run among the CPU ones
    write_report(load_runs(runs), tmp_path / "rep")
    assert "for the runs on a GPU, CPU process peak RSS per phase (includes weights and libraries) for the others, " \
        "which do not compare" in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()


def test_groups_whose_names_read_alike_as_folders_each_get_one(tmp_path):
    """Weights "w/a.pt" and "w_a.pt" make one folder name: the second group's folder takes a number."""
    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0, pretrained="w/a.pt")
    _finished(runs, 0, pretrained="w_a.pt")
    written, _ = write_report(load_runs(runs), out)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["synthetic_clip-tiny_w_a.pt", "synthetic_clip-tiny_w_a.pt_2"]
    assert sum(p.name == "summary.md" for p in written) == 2


def test_a_killed_reports_staging_folder_is_removed_by_a_later_report_once_abandoned(tmp_path):
    import os
    import time

    from benchmark.report.write import ABANDONED_STAGING_SECONDS, STAGING_PREFIX

    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0)
    old, fresh = out / f"{STAGING_PREFIX}old", out / f"{STAGING_PREFIX}fresh"  # fresh: a report being built now
    for folder in (old, fresh):
        (folder / "synthetic").mkdir(parents=True)
    past = time.time() - ABANDONED_STAGING_SECONDS - 60
    os.utime(old, (past, past))
    write_report(load_runs(runs), out)
    assert not old.exists() and fresh.is_dir()


def test_a_run_folder_that_cannot_be_searched_is_passed_over(tmp_path, monkeypatch):
    """Another user's 0700 folder (or lost+found) among the runs: Python 3.11's pathlib raises PermissionError
    looking inside it (made to here: tests run as a user whom permissions may not stop)."""
    import benchmark.report.runs as reading

    runs = tmp_path / "runs"
    _finished(runs, 0)
    (runs / "lost+found").mkdir()
    real = reading.unfinished_run

    def refused(folder):
        if folder.name == "lost+found":
            raise PermissionError(13, "Permission denied", str(folder / "result.json"))
        return real(folder)

    monkeypatch.setattr(reading, "unfinished_run", refused)
    assert reading._unfinished_runs(runs, None, None) == []


def test_a_report_never_replaces_files_no_report_wrote(tmp_path, bench_proc):
    """``--out`` holding files of the user's where the report would write its own (``runs.csv``): one line naming
    them, exit 2, every file as it was; the report's own files (listed in its manifest) are replaced as before."""
    runs, out = tmp_path / "runs", tmp_path / "paper"
    _finished(runs, 0)
    out.mkdir()
    (out / "runs.csv").write_text("my own runs table")
    (out / "draft.md").write_text("my draft")
    r = bench_proc("report", "--runs", runs, "--out", out)
    assert r.returncode == 2, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line == (f"error: --out {out} holds runs.csv, which this report would replace, and no .bench-report.json "
                    "there lists them as a report's (a report of an earlier version: remove them): move them away or "
                    "choose another --out"), line
    assert sorted(p.name for p in out.iterdir()) == ["draft.md", "runs.csv"]
    assert (out / "runs.csv").read_text() == "my own runs table"
    (out / "runs.csv").unlink()
    for _ in range(2):  # the second replaces the first's files, which its manifest lists
        r = bench_proc("report", "--runs", runs, "--out", out)
        assert r.returncode == 0, r.stderr
    assert (out / "draft.md").read_text() == "my draft" and (out / "runs.csv").read_text() != "my own runs table"
    for damaged in ("{bad", "[1, 2]"):  # a manifest that cannot be read is said as such, and nothing is replaced
        (out / ".bench-report.json").write_text(damaged)
        r = bench_proc("report", "--runs", runs, "--out", out)
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and line.startswith(f"error: --out {out} holds ") and line.endswith(
            ", which this report would replace, and .bench-report.json there is damaged (it lists no report's "
            "files), so they are not surely a report's: move them away or choose another --out"), line
        assert (out / "draft.md").read_text() == "my draft"


def test_an_earlier_report_without_a_manifest_is_named_not_removed(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "rep"
    (out / "synthetic").mkdir(parents=True)
    (out / "synthetic" / "summary.csv").write_text("old numbers")
    _finished(runs, 0)
    _finished(runs, 0, pretrained="none")
    warned = []
    write_report(load_runs(runs), out, warned.append)
    assert (out / "synthetic" / "summary.csv").read_text() == "old numbers"
    assert warned == [f"{out / 'synthetic'} holds a summary.csv this report did not write (it wrote "
                      f"{out / 'synthetic_clip-tiny_none'}, {out / 'synthetic_clip-tiny_vtfpar-synthetic'}): if an "
                      "earlier report wrote it, its tables are out of date; remove that folder"]


def test_a_report_stopped_while_built_leaves_the_previous_one_whole(tmp_path, bench_proc, monkeypatch):
    """Ctrl-C after some of the new files are written: --out holds the previous report, every file as it was, and
    the line says so; stopped while the files are moved into place, the move ends first."""
    import os
    import signal

    import benchmark.report.write as writing

    runs, out = tmp_path / "runs", tmp_path / "rep"
    _finished(runs, 0)
    charts, move = writing.charts, writing._move

    def charts_then_ctrl_c(*args, **kwargs):
        written = charts(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return written

    monkeypatch.setattr(writing, "charts", charts_then_ctrl_c)
    r = bench_proc("report", "--runs", runs, "--out", out)
    assert r.returncode == 130 and r.stderr.strip() == (
        f"stopped (interrupted) before the report was written: nothing was written to {out}; rerun the same command "
        "to write it"), r.stderr
    assert list(out.iterdir()) == []
    monkeypatch.setattr(writing, "charts", charts)
    assert bench_proc("report", "--runs", runs, "--out", out).returncode == 0
    before = _files(out)
    _finished(runs, 1)
    monkeypatch.setattr(writing, "charts", charts_then_ctrl_c)
    r = bench_proc("report", "--runs", runs, "--out", out)
    assert r.returncode == 130 and r.stderr.strip() == (
        f"stopped (interrupted) before the report was written: the report in {out} is the previous one, unchanged; "
        "rerun the same command to write it"), r.stderr
    assert _files(out) == before  # no staging folder left either
    monkeypatch.setattr(writing, "charts", charts)

    def move_then_ctrl_c(*args):
        move(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(writing, "_move", move_then_ctrl_c)
    r = bench_proc("report", "--runs", runs, "--out", out)
    assert r.returncode == 130 and r.stderr.strip() == (
        f"stopped (interrupted) after the report was written to {out} in full"), r.stderr
    assert pd.read_csv(out / "synthetic" / "summary.csv")["seeds"].tolist() == [2]
    assert sorted(_files(out)) == sorted(before)


def test_a_table_whose_rows_were_measured_on_other_machines_says_which_and_its_memory_batches(tmp_path):
    """Rows measured on a GPU next to rows measured on a CPU (a Ray sweep over mixed nodes): each row's costs are
    its own machine's, so the table says which rows compare; a row whose seeds were measured on both shows no costs
    and is not named. The memory note says at which batch each memory column was measured."""
    runs = tmp_path / "runs"
    gpu = "cuda (NVIDIA H100 80GB HBM3)"
    machines = {"frozen": ("cpu", "cpu"), "lora": (gpu, gpu), "vpt": ("cpu", gpu)}
    for method, devices in machines.items():
        for seed, device in enumerate(devices):
            path = _finished(runs, seed, method, sets=("train.amp=off",)) / "result.json"
            r = json.loads(path.read_text())
            r["env"] = {"device": device, "host": "node-a", "torch_threads": 4}
            peak = {"kind": "cuda", "max_allocated_bytes": 2**28} if device == gpu else {"kind": "cpu_peak_rss",
                                                                                         "peak_rss_bytes": 2**30}
            r["memory"] = {"train_step": peak, "train_batch": 32, "eval_batch": 64}
            path.write_text(json.dumps(r))
    write_report(load_runs(runs), tmp_path / "rep")
    summary = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    said = [line for line in summary.splitlines() if "different machines" in line]
    assert said == ["Memory and time (and the memory and latency charts) come from different machines, and compare "
                    f"only between rows of one: frozen on cpu (node-a, 4 threads); lora on {gpu}."], summary
    assert "train mem at the training batch (32 clips), infer mem at the evaluation batch (64 clips)" in summary
    path = next(runs.glob("synthetic_lora_*_s0_*")) / "result.json"  # a row of a machine that measured nothing
    path.write_text(json.dumps({**json.loads(path.read_text()), "memory": {}}))
    path = next(runs.glob("synthetic_lora_*_s1_*")) / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "memory": {}}))
    write_report(load_runs(runs), tmp_path / "rep")
    assert "different machines" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    for method in ("lora", "vpt"):  # one machine left: nothing to say
        shutil.rmtree(next(runs.glob(f"synthetic_{method}_*_s0_*")))
        shutil.rmtree(next(runs.glob(f"synthetic_{method}_*_s1_*")))
    write_report(load_runs(runs), tmp_path / "rep")
    assert "different machines" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()


def test_memory_and_time_of_seeds_measured_on_other_devices_are_not_averaged():
    """Two seeds of one experiment, one on a GPU and one on a CPU: F1 averages, bytes and clips/s are left out
    (shown as -), not a mean of CUDA allocator bytes and CPU RSS; seeds of one device still average."""
    from benchmark.report.tables import summarise

    def run(seed, label, device, mem, rate):
        return {"run_id": f"{label}{seed}", "dataset": "synthetic", "method": "frozen", "backbone": "clip-tiny (none)",
                "seed": seed, "f1": 0.4 + seed / 10, "mA": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5,
                "trainable_params": 10, "total_params": 100, "trainable_pct": 10.0, "train_mem_mib": mem,
                "infer_mem_mib": mem / 2, "memory_kind": "cuda" if device.startswith("cuda") else "cpu_peak_rss",
                "gflops": 0.1, "train_clips_per_s": rate, "infer_ms_per_clip": 1000 / rate,
                "infer_clips_per_s": rate, "device": device, "measured_in": "deployment form", "label": label}

    table = pd.DataFrame([run(0, "mixed", "cuda (NVIDIA H100)", 150.0, 4000.0), run(1, "mixed", "cpu", 900.0, 40.0),
                          run(0, "one", "cpu", 900.0, 40.0), run(1, "one", "cpu", 1000.0, 60.0)])
    s = summarise(table).set_index("label")
    assert s.loc["mixed", "f1"] == pytest.approx(0.45) and s.loc["mixed", "gflops"] == pytest.approx(0.1)
    for column in ("train_mem_mib", "infer_mem_mib", "train_clips_per_s", "infer_ms_per_clip", "infer_clips_per_s",
                   "infer_ms_per_clip_std"):
        assert np.isnan(s.loc["mixed", column]), column
    assert s.loc["one", "train_mem_mib"] == pytest.approx(950.0) and s.loc["one", "train_clips_per_s"] == 50.0
    # the seeds' latency spread, which the latency chart's whiskers show: 25 ms and 16.7 ms
    assert s.loc["one", "infer_ms_per_clip_std"] == pytest.approx(np.std([1000 / 40, 1000 / 60], ddof=1))


@pytest.mark.parametrize("column, other", [("compiled", True), ("measured_in", "training form"),
                                           ("measured_in", None), ("threads", 1), ("cpu_host", "node-b")])
def test_memory_and_time_of_seeds_compiled_or_measured_in_another_form_are_not_averaged(column, other):
    """Seeds of one experiment of which one ran with train.compile (not part of a run's setting: same numbers,
    other costs), or was measured in training form (a result of an earlier version: LoRA unmerged) or in no
    recorded form, or on a CPU with another thread count (a Ray task's --cpus-per-run) or on another host: their F1
    averages, their memory and time are left out; seeds that agree still average."""
    from benchmark.report.tables import summarise

    def run(seed, label, **changed):
        return {"run_id": f"{label}{seed}", "dataset": "synthetic", "method": "lora", "backbone": "clip-tiny (none)",
                "seed": seed, "f1": 0.4 + seed / 10, "mA": 0.5, "accuracy": 0.5, "precision": 0.5, "recall": 0.5,
                "trainable_params": 10, "total_params": 100, "trainable_pct": 10.0, "train_mem_mib": 900.0 + seed,
                "infer_mem_mib": 400.0, "memory_kind": "cpu_peak_rss", "gflops": 0.1, "train_clips_per_s": 40.0,
                "infer_ms_per_clip": 25.0, "infer_clips_per_s": 40.0, "device": "cpu", "cpu_host": "node-a",
                "threads": 2, "measured_in": "deployment form", "compiled": False, "label": label, **changed}

    table = pd.DataFrame([run(0, "mixed"), run(1, "mixed", **{column: other}), run(0, "one"), run(1, "one")])
    s = summarise(table).set_index("label")
    assert s.loc["mixed", "f1"] == pytest.approx(0.45) and s.loc["mixed", "seeds"] == 2
    for c in ("train_mem_mib", "infer_mem_mib", "train_clips_per_s", "infer_ms_per_clip", "infer_clips_per_s"):
        assert np.isnan(s.loc["mixed", c]), c
    assert s.loc["one", "train_mem_mib"] == pytest.approx(900.5) and s.loc["one", "infer_ms_per_clip"] == 25.0


def test_a_run_whose_labels_cannot_be_judged_here_is_averaged_in_and_said(tmp_path, bench_proc):
    """A MARS run of 43 attributes from before the later release's bottom type was read as it is now, whose dataset
    root is not on this machine (results copied to make a report): it may be right, so it is averaged in, and the
    report says on stderr which run and why; a stale run is skipped, as before."""
    from vtfpar.data.mars import MARS43_ATTRIBUTES

    runs = tmp_path / "runs"
    run = _finished(runs, 0)
    r = json.loads((run / "result.json").read_text())
    r["data"] = {"attributes": MARS43_ATTRIBUTES.names, "labels_read": 2, "root": str(tmp_path / "gone")}
    (run / "result.json").write_text(json.dumps(r))
    loaded = load_runs(runs)
    assert len(loaded.table) == 1 and loaded.problems == []
    ((path, what),) = loaded.warnings
    assert path == str(run / "result.json") and what.startswith(
        f"run {run.name} is averaged in, but it was trained before the later release's MARS CSV had its bottom type")
    p = bench_proc("report", "--runs", runs, "--out", tmp_path / "rep")
    assert p.returncode == 0 and f"warning: {path}: run {run.name} is averaged in, but" in p.stderr, p.stderr
    assert "1 of 1 runs (frozen) are MARS runs of 43 attributes from before the later release's bottom type" in (
        tmp_path / "rep" / "synthetic" / "summary.md").read_text()  # the shared file says it too
    r["data"]["format"] = "release_csv"  # known to have read that CSV: stale, skipped
    (run / "result.json").write_text(json.dumps(r))
    loaded = load_runs(runs)
    assert loaded.table.empty and loaded.warnings == [] and len(loaded.problems) == 1


def test_a_row_whose_seeds_count_trainable_parameters_differently_says_so(tmp_path):
    """Seeds of one setting from before and after the model dropped its zero-gradient shifts count other trainable
    parameters: the row's count is then a mean no run had, and summary.md and the terminal say which runs differ."""
    from vtfpar.fusion import SHARED_START

    runs = tmp_path / "runs"
    for seed in (0, 1):
        _record_start(_finished(runs, seed, "lora"), SHARED_START)
    warned = []
    write_report(load_runs(runs), tmp_path / "rep", warned.append)
    assert warned == [] and "count trainable" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    older = _finished(runs, 1, "frozen")
    r = json.loads((older / "result.json").read_text())
    (older / "result.json").write_text(json.dumps({**r, "params": {"trainable": 97, "total": 107},
                                                    "fusion_start": SHARED_START}))
    _record_start(_finished(runs, 0, "frozen"), SHARED_START)
    write_report(load_runs(runs), tmp_path / "rep", warned.append)
    (line,) = warned
    said = ("the seeds of frozen (10 and 97) count trainable parameters differently, so the table shows their mean: "
            "they were made by versions whose models differ (runs made before commit 73026ea, for one, also counted "
            "the head's bias and the fusion's last LayerNorm shift")
    assert said in line
    assert f"\n\n{said[0].upper()}{said[1:]}" in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()


def test_the_methods_own_parameters_are_shown_where_the_results_record_them(tmp_path):
    """``params.method`` (what a method trains besides fusion and head): a column of its own, compact, and the x
    axis of f1_vs_params (the frozen baseline, at 0, as a line) where every row records it; results of earlier
    versions lack it: '-' in the column, and the chart falls back to all trainable parameters."""
    from benchmark.report.charts import params_axis
    from benchmark.report.tables import _compact, summarise
    from vtfpar.fusion import SHARED_START

    assert [_compact(n) for n in (0, 512, 2944, 216704, 85_800_000, None)] == ["0", "512", "2.94 k", "217 k",
                                                                               "85.8 M", "-"]
    runs = tmp_path / "runs"
    for seed, method, own in ((0, "frozen", 0), (0, "lora", 16384), (0, "bitfit", 2944)):
        run = _finished(runs, seed, method)
        r = json.loads((run / "result.json").read_text())
        (run / "result.json").write_text(json.dumps({**r, "params": {**r["params"], "method": own},
                                                     "fusion_start": SHARED_START}))
    s = summarise(load_runs(runs).table)
    assert params_axis(s)[0] == "method_params"
    write_report(load_runs(runs), tmp_path / "rep", lambda *_: None)
    md = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    assert "| method params |" in md and "| 16.4 k |" in md and "| 2.94 k |" in md
    assert (tmp_path / "rep" / "synthetic" / "f1_vs_params.png").is_file()
    _record_start(_finished(runs, 0, "vpt"), SHARED_START)  # a result of an earlier version, without params.method
    s = summarise(load_runs(runs).table)
    assert params_axis(s)[0] == "trainable_params"
    write_report(load_runs(runs), tmp_path / "rep", lambda *_: None)
    md = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    assert "| 16.4 k |" in md and md.count("| - |") >= 1 and "| vpt | 1 |" in md


def test_a_report_that_does_not_fit_on_the_disk_is_one_line_and_leaves_nothing(small_disk, bench_proc):
    """Charts are written by matplotlib itself: a disk that fills up while they are drawn ends the report in the
    one line every other write gives (what was kept, and the fix), exit 2, and the staging folder is removed."""
    out = small_disk / "report"
    r = bench_proc("report", "--runs", ROOT / "results" / "reference" / "synthetic" / "runs", "--out", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr == (f"error: could not write the report in {out} (No space left on device): nothing was written "
                        f"to {out}; free space there or choose another --out\n")
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []


def test_rows_are_the_mean_over_seeds_in_registry_order_and_the_front_drops_a_point_beaten_at_equal_cost():
    """A row's score is the mean of its seeds (not another average: with three seeds mean and median differ), its
    std the seeds' sample std; rows follow the registry's order, not the alphabet; of two points at one cost only
    the better is on the Pareto front."""
    from benchmark.report.experiments import registry_order
    from benchmark.report.tables import summarise

    rows = [{"run_id": f"{m}_{s}", "dataset": "synthetic", "backbone": "clip-tiny", "method": m, "label": m,
             "seed": s, "f1": f1} for m, f1s in (("side_tuning", (0.1, 0.2, 0.9)), ("adapter", (0.5, 0.5, 0.5)),
                                                 ("frozen", (0.3, 0.4, 0.5))) for s, f1 in enumerate(f1s)]
    out = summarise(pd.DataFrame(rows))
    assert list(out["method"]) == registry_order(["side_tuning", "adapter", "frozen"]) != sorted(out["method"])
    by = out.set_index("label")
    assert by.loc["side_tuning", "f1"] == pytest.approx(0.4) and by.loc["frozen", "f1"] == pytest.approx(0.4)
    assert by.loc["side_tuning", "f1_std"] == pytest.approx(np.std([0.1, 0.2, 0.9], ddof=1))
    assert by.loc["side_tuning", "seeds"] == 3
    assert list(pareto_front(np.array([1.0, 1.0, 2.0]), np.array([0.5, 0.6, 0.55]))) == [1]
    assert list(pareto_front(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.6, 0.7]))) == [0, 1, 2]


def test_training_flops_counted_two_ways_are_not_averaged_and_inference_flops_are_shown(tmp_path):
    """Results of earlier versions counted training FLOPs as one clip's forward (prompt tuning's text encoder whole
    for every clip), later ones per clip of the training batch: seeds counted both ways show no training FLOPs
    rather than a mean no run measured; the deployed forward's FLOPs have a column of their own."""
    runs = tmp_path / "runs"
    deployed = {"inference_gflops_per_clip": 0.10}
    for seed, flops in enumerate(({"gflops_per_clip": 0.18, **deployed},
                                  {"gflops_per_clip": 0.10, **deployed, "counted_on_batch": 32},
                                  {"gflops_per_clip": 0.10, **deployed, "counted_on_batch": 32})):
        path = _finished(runs, seed, "prompt_tuning") / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "flops": flops}))
    from benchmark.report.tables import display_rows, summarise

    def cells():
        head, rows = display_rows(summarise(load_runs(runs).table))
        return dict(zip(head, rows[0], strict=True))

    assert (cells()["train GFLOPs/clip"], cells()["infer GFLOPs/clip"]) == ("-", "0.100")
    shutil.rmtree(next(runs.glob("*_s0_*")))
    assert (cells()["train GFLOPs/clip"], cells()["infer GFLOPs/clip"]) == ("0.100", "0.100")


def test_a_table_names_the_run_files_of_its_dataset_that_were_left_out(tmp_path):
    """A failed seed leaves a row with a seed fewer: the written report says which file was left out and why, not
    only the terminal; a file left out that is of another dataset (by its run id) is not this table's."""
    runs = tmp_path / "runs"
    _finished(runs, 0, "side_tuning")
    _finished(runs, 0, "frozen")
    failed = _finished(runs, 1, "side_tuning") / "result.json"
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "status": "failed",
                                  "error": "CUDA out of memory"}))
    other = runs / "mars_frozen_ViT-B-16_s0_0123456789"
    other.mkdir()
    (other / "result.json").write_text("{")
    loaded = load_runs(runs)
    assert len(loaded.problems) == 2
    write_report(loaded, tmp_path / "rep")
    summary = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    said = [line for line in summary.splitlines() if line.startswith("Left out")]
    assert said == [f"Left out of this report: 1 run file of synthetic: {failed} (failed run: CUDA out of memory)."]
    write_report(load_runs(runs, method="frozen"), tmp_path / "frozen")  # a failed side_tuning run is not frozen's
    assert "Left out" not in (tmp_path / "frozen" / "synthetic" / "summary.md").read_text()
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "error": "RuntimeError: CUDA error\nat line 2"}))
    write_report(load_runs(runs), tmp_path / "rep")  # an error of several lines: one line of the note still
    assert f"{failed} (failed run: RuntimeError: CUDA error at line 2)." in (
        tmp_path / "rep" / "synthetic" / "summary.md").read_text().splitlines()[2]
    failed.unlink()
    write_report(load_runs(runs), tmp_path / "rep")
    assert "Left out" not in (tmp_path / "rep" / "synthetic" / "summary.md").read_text()


def test_a_score_that_some_seeds_do_not_record_says_over_how_many_it_is_averaged(tmp_path):
    """Grouped F1 recorded by two of three seeds (a result of an earlier version lacks it): its mean is theirs, and
    the cell says 2 of 3 seeds, where the seeds column says 3."""
    from benchmark.report.tables import display_rows, summarise

    runs = tmp_path / "runs"
    for seed in range(3):
        path = _finished(runs, seed, "vpt") / "result.json"
        r = json.loads(path.read_text())
        if seed:
            r["metrics"]["grouped"] = {"f1": 0.6 + seed / 100}
        path.write_text(json.dumps(r))
    head, rows = display_rows(summarise(load_runs(runs).table))
    cell = dict(zip(head, rows[0], strict=True))
    assert cell["seeds"] == "3" and cell["F1 (%)"] == "51.00 ± 1.00"
    assert cell["grouped F1 (%)"] == f"61.50 ± {100 * np.std([0.61, 0.62], ddof=1):.2f} (2/3 seeds)"


def test_rows_trained_on_the_official_schedule_are_told_from_rows_of_the_default_one(tmp_path):
    """train.schedule is in a run's setting only where it is not the default (so older runs keep their ids): the
    report compares rows by it as they trained, so a method on the official curve is not shown beside one on the
    default curve as if alike, and one method on both gets a row for each."""
    runs = tmp_path / "runs"
    _finished(runs, 0, "frozen")
    _finished(runs, 0, "side_tuning", sets=("train.schedule=official",))
    table = load_runs(runs)
    assert sorted(table.table["label"]) == ["frozen (train.schedule=per_step)", "side_tuning (train.schedule=official)"]
    assert table.differing[("synthetic", "clip-tiny (vtfpar-synthetic)")] == ["train.schedule"]
    _finished(runs, 0, "side_tuning")
    assert sorted(load_runs(runs, method="side_tuning").table["label"]) == [
        "side_tuning (train.schedule=official)", "side_tuning (train.schedule=per_step)"]


def test_training_flops_that_older_results_counted_on_one_clip_are_named(tmp_path):
    runs = tmp_path / "runs"
    for method, flops in (("frozen", {"gflops_per_clip": 0.1, "counted_on_batch": 32}),
                          ("prompt_tuning", {"gflops_per_clip": 0.18})):
        path = _finished(runs, 0, method) / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "flops": flops}))
    write_report(load_runs(runs), tmp_path / "rep")
    summary = (tmp_path / "rep" / "synthetic" / "summary.md").read_text()
    assert "the train GFLOPs/clip of prompt_tuning counted one clip's forward" in summary
    assert "of frozen" not in summary


def test_every_cell_of_the_table_sits_under_its_own_column():
    """The Markdown and LaTeX tables are made of ``display_rows``: each value under the column its header names
    (train and inference memory, step rate and latency are easy to swap and all plausible)."""
    from benchmark.report.tables import display_rows

    row = {"label": "lora", "seeds": 3, "f1": 0.5, "f1_std": 0.01, "mA": 0.6, "accuracy": 0.4, "precision": 0.7,
           "recall": 0.55, "grouped_f1": 0.45, "trainable_params": 2.5e6, "trainable_pct": 1.5,
           "method_params": 1234.0, "train_mem_mib": 300.0, "infer_mem_mib": 100.0, "gflops": 17.25,
           "infer_gflops": 9.5, "train_clips_per_s": 42.0, "infer_ms_per_clip": 3.5}
    head, rows = display_rows(pd.DataFrame([row]))
    cell = dict(zip(head, rows[0], strict=True))
    assert cell == {"method": "lora", "seeds": "3", "F1 (%)": "50.00 ± 1.00", "mA (%)": "60.00", "Acc (%)": "40.00",
                    "Prec (%)": "70.00", "Rec (%)": "55.00", "grouped F1 (%)": "45.00",
                    "trainable params": "2.500 M (1.50%)", "method params": "1.23 k", "train mem (MiB)": "300",
                    "infer mem (MiB)": "100", "train GFLOPs/clip": "17.250", "infer GFLOPs/clip": "9.500",
                    "step clips/s": "42.0", "infer ms/clip": "3.50"}


def test_the_parameter_chart_names_a_pareto_front_only_where_it_draws_one(tmp_path):
    """A front of one point (bitfit no better than frozen at no fewer parameters) has no step to draw: its legend
    names no front. With bitfit ahead the front is drawn and named."""
    for name, bitfit_seed in (("tie", 0), ("ahead", 5)):
        runs = tmp_path / name / "runs"
        frozen = _finished(runs, 0, "frozen") / "result.json"
        r = json.loads(frozen.read_text())
        frozen.write_text(json.dumps({**r, "params": {"trainable": 5, "total": 20}}))  # fewer than bitfit's 10
        _finished(runs, bitfit_seed, "bitfit")
        written, _ = write_report(load_runs(runs), tmp_path / name / "rep")
        (svg,) = [p for p in written if p.name == "f1_vs_params.svg"]
        assert ("<!-- Pareto front -->" in svg.read_text()) == (name == "ahead"), name
