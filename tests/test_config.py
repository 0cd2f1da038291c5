import os
import re
from pathlib import Path

import pytest

from benchmark.config import load_config
from tests.test_cli import ROOT
from vtfpar.errors import UserError


def test_dataset_profile_and_cli_layers():
    cfg = load_config(None, {"run": {"dataset": "synthetic"}})
    assert cfg.model.backbone == "clip-tiny" and cfg.method.width == 64  # synthetic profile
    cfg = load_config(None, {"run": {"dataset": "synthetic"}, "train": {"epochs": 2}},
                      ["train.lr=3e-4", "methods.side_tuning.taps=[0, 2]", "model.pretrained=none"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 3e-4 and cfg.method.taps == [0, 2]


def test_paper_defaults_for_real_datasets(tmp_path):
    cfg = load_config(None, {"run": {"dataset": "mars"}})
    assert (cfg.model.backbone, cfg.model.pretrained, cfg.data.frames, cfg.train.batch_size, cfg.train.epochs,
            cfg.train.lr, cfg.method.width, cfg.method.heads, cfg.method.depth) == (
        "ViT-B-16", "openai", 6, 16, 30, 1e-3, 240, 6, 8)


def test_run_id_changes_with_config_but_not_with_workers():
    a = load_config(None, {"data": {"num_workers": 0}})
    b = load_config(None, {"data": {"num_workers": 3}})
    c = load_config(None, {"train": {"lr": 0.5}})
    assert a.run_id() == b.run_id() != c.run_id()


def test_the_schedule_names_a_run_only_where_it_is_not_the_default():
    """``train.schedule`` came after runs were made: the default, per_step, is what they trained with, so it is not
    counted in the run id (a committed reference run keeps its id, and its result.json, which lacks the key, reads
    as per_step); official is another run."""
    import json

    from benchmark.config import config_from_dict, setting_of

    default = load_config(None, {})
    assert default.train.schedule == "per_step"
    assert "train.schedule" not in setting_of(default.to_dict())
    official = load_config(None, {"train": {"schedule": "official"}})
    assert official.run_id() != default.run_id() and setting_of(official.to_dict())["train.schedule"] == "official"
    recorded = json.loads(next(ROOT.glob("results/reference/synthetic/runs/*/result.json")).read_text())
    assert "schedule" not in recorded["config"]["train"]
    cfg = config_from_dict(recorded["config"])
    assert cfg.train.schedule == "per_step" and cfg.run_id() == recorded["run_id"]
    with pytest.raises(UserError, match="train.schedule"):
        load_config(None, {"train": {"schedule": "epoch"}})


def test_the_device_a_run_trains_on_is_not_part_of_the_run():
    """``--device cpu`` and the default on a machine without a GPU are one run (a sweep does not train it twice, the
    report averages their seeds together), as are two GPUs; the default's run id is what it always was."""
    from benchmark.config import setting_of

    runs = [load_config(None, {"run": {"device": device}}) for device in ("auto", "cpu", "cuda", "cuda:1")]
    assert len({cfg.run_id() for cfg in runs}) == 1 and runs[0].run_id() == load_config(None, {}).run_id()
    assert all(setting_of(cfg.to_dict()) == setting_of(runs[0].to_dict()) for cfg in runs)
    assert runs[1].to_dict()["run"]["device"] == "cpu"  # the run still trains where it was told to


def test_settings_of_the_other_kind_of_dataset_do_not_change_the_run():
    """data.format on synthetic clips, or data.train_clips on MARS, changes nothing the run does: the same run
    (and the same experiment in the report), while a setting that applies makes another one."""
    from benchmark.config import setting_of

    def run(dataset, **data):
        cfg = load_config(None, {"run": {"dataset": dataset}, "data": {"root": "MARS", **data}
                                 if dataset != "synthetic" else data})
        return cfg.run_id(), setting_of(cfg.to_dict())

    assert run("synthetic") == run("synthetic", format="release_csv", fast_transform=True, eval_all_clips=True)
    assert run("synthetic")[0] != run("synthetic", train_clips=64)[0]
    assert run("mars") == run("mars", train_clips=64, test_clips=8)
    assert run("mars")[0] != run("mars", format="release_csv")[0] != run("mars", fast_transform=True)[0]


def test_one_root_spelled_several_ways_is_one_run():
    ids, roots = set(), set()
    for root in ("MARS", "MARS/", "./MARS", "MARS//"):
        cfg = load_config(None, {"run": {"dataset": "mars"}, "data": {"root": root}})
        ids.add(cfg.run_id())
        roots.add(cfg.data.root)
    assert len(ids) == 1 and roots == {"MARS"}
    assert load_config(None, {"run": {"dataset": "mars"}, "data": {"root": "/data/MARS/"}}).data.root == "/data/MARS"
    other = load_config(None, {"run": {"dataset": "mars"}, "data": {"root": "/data/MARS-release"}})
    assert other.run_id() not in ids  # another dataset copy (perhaps another annotation) is another run


@pytest.mark.parametrize("text,fragment", [
    ("[train]\nlr_max = 1\n", "unknown key 'train.lr_max'"),
    ("[train]\nepochs = 'ten'\n", "train.epochs must be an integer"),
    ("[trian]\nepochs = 1\n", "unknown section [trian]"),
    ("[methods.nope]\nx = 1\n", "unknown method table [methods.nope]"),
    ("[train\n", "invalid TOML"),
    ("[run]\nmethod = 'nope'\n", "unknown method 'nope'"),
    ("[run]\nmethod = 'lora'\n[methods.lora]\ntargets = []\n", "lora: unknown target module(s) (none given)"),
    ("[datasets.mrs.data]\nroot = '/data/MARS'\n", "[datasets.mrs] is no dataset's profile"),
    ("[datasets.synthetic.run]\ndataset = 'mars'\n", "[datasets.synthetic.run] sets dataset, but a profile holds "
                                                     "the settings of the dataset it is named for (synthetic)"),
    ("[run]\nout = ''\n", "run.out (--out) is empty"),
    ("[model]\npretrained = true\n", "model.pretrained must be a string, got True"),
    ("[run]\ndevice = 'gpu'\n", "run.device 'gpu' is not a device bench runs on (use auto, cpu, cuda or cuda:N)"),
    # another dataset's profile (the run is synthetic): checked now, not on the first mars run
    ("[datasets.mars.train]\nlr = 'abc'\n", "[datasets.mars]: train.lr must be a number"),
    ("[datasets.mars.train]\nepochs = 0\n", "[datasets.mars]: train.epochs must be >= 1, got 0"),
    ("[train]\neval_batch_size = 9223372036854775807\n", "train.eval_batch_size must be >= 1 and <= 1000000"),
    ('[run]\nout = "runs\\u0000x"\n', "run.out holds a NUL character: 'runs\\x00x'; remove it"),
    ('[model]\nbackbone = "clip\\u0000tiny"\n', "model.backbone holds a NUL character"),
    ("[datasets.duke.methods.lora]\nrank = -2\n", "[datasets.duke]: lora: rank must be >= 1, got -2"),
    ("[datasets.duke.methods.lora]\nrnak = 2\n", "[datasets.duke]: unknown key 'methods.lora.rnak'"),
    ("[datasets.duke.trian]\nepochs = 1\n", "[datasets.duke]: unknown section [trian]"),
    ("[datasets]\nmars = 3\n", ": [datasets.mars] must be a table of sections"),
    # not tables, however empty they look
    ("datasets = 0\n", ": [datasets] must hold one table per dataset"),
    ("datasets = []\n", ": [datasets] must hold one table per dataset"),
    ("methods = false\n", ": [methods] must hold one table per method"),
    ("[datasets.synthetic]\nmethods = ''\n", "[datasets.synthetic]: [methods] must hold one table per method"),
    # another method's settings (the run is side tuning's): checked now, not in the sweep's next run
    ("[methods.lora]\nrank = -1\n", "lora: rank must be >= 1, got -1"),
    ("[methods.lora]\ntargets = []\n", "lora: unknown target module(s) (none given)"),
])
def test_bad_files_name_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(str(path))
    assert fragment in str(err.value) and str(path) in str(err.value)


def test_a_bench_config_that_is_not_there_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(UserError, match=r"config file not found: .*missing.toml \(from \$BENCH_CONFIG"):
        load_config(None)
    (tmp_path / "there.toml").write_text("[train]\nepochs = 3\n")
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path / "there.toml"))
    assert load_config(None).train.epochs == 3


def test_an_empty_config_option_is_refused_not_read_as_the_defaults():
    with pytest.raises(UserError, match=r"^--config is empty: give a bench.toml file, or leave --config out"):
        load_config("")


def test_a_folder_given_as_config_is_named_as_a_folder(tmp_path):
    with pytest.raises(UserError, match=r"is a folder, not a TOML file \(pass"):
        load_config(str(tmp_path))
    (tmp_path / "bench.toml").write_text("[train]\nepochs = 3\n")
    with pytest.raises(UserError, match=r"did you mean .*bench.toml\?"):
        load_config(str(tmp_path))


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_bytes("\ufeff[train]\nepochs = 4\n".encode("utf-8"))
    assert load_config(str(path)).train.epochs == 4


def test_bad_set_and_values():
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, sets=["train.lr"])
    with pytest.raises(UserError, match="train.amp must be"):
        load_config(None, sets=["train.amp=fp8"])
    with pytest.raises(UserError, match="side_tuning: width"):
        load_config(None, sets=["methods.side_tuning.width=10", "methods.side_tuning.heads=4"])
    with pytest.raises(UserError, match="unknown method 'nope'"):
        load_config(None, {"run": {"method": "nope"}})
    with pytest.raises(UserError, match="^--method: unknown method 'nope'"):
        load_config(None, {"run": {"method": "nope"}}, flags={"run.method": "--method"})
    with pytest.raises(UserError, match=r"^command line: lora: unknown target module\(s\)"):  # not the shipped file
        load_config(None, {"run": {"method": "lora"}}, ["methods.lora.targets=[]"])
    with pytest.raises(UserError, match=r"^command line: lora: rank must be >= 1, got -1$"):  # not the run's method
        load_config(None, {"run": {"method": "frozen"}}, ["methods.lora.rank=-1"])


def test_an_option_and_a_set_of_the_same_key_are_refused(bench_proc):
    with pytest.raises(UserError, match=r"run.method is given both by an option \(frozen\) and by --set run.method="):
        load_config(None, {"run": {"method": "frozen", "dataset": "synthetic"}}, ["run.method=lora"])
    cfg = load_config(None, {"run": {"dataset": "synthetic"}}, ["train.epochs=1", "train.epochs=3"])
    assert cfg.train.epochs == 3  # repeated --set: the last one, as everywhere
    r = bench_proc("run", "--epochs", "2", "--set", "train.epochs=1")
    assert r.returncode == 2 and r.stderr.startswith(
        "error: command line: train.epochs is given both by --epochs (2) and by --set train.epochs=1; give it once, "
        "with --epochs"), r.stderr


def test_a_user_config_adds_to_the_shipped_one(tmp_path, monkeypatch):
    """``--config`` holds only what it changes: the shipped defaults and dataset profiles stay underneath, and a
    key set in the user's file wins over the shipped profile (it is the more specific choice)."""
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nlr = 3e-4\n\n[datasets.mars.train]\nepochs = 2\n")
    cfg = load_config(str(path), {"run": {"dataset": "synthetic"}})
    assert (cfg.model.backbone, cfg.train.epochs, cfg.train.lr) == ("clip-tiny", 8, 3e-4)  # synthetic profile kept
    assert cfg.source.endswith(f"bench.toml + {path}")
    mars = load_config(str(path), {"run": {"dataset": "mars"}})
    assert (mars.model.backbone, mars.train.epochs, mars.train.lr) == ("ViT-B-16", 2, 3e-4)
    monkeypatch.chdir(tmp_path)  # ./bench.toml is a user file too
    (tmp_path / "bench.toml").write_text("[run]\ndataset = 'mars'\n")
    assert load_config(None).model.backbone == "ViT-B-16"


def test_result_json_names_a_working_directory_config_by_its_absolute_path(tmp_path, monkeypatch):
    """A ``bench.toml`` of the working directory is said as such on the console, and recorded in ``result.json``
    by its absolute path: which folder's file a run read is not to be guessed later."""
    from benchmark.config import SHIPPED_CONFIG
    from benchmark.results import failed_result

    (tmp_path / "bench.toml").write_text("[train]\nlr = 3e-4\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BENCH_CONFIG", raising=False)
    cfg = load_config(None, {"run": {"dataset": "synthetic"}})
    assert cfg.train.lr == 3e-4 and cfg.source == f"{SHIPPED_CONFIG} + bench.toml"
    recorded = failed_result(cfg, "r", RuntimeError("x"))["config_source"]
    assert recorded == f"{SHIPPED_CONFIG} + {tmp_path / 'bench.toml'}"


def test_a_saved_config_round_trips_and_its_values_are_checked():
    from benchmark.config import config_from_dict

    cfg = load_config(None, {"run": {"method": "side_tuning"}}, ["methods.side_tuning.taps=[0, 2]"])
    saved = cfg.to_dict()
    again = config_from_dict(saved)
    assert again.to_dict() == saved and again.run_id() == cfg.run_id()
    for section, key, value, fragment in (("method", "taps", 3, "result.json: methods.side_tuning.taps must be a list"),
                                          ("train", "epochs", "many", "result.json: train.epochs must be an integer"),
                                          ("train", "lr", -1.0, "train.lr must be > 0.0"),
                                          ("data", "no_such_key", 1, "unknown key 'data.no_such_key'")):
        bad = {k: dict(v) for k, v in saved.items()}
        bad[section][key] = value
        with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
            config_from_dict(bad)
    # Settings that change no result, refused in new configs, do not make a finished run unreadable.
    old = {k: dict(v) for k, v in saved.items()}
    old["run"]["out"], old["data"]["num_workers"] = "", 300
    with pytest.raises(UserError):
        load_config(None, sets=["run.out="])
    with pytest.raises(UserError):
        load_config(None, sets=["data.num_workers=300"])
    reread = config_from_dict(old)
    assert (reread.run.out, reread.data.num_workers, reread.run_id()) == (".", 256, cfg.run_id())


def test_shipped_config_lists_every_setting_at_its_default():
    """bench.toml is the settings' reference (README: "holds every setting with a comment"): its top-level
    tables name every field of every section and method, each at the default the code would use without it."""
    import dataclasses
    import tomllib

    from benchmark.config import SECTIONS, SHIPPED_CONFIG
    from methods import get_method, list_methods

    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())
    tables = {**{name: (cls, shipped.get(name, {})) for name, cls in SECTIONS.items()},
              **{f"methods.{m}": (get_method(m).config_cls, shipped.get("methods", {}).get(m, {}))
                 for m in list_methods()}}
    missing, changed = [], []
    for name, (cls, table) in tables.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            if f.name not in table:
                missing.append(f"{name}.{f.name}")
            elif table[f.name] != getattr(defaults, f.name):
                changed.append(f"{name}.{f.name}")
    assert missing == [] and changed == [], (f"bench.toml lacks {missing} or has another default for {changed}: "
                                              "list each setting at its default, with a comment")
    # ... and each says what it is, on its own line, wherever its table stands (the dataset profiles, which only
    # restate values, aside).
    bare, table = [], ""
    for line in SHIPPED_CONFIG.read_text().splitlines():
        if line.startswith("["):
            table = line
        elif re.match(r"\w+ = ", line) and "#" not in line and not table.startswith("[datasets."):
            bare.append(f"{table} {line}")
    assert bare == [], f"bench.toml settings without a comment: {bare}"


def test_the_readme_recipe_for_a_method_names_its_settings_table():
    """A method with settings needs its [methods.<name>] table in bench.toml (the test above): the recipe says so."""
    from benchmark.config import SHIPPED_CONFIG

    recipe = (SHIPPED_CONFIG.parent / "README.md").read_text().split("## Adding a method")[1].split("\n## ")[0]
    assert "`[methods.<name>]` table in `bench.toml`" in recipe


def test_lora_targets_are_a_set():
    """Repeated or reordered targets are the same experiment: one run id, so one row and one mean in the report."""
    def lora(targets: str):
        return load_config(None, {"run": {"method": "lora"}}, [f"methods.lora.targets={targets}"])

    assert lora("v,q,q").method.targets == ["q", "v"]
    assert lora("v,q,q").run_id() == lora("q,v").run_id() != lora("q").run_id()
    assert load_config(None, {"run": {"method": "lora"}}).method.targets == ["q", "k", "v", "out"]


@pytest.mark.parametrize(("text", "args", "fragment"), [
    ("[datasets.mars.model]\nbackbone = 'ViT-Q-99'\n",
     ["run", "--dataset", "mars", "--data-root", "/nonexistent", "--out", "runs"],
     "[datasets.mars]: unknown backbone 'ViT-Q-99'"),
    ("[model]\nbackbone = 'ViT-Q-99'\n", ["data", "check", "--dataset", "mars", "--data-root", "/nonexistent"],
     ": unknown backbone 'ViT-Q-99'"),
    ("[data]\nimage_size = 100\n", ["run", "--dataset", "synthetic", "--out", "runs"],
     "data.image_size 100 differs from backbone "),
])
def test_a_backbone_open_clip_does_not_know_names_the_file_that_chose_it(bench_proc, tmp_path, text, args, fragment):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    r = bench_proc(*[tmp_path / a if a == "runs" else a for a in args], "--config", path)
    error = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and error.startswith(f"error: {path}") and fragment in error, r.stderr
    assert not list((tmp_path / "runs").glob("*"))  # no run folder begun


@pytest.mark.parametrize(("key", "guess"), [("train.learning_rate", "train.lr"), ("train.epoch", "train.epochs"),
                                            ("data.num_frames", "data.frames"),
                                            ("methods.lora.rnak", "methods.lora.rank"), ("train.zzz", None)])
def test_an_unknown_key_guesses_the_setting_meant(key, guess):
    """Another code's name for a setting, or a misspelling, is answered with the likely one (never applied)."""
    with pytest.raises(UserError) as err:
        load_config(None, {"run": {"method": "lora"}}, [f"{key}=1"])
    message = str(err.value)
    assert f"unknown key '{key}'" in message and "(known: " in message, message
    assert (f"; did you mean {guess}? (known: " in message) if guess else "did you mean" not in message, message


def test_a_config_file_that_is_not_text_is_named_with_the_fix_for_where_it_was_found(tmp_path, monkeypatch):
    """``--config``, ``$BENCH_CONFIG`` and a ``./bench.toml`` in the working folder are three ways a file is read:
    the error tells to fix the one that was used (not to pass --config to someone who never did)."""
    binary = b"[train]\nlr = 1e-3 # \xff\xfe\n"
    mine = tmp_path / "mine.toml"
    mine.write_bytes(binary)
    with pytest.raises(UserError, match=r"mine.toml: not a TOML file \(not UTF-8 text at byte 20\); pass a UTF-8 "
                                        r"bench.toml with --config$"):
        load_config(str(mine), {})
    monkeypatch.setenv("BENCH_CONFIG", str(mine))
    with pytest.raises(UserError, match=r"; point \$BENCH_CONFIG to a UTF-8 bench.toml, or unset it$"):
        load_config(None, {})
    monkeypatch.delenv("BENCH_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench.toml").write_bytes(binary)
    with pytest.raises(UserError, match=r"^bench.toml: not a TOML file .*; ./bench.toml is read from the working "
                                        r"folder: save it as UTF-8 text, or move it away$"):
        load_config(None, {})


def test_a_sweep_takes_each_grid_axis_it_is_not_given_from_the_users_config_file(tmp_path, monkeypatch):
    """``[run] dataset = "mars"`` in a config file runs mars for ``bench run``; ``bench sweep`` trained synthetic
    instead, silently. The axes left out are the file's; the shipped bench.toml's method is bench run's default,
    not a grid's (which is every method)."""
    from benchmark.sweep import grid_axes, plan

    monkeypatch.chdir(tmp_path)  # no ./bench.toml of the user's here
    monkeypatch.delenv("BENCH_CONFIG", raising=False)
    mine = tmp_path / "mine.toml"
    mine.write_text('[run]\ndataset = "mars"\nseed = 3\nmethod = "lora"\n')
    assert grid_axes(None, None, None, str(mine)) == ("lora", "mars", "3")
    assert grid_axes("frozen", "synthetic", "0,1", str(mine)) == ("frozen", "synthetic", "0,1")
    assert grid_axes(None, "duke", None, None) == ("all", "duke", "0")
    mine.write_text("[run]\nseed = 2\n")
    grid = plan("frozen", None, None, str(tmp_path / "runs"), ["data.train_clips=8"], str(mine))
    assert [(cfg.run.method, cfg.run.dataset, cfg.run.seed) for cfg in grid] == [("frozen", "synthetic", 2)]


def test_a_tilde_in_an_output_path_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch, bench_proc):
    """``--out=~/x`` (the shell expands ``~`` only at a word's start) and ``out = "~/x"`` in a config file made a
    folder named ``~`` in the working folder, which a later ``rm -rf ~`` to clean it up would turn into a disaster.
    Config files, dataset roots and ``$BENCH_CONFIG`` already expanded it."""
    from benchmark.cli import _path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    assert _path("~/exp") == home / "exp" and _path("a/~") == Path("a/~")
    mine = tmp_path / "mine.toml"
    mine.write_text('[run]\nout = "~/runs"\n')
    assert load_config(str(mine)).run.out == str(home / "runs")
    assert load_config(None, {"run": {"out": "~/other"}}).run.out == str(home / "other")
    r = bench_proc("data", "export", "--count", "1", "--frames", "2", "--out=~/export")
    assert r.returncode == 0, r.stderr
    assert (home / "export" / "labels.csv").is_file() and not (tmp_path / "~").exists()
    r = bench_proc("data", "export", "--count", "1", "--out=~no-such-user-here/x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no user's home folder" in r.stderr, r.stderr


def test_an_install_without_its_checkout_refuses_to_run_on_builtin_defaults(tmp_path):
    """A non-editable install copies the packages but not the checkout's bench.toml (the paper's defaults and the
    datasets' profiles): without it ``bench run`` would train ViT-B-16 on the synthetic clips. It says so instead,
    in one line with the fix, and writes nothing."""
    import shutil
    import subprocess
    import sys

    repo, source, site = Path(__file__).resolve().parents[1], tmp_path / "source", tmp_path / "site"
    source.mkdir()  # a copy: the build writes its build/ and egg-info beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    for package in ("vtfpar", "methods", "benchmark"):
        shutil.copytree(repo / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(site), str(source)], check=True, capture_output=True)
    assert (site / "benchmark" / "config.py").is_file() and not (site / "bench.toml").exists()
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "benchmark.cli", "run", "--epochs", "1"], cwd=work, text=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {site / 'bench.toml'} is missing: bench reads its settings (the paper's defaults and each dataset's "
        "profile) from the bench.toml of its checkout; install it from a checkout with pip install -e . (editable), "
        "or run python -m benchmark.cli inside one"), r.stderr
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("text,said", [
    ('[run]\nseed = "1"', "run.seed must be an integer, got the string '1' (write it without quotes)"),
    ("[run]\nseed = 1.0", "run.seed must be an integer, got 1.0"),
    ('[train]\ncompile = "yes"', "train.compile must be true or false, got the string 'yes' (write it without quotes)"),
    ('[train]\nlr = "3e-4"', "train.lr must be a number, got the string '3e-4' (write it without quotes)"),
    ("[run]\nout = 5", "run.out must be a string, got 5 (write it in quotes)"),
    ("[model]\npretrained = 0", "model.pretrained must be a string, got 0 (write it in quotes)"),
    ('[methods.side_tuning]\ntaps = "0,3"', "methods.side_tuning.taps must be a list, got '0,3'"),
])
def test_a_files_value_of_another_type_is_refused_not_converted(text, said, tmp_path):
    """README: wrong types stop the run. A file's values have TOML's types, so a quoted number or a bare number where
    a name goes is a mistake to say (seed "1" would run seed 1, out = 5 write into a folder "5"); --set, whose values
    are all text, still converts."""
    path = tmp_path / "mine.toml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as err:
        load_config(str(path))
    assert str(err.value) == f"{path}: {said}"
    cfg = load_config(None, sets=["run.seed=1", "train.compile=yes", "train.lr=3e-4", "run.out=5",
                                   "methods.side_tuning.taps=0,3"])
    assert (cfg.run.seed, cfg.train.compile, cfg.train.lr, cfg.run.out) == (1, True, 3e-4, "5")
    path.write_text("[train]\nlr = 1\n")  # an integer where a number goes is one
    assert load_config(str(path)).train.lr == 1.0


def test_an_empty_pretrained_is_refused_and_random_weights_have_one_spelling():
    """An empty ``model.pretrained`` (an unset shell variable in ``--set model.pretrained=$W``) is refused, not read as
    random weights; ``None`` and ``random`` are ``none``, so that they are one run, not three."""
    for value in ("", "  "):
        with pytest.raises(UserError) as err:
            load_config(None, sets=[f"model.pretrained={value}"])
        assert "model.pretrained (--pretrained) is empty: give an open_clip tag such as 'openai'" in str(err.value)
    ids = set()
    for value in ("none", "None", "RANDOM", " none "):
        cfg = load_config(None, sets=[f"model.pretrained={value}"])
        assert cfg.model.pretrained == "none"
        ids.add(cfg.run_id())
    assert len(ids) == 1
    # a finished run's config that recorded an empty value, when it was taken for random weights, still reads
    from benchmark.config import config_from_dict

    recorded = load_config(None).to_dict()
    recorded["model"]["pretrained"] = ""
    assert config_from_dict(recorded).model.pretrained == "none"
