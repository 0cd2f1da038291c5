"""The real ``bench`` command, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = [sys.executable, "-m", "benchmark.cli"]
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--set", "data.train_clips=32", "--set", "data.test_clips=16", "--set",
        "data.num_workers=0", "--no-progress"]


def bench(*args, cwd=ROOT):
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_run_writes_a_complete_result(tmp_path):
    out = tmp_path / ("runs_" + "x" * 150)  # a log line longer than a pipe's 160 columns stays one line
    r = bench("run", "--method", "side_tuning", "--dataset", "synthetic", "--out", str(out), "--seed", "3",
              "--frames", "4", *TINY)
    assert r.returncode == 0, r.stderr
    (run_dir,) = out.iterdir()
    assert f"wrote {run_dir / 'result.json'}" in r.stdout.splitlines(), r.stdout
    result = json.loads((run_dir / "result.json").read_text())
    assert result["seed"] == 3 and result["config"]["data"]["frames"] == 4
    assert result["config"]["data"]["train_clips"] == 32
    assert "baseline: majority" in r.stdout and "wrote" in r.stdout
    assert (run_dir / "model.pt").is_file()


def test_list_shows_every_method_and_dataset():
    r = bench("list")
    assert r.returncode == 0, r.stderr
    import methods

    for name in [*methods.list_methods(), "synthetic"]:
        assert name in r.stdout
    frozen = next(line for line in r.stdout.splitlines() if line.startswith("│ frozen "))
    assert "method's own" in r.stdout and frozen.split("│")[-3].strip() == "0"  # frozen adds no parameters


def test_list_with_settings_one_method_cannot_build_counts_the_others_and_says_why(tmp_path):
    (tmp_path / "two.toml").write_text("[data]\nframes = 2\n")
    r = bench("list", "--config", str(tmp_path / "two.toml"))
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("│ ")}
    assert rows["st_adapter"].split("│")[-2].strip() == "" and rows["side_tuning"].split("│")[-2].strip() != ""
    (said,) = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert said.startswith("warning: st_adapter is not counted: ") and f"{tmp_path / 'two.toml'}: st_adapter: " \
        "temporal kernel size 3 does not fit 2 frames" in said, said  # the file that set the frames, named
    (tmp_path / "resnet.toml").write_text('[model]\nbackbone = "RN50"\n')  # no method can use it: an error
    r = bench("list", "--config", str(tmp_path / "resnet.toml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is not a ViT" in r.stderr and "warning" not in \
        r.stderr, r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--dataset", "nope"], "--dataset: unknown dataset 'nope'"),
    (["--pretrained", "/no/such/file.pt"], "checkpoint file not found: /no/such/file.pt"),
    (["--set", "train.epochz=3"], "unknown key 'train.epochz'"),
    (["--set", "train.eval_every=many"], "train.eval_every must be an integer"),
    (["--set", "methods.lora.rank=0", "--method", "lora"], "lora: rank must be >= 1"),
    (["--set", f"data.train_clips={10**12}"], "data.train_clips must be >= 1 and <= 1000000, got 1000000000000"),
    (["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
     "run.device"),
])
def test_user_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, fragment, bench_proc):
    out = tmp_path / "runs"
    r = bench_proc("run", "--out", str(out), *TINY, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.rglob("result.json"))


def test_bad_config_file_names_the_file(tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[model]\nbackbone = \"clip-tiny\"\nwidth = 1\n")
    r = bench("run", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and str(cfg) in r.stderr and "model.width" in r.stderr


def test_eval_reloads_a_run(runs, tmp_path, bench_here):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["side_tuning"][1], run_dir)  # a run as `bench run` leaves it (the session's)
    result = json.loads((run_dir / "result.json").read_text())
    code, out, err = bench_here("eval", run_dir)
    assert code == 0, err
    f1 = f"{result['metrics']['f1']:.6f}"
    assert f"f1         {f1}   recorded {f1}\n" in out and out.endswith("evaluated on cpu: the same as result.json "
                                                                       "records\n"), out
    code, out, err = bench_here("eval", run_dir, "--batch-size", "3")  # each clip scored alone: memory, not results
    assert code == 0 and out.endswith("evaluated on cpu: the same as result.json records\n"), (out, err)
    for size in ("0", str(2**63)):  # a loader takes no batch of 2^63 clips
        code, out, err = bench_here("eval", run_dir, "--batch-size", size)
        assert code == 2 and err == f"error: --batch-size must be 1 to 1000000 (clips at once), got {size}\n", err
    result["metrics"]["f1"] += 0.01  # a record that is not what the weights give now: said, with how far
    (run_dir / "result.json").write_text(json.dumps(result))
    code, out, err = bench_here("eval", run_dir)
    assert code == 0 and "evaluated on cpu: up to 0.010000 from what result.json records" in out, (out, err)
    assert bench_here("eval", tmp_path / "missing")[0] == 2
    code, out, err = bench_here("eval", run_dir, "--progress")  # a bar over the test clips, as long as it may take
    clips = result["config"]["data"]["test_clips"]
    assert code == 0 and re.search(rf"evaluating .*{clips}/{clips}", out), out


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_standard_output_that_takes_nothing_or_is_closed_is_not_a_traceback():
    """Output redirected to a full disk (/dev/full): one line, exit 2, and no second error from the interpreter's
    flush at exit. A closed standard output (`>&-`): what would go there is dropped, the command still runs."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([*BENCH, "list"], stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr == ("error: cannot write to standard output (No space left on device); "
                                              "redirect it elsewhere\n"), r.stderr
    r = subprocess.run(["bash", "-c", f"{shlex.join(BENCH)} list >&-"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_the_command_ends_after_its_exit_handlers_with_its_code_and_all_its_output(tmp_path):
    """``bench`` ends its process once its work is done (``end_process``, not Python's seconds-long shutdown):
    what it printed arrives whole through a pipe, its exit code is kept, and the exit handlers still run (here
    one that writes a file, as logging's and Ray's write or stop things)."""
    marker = tmp_path / "handler-ran"
    probe = ("import atexit, pathlib, sys\n"
             f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'ran')\n"
             "sys.argv = ['bench', *sys.argv[1:]]\n"
             "from benchmark.cli import entry\n"
             "entry()\n"
             "print('not reached')\n")
    said = {}
    for args, code in ((["run", "--help"], 0), (["run", "--method", "nope"], 2)):
        marker.unlink(missing_ok=True)
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                           timeout=300, env={**os.environ, "COLUMNS": "100"})
        assert r.returncode == code and marker.read_text() == "ran" and "not reached" not in r.stdout, (args, r)
        said[args[-1]] = r
    assert said["--help"].stdout.rstrip().endswith("╯") and "--no-resume" in said["--help"].stdout
    assert said["nope"].stderr.startswith("error: --method: unknown method 'nope'"), said["nope"].stderr
    assert said["nope"].stderr.count("\n") == 1 and said["nope"].stdout == ""


@pytest.mark.parametrize("command", [("run",), ("sweep",), ("data", "check")])
def test_help_shows_bracketed_text_whole(bench_proc, command, monkeypatch):
    """Help texts are rendered as rich markup: ``[datasets.*]`` would be read as a style tag and vanish."""
    monkeypatch.setenv("COLUMNS", "200")
    r = bench_proc(*command, "--help")
    assert r.returncode == 0 and "SECTION.KEY=VALUE  any bench.toml key outside [datasets.*] (repeatable)" in \
        r.stdout, r.stdout


def test_commands_that_build_no_model_do_not_import_the_model_libraries(tmp_path):
    """open_clip (with transformers), timm, peft and torchvision take seconds to import; a report, a refused
    setting or a missing input answers without them (imported where a model is built or a frame decoded)."""
    heavy = ("open_clip", "timm", "peft", "torchvision", "transformers")
    probe = ("import sys\nfrom benchmark.cli import main\nsys.argv = ['bench', *sys.argv[1:]]\ncode = 0\ntry:\n"
             "    main()\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             f"print(code, sorted(m for m in {heavy!r} if m in sys.modules))")
    for args in (["report", "--runs", str(tmp_path / "none")], ["run", "--method", "nope"],
                 ["predict", str(tmp_path / "run"), str(tmp_path / "frames")]):
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert (r.stdout.splitlines() or [""])[-1] in ("0 []", "2 []"), (args, r.stdout, r.stderr)
