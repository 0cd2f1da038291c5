"""bench.toml -> typed, validated configuration.

Layers, later wins: dataclass defaults (the paper's setting) < the shipped bench.toml's top-level
tables < its ``[datasets.<name>.*]`` profile of the chosen dataset < the user's config file, if any
(``--config``, $BENCH_CONFIG or ./bench.toml: only what it changes), and its profile < command-line
options < ``--set section.key=value`` (an option and a ``--set`` of one key are refused).
Unknown keys and wrong types are errors that name the file (or the option) and the key. The resolved
config is saved with every run and its hash names the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from methods import get_method, list_methods
from vtfpar.backbone import random_init
from vtfpar.data import MAX_WORKERS, DataSpec, list_datasets
from vtfpar.errors import UserError
from vtfpar.fusion import FusionSpec
from vtfpar.settings import SettingError, check_settings, check_value, setting

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_LIMIT = 2**31  # run.seed is below it (numpy's and torch's seeds take it on every platform)


@dataclass
class RunSection:
    method: str = "side_tuning"  # tuning method (bench list)
    dataset: str = "synthetic"  # synthetic | mars | duke
    seed: int = setting(0, ge=0, lt=SEED_LIMIT)  # seeds data order, init and augmentation
    out: str = "results/runs"  # where run directories go
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self):
        check_settings(self, "run")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):  # which exist is the machine's to say, at the run
            raise SettingError("run.device", f"run.device '{self.device}' is not a device bench runs on (use auto, "
                               "cpu, cuda or cuda:N)")
        if not self.out.strip():  # "" would put run folders in the current folder, where bench report does not look
            raise SettingError("run.out", "run.out (--out) is empty: give the folder run directories go to (default "
                               "results/runs)")
        if self.out.startswith("~"):  # from a config file or --out=~/x: the home folder, not a folder named "~"
            self.out = os.path.expanduser(self.out)


@dataclass
class ModelSection(FusionSpec):
    """The backbone, plus the fusion Transformer's shape (``vtfpar.fusion.FusionSpec``)."""

    backbone: str = "ViT-B-16"  # open_clip model name, or clip-tiny
    pretrained: str = "openai"  # open_clip tag, local checkpoint file, or none

    def __post_init__(self):
        super().__post_init__()
        if not self.pretrained.strip():  # an unset shell variable, say: random weights would be a silent guess
            raise SettingError("model.pretrained", "model.pretrained (--pretrained) is empty: give an open_clip tag "
                               "such as 'openai', a checkpoint file, or none for random weights")
        if random_init(self.pretrained):  # one spelling, so one run id, for random weights
            self.pretrained = "none"


DataSection = DataSpec  # the [data] section is vtfpar's own data spec


MAX_EVAL_BATCH = 1_000_000  # clips scored at once: train.eval_batch_size and --batch-size (a loader takes < 2^63)


@dataclass
class TrainSection:
    epochs: int = setting(30, ge=1)  # paper: 30
    batch_size: int = setting(16, ge=2)  # paper: 16 (the head's BatchNorm needs two clips to train)
    eval_batch_size: int = setting(32, ge=1, le=MAX_EVAL_BATCH)
    lr: float = setting(1e-3, gt=0.0)  # Adam (paper: 1e-3)
    weight_decay: float = setting(0.0, ge=0.0)  # paper code: none in effect
    warmup_epochs: float = setting(5.0, ge=0.0)  # linear warm-up from warmup_lr (paper code: 5 epochs from 1e-5)
    warmup_lr: float = setting(1e-5, ge=0.0)
    min_lr: float = setting(2e-6, ge=0.0)  # cosine floor (paper code: 2e-6)
    schedule: str = setting("per_step", choices=("per_step", "official"))  # benchmark.step.lr_factor
    amp: str = setting("auto", choices=("auto", "bf16", "fp16", "off"))  # auto: bf16 on CUDA, off on CPU
    grad_clip: float = setting(0.0, ge=0.0)  # max grad norm, 0 = off
    loss_normalize: str = setting("batch", choices=("batch", "attributes"))  # eq. 6: paper code | paper text
    threshold: float = setting(0.5, gt=0.0, lt=1.0)  # decision threshold for the metrics (paper code: 0.45)
    eval_every: int = setting(1, ge=1)  # evaluate on the test split every N epochs (and always after the last)
    compile: bool = False  # torch.compile the encoder, fusion and head (same results; pays on long runs)

    def __post_init__(self):
        check_settings(self, "train")


@dataclass
class MeasureSection:
    enabled: bool = True  # measure memory, FLOPs and time after training
    flops: bool = True  # fvcore FLOP count of one forward pass per clip
    warmup: int = setting(2, ge=0)  # untimed iterations before timing
    iters: int = setting(5, ge=1)  # timed iterations (median reported)

    def __post_init__(self):
        check_settings(self, "measure")


SECTIONS = {"run": RunSection, "model": ModelSection, "data": DataSection, "train": TrainSection,
            "measure": MeasureSection}


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    measure: MeasureSection = field(default_factory=MeasureSection)
    method: Any = None  # the chosen method's config dataclass
    source: str = ""  # the config files read, as said on the console (relative where below the working directory)
    source_files: str = ""  # the same, absolute (result.json's config_source: where the run ran is not recorded)
    # Where each setting that is not a default came from ("section.key" -> "bench.toml", "command line"), so
    # that a check only a built model can make (side_tuning's taps against the backbone's depth) names it.
    origins: dict = field(default_factory=dict, repr=False, compare=False)

    def origin_of(self, *keys: str) -> str:
        """Where ``keys`` were set, each place once (``mine.toml + command line``); ``defaults`` if nowhere."""
        return " + ".join(dict.fromkeys(self.origins[k] for k in keys if k in self.origins)) or "defaults"

    def to_dict(self) -> dict:
        d = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        d["method"] = {"name": self.run.method, **dataclasses.asdict(self.method)}
        return d

    def digest(self) -> str:
        """Hash of everything that changes the result (not where it is written, nor workers)."""
        d = result_settings(self.to_dict())
        if sha := self.weights_sha256():  # a local checkpoint: its contents, not only its name
            d["model"]["pretrained_sha256"] = sha
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def weights_sha256(self) -> str | None:
        """The sha256 of the local checkpoint file ``model.pretrained`` names (None for a tag), taken once per
        Config (and carried with it to other processes), so that the run id and the result name the weights the
        run started from even if the file changes while it trains."""
        return self._weights_here()[1]

    def weights_file(self) -> str | None:
        """The absolute path of the local checkpoint file ``model.pretrained`` names, taken with its sha256
        (``weights_sha256``): where the run's weights were, though the file may have moved since."""
        return self._weights_here()[2]

    def _weights_here(self) -> tuple[str, str | None, str | None]:
        from vtfpar.backbone import local_weights, weights_sha256

        key = self.model.pretrained
        if getattr(self, "_weights", (None,))[0] != key:
            sha = weights_sha256(key)
            self._weights = (key, sha, str(local_weights(key).resolve()) if sha else None)
        return self._weights

    def run_id(self) -> str:
        backbone = self.model.backbone.replace("/", "-")
        return f"{self.run.dataset}_{self.run.method}_{backbone}_s{self.run.seed}_{self.digest()}"


def resolved_amp(amp: str, device_type: str) -> str:
    """``train.amp`` as it runs on a device of ``device_type`` (``cuda``, ``cpu``): ``auto`` is bf16 autocast on
    CUDA and off (fp32) elsewhere; every other value is itself."""
    if amp != "auto":
        return amp
    return "bf16" if device_type == "cuda" else "off"


def precision_of(result: dict) -> str | None:
    """The ``train.amp`` a finished run trained under, resolved on the device its ``env`` records (``off``,
    ``bf16``, ``fp16``); None where the result does not say. The run id holds ``train.amp`` as set, and ``auto``
    trains in bf16 on a GPU and in fp32 on a CPU: two runs of one run id may differ in precision."""
    train = (result.get("config") or {}).get("train") if isinstance(result.get("config"), dict) else None
    amp = train.get("amp") if isinstance(train, dict) else None
    device = (result.get("env") or {}).get("device") if isinstance(result.get("env"), dict) else None
    if isinstance(amp, str) and amp != "auto":
        return amp
    if amp != "auto" or not isinstance(device, str):
        return None
    # env.device names the type first: "cpu", "cuda (NVIDIA H100 80GB HBM3)", "cuda:1 (...)"
    return resolved_amp(amp, re.match(r"[a-z]*", device).group())


_DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataSection)}
# Settings added after runs were made, counted in a run id only where they are not their default (what every earlier
# run trained with), so that those runs keep their ids; ``bench report`` compares rows by them at these defaults.
COUNTED_WHEN_SET = {"data.fast_transform": False, "train.schedule": "per_step"}
_SYNTHETIC_DATA_ONLY = ("train_clips", "test_clips")
_REAL_DATA_ONLY = ("root", "format", "annotation", "train_list", "test_list", "eval_all_clips", "fast_transform")


@contextlib.contextmanager
def settings_named(cfg: Config):
    """A setting that passed the config's own checks but that a later one finds wrong (a backbone open_clip does
    not know, an image size that is not the backbone's, side_tuning's taps against the backbone's depth) is named
    with where it was set: the file, its dataset profile or the command line."""
    try:
        yield
    except SettingError as exc:
        raise UserError(f"{cfg.origin_of(*exc.keys)}: {exc}") from None


def result_settings(config: dict) -> dict:
    """The part of a run's configuration (``Config.to_dict()``, as result.json stores it) that changes its
    result: all of it but where it is written, the device it trains on, workers, caches, compilation and
    measurement settings."""
    d = {name: dict(values) if isinstance(values, dict) else values for name, values in config.items()}
    # Settings of the other kind of dataset change nothing: counted at their defaults (as every earlier run id
    # counted them), so that a config file's data.format does not make a synthetic run another experiment.
    synthetic = d["run"].get("dataset") == "synthetic"
    for key in (_REAL_DATA_ONLY if synthetic else _SYNTHETIC_DATA_ONLY):
        if key in d["data"]:
            d["data"][key] = _DATA_DEFAULTS[key]
    d["run"].pop("out", None)
    if "device" in d["run"]:  # where a run trains is not what it is (result.json's env says where): counted as
        d["run"]["device"] = "auto"  # the default, so that the default's run ids stay what they were
    d["data"].pop("num_workers", None)
    d["data"].pop("frame_cache", None)  # bit-identical frames, only faster
    for key, default in COUNTED_WHEN_SET.items():
        section, name = key.split(".")
        if d[section].get(name, default) == default:
            d[section].pop(name, None)
    d["train"].pop("compile", None)  # same results, only faster
    d.pop("measure", None)
    return d


def setting_of(config: dict) -> dict[str, Any]:
    """What a run's seed is drawn *within*: its result settings without the seed, flat (``train.lr``: 0.001).

    Runs with equal settings are repetitions of one experiment, so ``bench report`` averages over them, and
    only over them."""
    d = result_settings(config)
    d["run"].pop("seed", None)
    return {f"{section}.{key}": value for section, values in d.items() if isinstance(values, dict)
            for key, value in values.items()}


SHIPPED_CONFIG = REPO_ROOT / "bench.toml"


def from_shipped_file(origin: str) -> bool:
    """Whether a setting came from the shipped bench.toml: ``origin`` as ``Config.origins`` records it (a file, or
    ``FILE [datasets.NAME]`` for that file's dataset profile, or "command line")."""
    return Path(origin.split(" [")[0]) == SHIPPED_CONFIG


def find_config_files(explicit: str | None) -> list[Path]:
    """The configuration's layers, each read over the one before: the repository's bench.toml (the paper's
    defaults and each dataset's profile), then the user's own file if there is one (``--config``, else
    $BENCH_CONFIG, else ./bench.toml), which needs to hold only what it changes."""
    if not SHIPPED_CONFIG.is_file():  # an install that copied the packages without the checkout they belong to
        raise UserError(f"{SHIPPED_CONFIG} is missing: bench reads its settings (the paper's defaults and each "
                        "dataset's profile) from the bench.toml of its checkout; install it from a checkout with "
                        "pip install -e . (editable), or run python -m benchmark.cli inside one")
    shipped = [SHIPPED_CONFIG]
    user = None
    if explicit is not None and not explicit.strip():  # --config "$UNSET": not silently the defaults
        raise UserError("--config is empty: give a bench.toml file, or leave --config out for the defaults")
    if explicit:
        user = Path(explicit).expanduser()
        if not user.is_file():
            raise UserError(f"{_missing(user)} (pass an existing bench.toml with --config)")
    elif os.environ.get("BENCH_CONFIG"):
        user = Path(os.environ["BENCH_CONFIG"]).expanduser()
        if not user.is_file():
            raise UserError(f"{_missing(user)} (from $BENCH_CONFIG; point it to an existing bench.toml or unset it)")
    else:
        user = Path("bench.toml") if Path("bench.toml").is_file() else None
    if user is None or user.resolve() == SHIPPED_CONFIG.resolve():
        return shipped
    return [*shipped, user]


def _missing(path: Path) -> str:
    """Why ``path`` is not a config file: a folder is named as one (``bench.toml`` inside it, if any, is
    suggested), anything else as not found."""
    if path.is_dir():
        inside = path / "bench.toml"
        hint = f"; did you mean {inside}?" if inside.is_file() else ""
        return f"config file {path} is a folder, not a TOML file{hint}"
    if path.exists():
        return f"config file {path} is a device, pipe or socket, not a TOML file"
    return f"config file not found: {path}"


def _shown(path: Path) -> str:
    """``path`` relative to the working directory where it is below it (``bench.toml``), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_toml(path: Path) -> dict:
    try:
        # utf-8-sig: editors on Windows save UTF-8 with a byte-order mark, which tomllib rejects.
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc} (fix the syntax)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a TOML file (not UTF-8 text at byte {exc.start}); {_fix_for(path)}") from None
    except OSError as exc:
        raise UserError(f"cannot read the config file {path} ({exc.strerror or exc}); {_fix_for(path)}") from None


def _fix_for(path: Path) -> str:
    """How to put right a config file that cannot be read, by where it came from (``find_config_files``)."""
    if path == SHIPPED_CONFIG:
        return "restore the repository's bench.toml (git checkout bench.toml)"
    if os.environ.get("BENCH_CONFIG") and path == Path(os.environ["BENCH_CONFIG"]).expanduser():
        return "point $BENCH_CONFIG to a UTF-8 bench.toml, or unset it"
    if path == Path("bench.toml"):
        return "./bench.toml is read from the working folder: save it as UTF-8 text, or move it away"
    return "pass a UTF-8 bench.toml with --config"


def _coerce(value: Any, typ: Any, where: str, text: bool = True) -> Any:
    """Check/convert ``value`` to the annotated type ``typ``; ``where`` names the key for errors. ``text``: the value
    may be written as text (``--set key=value`` gives every value so: "3", "true", "0,3,6"); a file's values have
    TOML's types, and one of another type (``seed = "1"``, ``compile = "yes"``) is refused, not converted."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item,) = typing.get_args(typ)
        if isinstance(value, str) and text:
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list, got {value!r}")
        return [_coerce(v.strip() if isinstance(v, str) and text else v, item, where, text) for v in value]
    if origin in (typing.Union, types.UnionType):
        return value
    if isinstance(value, str) and not text and typ in (bool, int, float):
        kind = {bool: "true or false", int: "an integer", float: "a number"}[typ]
        raise UserError(f"{where} must be {kind}, got the string {value!r} (write it without quotes)")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or (isinstance(value, float) and not text):
            raise UserError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise UserError(f"{where} must be an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise UserError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where} must be a number, got {value!r}") from None
    if typ is str:  # --set's text, or a file's string; true is no name of anything
        if isinstance(value, (dict, list, bool)):
            raise UserError(f"{where} must be a string, got {value!r}")
        if not text and not isinstance(value, str):  # a file's number (a folder named 2024 is written "2024")
            raise UserError(f"{where} must be a string, got {value!r} (write it in quotes)")
        return str(value)
    return value


# What other training code calls some settings (``learning_rate`` for ``lr``): said as a guess, never applied.
_OTHER_NAMES = {"learning_rate": "lr", "batch": "batch_size", "bs": "batch_size", "epoch": "epochs",
                "num_epochs": "epochs", "max_epochs": "epochs", "wd": "weight_decay", "workers": "num_workers",
                "num_frames": "frames", "warmup": "warmup_epochs", "precision": "amp", "clip_grad": "grad_clip"}


def _meant(key: str, names: list[str]) -> str | None:
    """The setting of ``names`` that ``key`` most likely means: another code's name for it, or a close spelling."""
    if (other := _OTHER_NAMES.get(key.lower())) in names:
        return other
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
    return close[0] if close else None


def _apply(target: dict[str, dict], table: dict, cls_for: dict[str, type], origin: str,
           origins: dict[str, str] | None = None, *, text: bool = False) -> None:
    """Merge a {section: {key: value}} table into ``target`` after checking keys and types; ``origins``
    records where each ``section.key`` was last set. ``text``: the values are ``--set`` text, converted to each
    setting's type; a file's values must already have it (TOML types)."""
    for section, values in table.items():
        if section not in cls_for:
            raise UserError(f"{origin}: unknown section [{section}] (known: {', '.join(cls_for)})")
        if not isinstance(values, dict):
            raise UserError(f"{origin}: [{section}] must be a table of key = value")
        hints = typing.get_type_hints(cls_for[section])
        for key, value in values.items():
            if key not in hints:
                names = [f.name for f in dataclasses.fields(cls_for[section])]
                guess = _meant(key, names)
                raise UserError(f"{origin}: unknown key '{section}.{key}'"
                                + (f"; did you mean {section}.{guess}?" if guess else "")
                                + f" (known: {', '.join(names)})")
            target.setdefault(section, {})[key] = _coerce(value, hints[key], f"{origin}: {section}.{key}",
                                                          text=text)
            if origins is not None:
                origins[f"{section}.{key}"] = origin


def _check_profile(profile: Any, cls_for: dict[str, type], origin: str, dataset: str) -> None:
    """A dataset's profile is a table that does not choose the dataset, and every key, type and range in it is
    checked, whichever dataset this run uses: a typo in the mars
    profile is found by a synthetic run on a laptop, not by the first mars run on a cluster. (Rules between
    settings are checked with the settings a run resolves to.)"""
    if not isinstance(profile, dict):
        raise UserError(f"{origin}: [datasets.{dataset}] must be a table of sections")
    if isinstance(profile.get("run"), dict) and "dataset" in profile["run"]:
        raise UserError(f"{origin}: [datasets.{dataset}.run] sets dataset, but a profile holds the settings of the "
                        f"dataset it is named for ({dataset}); choose the dataset in [run] or with --dataset")
    where = f"{origin} [datasets.{dataset}]"
    sections, methods_ = _split_methods(profile, where)
    checked: dict[str, dict] = {}
    _apply(checked, {**sections, **methods_}, cls_for, where)
    for section, values in checked.items():
        method = section.split(".", 1)[1] if section.startswith("methods.") else None
        for key, value in values.items():
            try:
                check_value(cls_for[section], key, value, section, method)
            except SettingError as exc:
                raise UserError(f"{where}: {exc}") from None


def _split_methods(table: dict, origin: str) -> tuple[dict, dict]:
    """Separate ``methods.<name>`` tables from the plain sections."""
    table = dict(table)
    methods = table.pop("methods", {})
    if not isinstance(methods, dict):  # 0, "", [] or false too: not an empty table said otherwise
        raise UserError(f"{origin}: [methods] must hold one table per method")
    for name in methods:
        if name not in list_methods():
            raise UserError(f"{origin}: unknown method table [methods.{name}] (known: {', '.join(list_methods())})")
    return table, {f"methods.{k}": v for k, v in methods.items()}


def _parse_set(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = key.strip().split(".")
    if len(parts) == 3 and parts[0] == "methods":
        return f"methods.{parts[1]}", parts[2], value
    if len(parts) != 2:
        raise UserError(f"--set {item!r}: key must be section.key or methods.<name>.key")
    return parts[0], parts[1], value


def from_options(options: dict[str, tuple[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Command-line options ``{"--seed": ("run.seed", value)}`` as ``load_config`` takes them: the overrides by
    section (``{"run": {"seed": value}}``) and the option that gives each key (``{"run.seed": "--seed"}``)."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, value in options.values():
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = value
    return overrides, {key: flag for flag, (key, _) in options.items()}


def load_config(
    config_file: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
    flags: dict[str, str] | None = None,
) -> Config:
    """Resolve the configuration. ``overrides`` = {section: {key: value}} from CLI options, ``flags`` the
    option that gives each of them (``{"run.seed": "--seeds"}``), named when a ``--set`` gives the same key.

    Layers, each over the ones before: every config file (``find_config_files``) with its profile for the
    chosen dataset right after it, then the command line (options, then ``--set``)."""
    cls_for: dict[str, type] = dict(SECTIONS)
    cls_for.update({f"methods.{m}": get_method(m).config_cls for m in list_methods()})
    layers = []
    for path in find_config_files(config_file):
        raw = dict(_read_toml(path))
        origin = str(path)
        profiles = raw.pop("datasets", {})
        if not isinstance(profiles, dict):  # 0, "", [] or false too: not an empty table said otherwise
            raise UserError(f"{origin}: [datasets] must hold one table per dataset")
        unknown = [name for name in profiles if name not in list_datasets()]
        if unknown:
            raise UserError(f"{origin}: [datasets.{unknown[0]}] is no dataset's profile: the datasets are "
                            f"{', '.join(list_datasets())}")
        for name, profile in profiles.items():
            _check_profile(profile, cls_for, origin, name)
        base, base_methods = _split_methods(raw, origin)
        layers.append((origin, {**base, **base_methods}, profiles))

    merged: dict[str, dict] = {}
    origins: dict[str, str] = {}
    cli: dict[str, dict] = {}
    for section, values in (overrides or {}).items():
        cli.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    for item in sets or []:
        section, key, value = _parse_set(item)
        given = cli.get(section, {}).get(key)
        if given is not None and section in (overrides or {}) and overrides[section].get(key) is not None:
            flag = (flags or {}).get(f"{section}.{key}")
            by = f"{flag} ({given})" if flag else f"an option ({given})"
            raise UserError(f"command line: {section}.{key} is given both by {by} and by --set {item.strip()}; "
                            f"give it once{f', with {flag}' if flag else ''}")
        cli.setdefault(section, {})[key] = value
    in_files = [run.get("dataset") for _, base, _ in layers if isinstance(run := base.get("run"), dict)]
    dataset = cli.get("run", {}).get("dataset") or next((d for d in reversed(in_files) if d), RunSection.dataset)

    for origin, base, profiles in layers:
        _apply(merged, base, cls_for, origin, origins)
        # A dataset that is not a name (``--set run.dataset=[0]``) has no profile; its section says what is wrong.
        profile = profiles.get(dataset, {}) if isinstance(dataset, str) else {}  # a table: _check_profile
        if profile:
            prof, prof_methods = _split_methods(profile, f"{origin} [datasets.{dataset}]")
            _apply(merged, {**prof, **prof_methods}, cls_for, f"{origin} [datasets.{dataset}]", origins)
    _apply(merged, cli, cls_for, "command line", origins, text=True)
    source = " + ".join(_shown(Path(origin)) for origin, _, _ in layers) or "defaults"
    source_files = " + ".join(os.path.abspath(origin) for origin, _, _ in layers) or "defaults"

    def where(key: str) -> str:
        """Where ``key`` was set, for an error: the option that gave it (``--seeds``), else its file or the
        command line's ``--set``, else the defaults."""
        section, _, name = key.rpartition(".")
        by_option = (overrides or {}).get(section, {}).get(name) is not None and (flags or {}).get(key)
        return by_option or origins.get(key, "defaults")

    try:
        sections = {name: cls(**merged.get(name, {})) for name, cls in SECTIONS.items()}
    except SettingError as exc:
        raise UserError(f"{where(exc.key)}: {exc}") from None
    if sections["run"].dataset not in list_datasets():
        raise UserError(f"{where('run.dataset')}: unknown dataset '{sections['run'].dataset}': choose one of "
                        f"{', '.join(list_datasets())}")
    if sections["data"].root:  # "MARS/", "./MARS" and "MARS" are one root (and one run id); lexical only, so a
        # root meant for a Ray cluster's nodes is not resolved against this machine's folders
        sections["data"].root = os.path.normpath(sections["data"].root)
    method_name = sections["run"].method
    try:
        get_method(method_name)
    except UserError as exc:
        raise UserError(f"{where('run.method')}: {exc}") from None

    def method_settings(name: str):
        try:
            return get_method(name).config_cls(**merged.get(f"methods.{name}", {}))
        except SettingError as exc:
            raise UserError(f"{where(exc.key)}: {exc}") from None
        except UserError as exc:  # a method's own check of its settings together (lora: targets)
            # Named by where this method's settings were changed: the shipped defaults only if nothing else did.
            given = [o for k, o in origins.items() if k.startswith(f"methods.{name}.")]
            mine = list(dict.fromkeys(o for o in given if not from_shipped_file(o))) or \
                list(dict.fromkeys(given)) or ["defaults"]
            raise UserError(f"{' + '.join(mine)}: {exc}") from None

    method_cfg = method_settings(method_name)
    if (canonical := get_method(method_name).canonical) is not None:
        method_cfg = canonical(method_cfg, sections["model"].backbone)
    for other in list_methods():  # every setting is checked, not only the run's method's (a sweep's next run)
        if other != method_name and f"methods.{other}" in merged:
            method_settings(other)
    return Config(**sections, method=method_cfg, source=source, source_files=source_files, origins=origins)


def config_from_dict(d: dict) -> Config:
    """Rebuild a Config saved in a result.json (for reloading a run), every key and type checked as a config
    file's are (``_apply``): a hand-edited or damaged value is a ``UserError`` naming it, not a TypeError
    deep inside a method."""
    method = dict(d["method"])
    name = method.pop("name")
    sections = {key: d[key] for key in SECTIONS if key in d}
    if name != sections.get("run", {}).get("method", RunSection.method):
        raise ValueError(f"run.method is {sections.get('run', {}).get('method')!r} but the method section is "
                         f"{name!r}")
    cls_for: dict[str, type] = {**SECTIONS, f"methods.{name}": get_method(name).config_cls}
    merged: dict[str, dict] = {}
    origins: dict[str, str] = {}
    _apply(merged, {**sections, f"methods.{name}": method}, cls_for, "result.json", origins)
    # Where the run was written and how many loader workers it had change no result, and ranges a later version
    # put on them must not make a finished run unreadable: taken as they are valid now.
    if not str(merged.get("run", {}).get("out", ".")).strip():
        merged["run"]["out"] = "."
    pretrained = merged.get("model", {}).get("pretrained")
    if isinstance(pretrained, str) and not pretrained.strip():  # what an empty value meant when it was accepted
        merged["model"]["pretrained"] = "none"
    workers = merged.get("data", {}).get("num_workers")
    if type(workers) is int and workers > MAX_WORKERS:
        merged["data"]["num_workers"] = MAX_WORKERS
    try:
        built = {key: cls(**merged.get(key, {})) for key, cls in SECTIONS.items()}
        return Config(**built, method=cls_for[f"methods.{name}"](**merged.get(f"methods.{name}", {})),
                      source="result.json", origins=origins)
    except SettingError as exc:
        raise UserError(f"result.json: {exc}") from None
