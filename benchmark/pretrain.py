"""``bench pretrain-clip``: train, save (safetensors, fp16), reload, evaluate, write the model card."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from benchmark.results import check_not_among_runs
from benchmark.train import _progress
from benchmark.writes import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    check_writable,
    check_writable_folder,
    json_from,
    kept_only_if_used,
    write_target,
)
from vtfpar.backbone import EMBEDDED_WEIGHTS, load_clip, sha256_of
from vtfpar.errors import UserError, one_line
from vtfpar.files import new_temporary, remove_temporaries
from vtfpar.pretrain import PretrainConfig, evaluate, pretrain_clip


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """fp16 safetensors (half the size; the model is fp32 again when loaded), written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def model_card(cfg: PretrainConfig, metrics: dict, history: list[dict], sha: str, size: int, command: str,
               seconds: float, threads: int, file: str = "clip-tiny-synthetic.safetensors",
               embedded: bool = True) -> str:
    """The Markdown card of a weights file ``file``; ``embedded``: it is the file ``--dataset synthetic`` loads."""
    zs = metrics["zero_shot"]
    rows = "\n".join(f"| {g} | {v['classes']} | {v['accuracy']:.3f} | {v['majority']:.3f} |" for g, v in zs.items())
    took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
    about = ("""# clip-tiny-synthetic: the embedded pre-trained tiny CLIP

The default backbone of `--dataset synthetic` (`model.pretrained = "vtfpar-synthetic"`). Loading
checks the sha256 below; a mismatch is an error that says how to restore or regenerate the file.""" if embedded else
             f"""# {Path(file).stem}: a pre-trained tiny CLIP

Made by `bench pretrain-clip` (below). A run loads it with `--backbone {cfg.model} --pretrained FILE`.""")
    return f"""{about}

- **Architecture:** open_clip config `{cfg.model}` (`vtfpar/model_configs/{cfg.model}.json`): ViT image
  tower, 4 layers, width 64, 64 px, patch 8; text tower 2 layers, width 64, context 32; embedding 64.
- **Data:** {cfg.images:,} single frames drawn by the synthetic generator (split `pretrain`, seed {cfg.seed}),
  each with {cfg.captions_per_image} free-text captions that mention a random subset of what the frame shows in
  varied wording (`vtfpar/data/captions.py`; motion is never mentioned). The downstream attribute task
  draws its clips from the `train`/`test` splits with seeds 0, 1, 2..., so no frame is shared.
- **Training:** open_clip `ClipLoss` (symmetric InfoNCE), AdamW (lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}
  on matrices, betas 0.9/0.98), {cfg.warmup_steps} warm-up steps then cosine, batch {cfg.batch_size},
  {cfg.epochs} epochs ({cfg.epochs * (cfg.images // cfg.batch_size)} steps), random horizontal flips;
  final loss {history[-1]['loss']:.4f}, logit scale {history[-1]['logit_scale']:.1f}.
  {took} on CPU with {threads} torch threads, torch {torch.__version__}.
- **Command:** `bench {command}`
- **File:** `{file}`, fp16, {size / 2**20:.1f} MiB,
  sha256 `{sha}`

## Zero-shot numbers on {metrics['heldout_pairs']:,} held-out pairs (split `val`, seed {cfg.seed})

Retrieval among all held-out pairs (chance R@1 = {metrics['chance_r1']:.4f}; captions are partial, so
several frames often fit one caption):

| direction | R@1 | R@5 |
| --- | ---: | ---: |
| image -> text | {metrics['image_to_text_r1']:.3f} | {metrics['image_to_text_r5']:.3f} |
| text -> image | {metrics['text_to_image_r1']:.3f} | {metrics['text_to_image_r5']:.3f} |

Zero-shot attribute classification (one prompt per class, argmax of cosine similarity), against
always answering the most frequent class:

| group | classes | zero-shot accuracy | majority class |
| --- | ---: | ---: | ---: |
{rows}
"""


def check_out(out: Path) -> None:
    """Refuse, before minutes of training, a weights path that could not be written or that would be
    overwritten by its own ``.json`` record or ``.md`` card (both are written next to it), and files there that
    this command did not write: it replaces the three files of an earlier ``bench pretrain-clip --out`` of the
    same name (its record beside them says so), never someone's weights (runs trained on them would no longer
    load: their sha256 changed), card or notes."""
    check_writable(out, "--out", "clip.safetensors")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the weights file must end in .safetensors (its .json and .md are "
                        "written next to it)")
    check_not_among_runs(out, "--out", "the weights", is_file=True)
    check_writable_folder(write_target(out).parent, "choose another --out")  # a file written there, not asked
    record = out.with_suffix(".json")
    if not is_pretrain_record(record):
        there = [p for p in (out, record, out.with_suffix(".md")) if p.exists() or p.is_symlink()]
        if there:
            raise UserError(f"--out {out}: {', '.join(map(str, there))} already there, not written by bench "
                            f"pretrain-clip (no record of it in {record.name}); choose another --out, or move "
                            f"{'it' if len(there) == 1 else 'them'} away first")


def is_pretrain_record(path: Path) -> bool:
    """Whether ``path`` is the ``.json`` record ``bench pretrain-clip`` writes beside its weights."""
    try:
        record = json_from(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and str(record.get("command", "")).startswith("bench pretrain-clip") and \
        isinstance(record.get("sha256"), str)


def _save_pending(model, target: Path) -> Path:
    """The trained weights in a new pending file beside ``target``; one line naming ``target`` if the folder or
    the file cannot be written (nothing is left behind then, and the previous file is untouched)."""
    made: list[str] = []
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        pending = Path(new_temporary(target.parent, target.name, made, suffix=".pending.safetensors"))
        save_weights(model, pending)
    except BaseException as exc:  # a stop (Ctrl-C, SIGTERM) too leaves no pending file
        remove_temporaries(made)
        if not isinstance(exc, OSError) and type(exc).__name__ != "SafetensorError":  # safetensors' disk full
            raise
        raise UserError(f"could not write {target} ({getattr(exc, 'strerror', None) or one_line(exc)[:160]}); "
                        "the previous file is intact; free space there or choose another --out") from None
    return pending


def run_pretrain(cfg: PretrainConfig, out: Path | None, threads: int, progress: bool, command: str, log=print) -> dict:
    """Pretrain, evaluate and write the weights, their record and card, on ``threads`` CPU threads; the process's
    thread count is given back afterwards (a caller in the same process trains on with its own)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # a run refused, stopped or diverged after --out's folder was checked (made) leaves no empty folder behind
        with kept_only_if_used(Path(out).parent if out else EMBEDDED_WEIGHTS["vtfpar-synthetic"]["file"].parent):
            return _run_pretrain(cfg, out, threads, progress, command, log)
    finally:
        torch.set_num_threads(previous)


OPTIONS = {"seed": "--seed", "images": "--images", "heldout": "--heldout", "epochs": "--epochs",
           "batch_size": "--batch-size", "lr": "--lr"}  # the settings the command line takes


def check_embedded_settings(cfg: PretrainConfig, record: Path, given: bool = False) -> None:
    """Refuse, before training, to re-make the embedded weights with other settings than those they were made with
    (``record``: their ``.json``): every synthetic run loads that file and checks its sha256, so a try-out with
    fewer images must go to a file of its own."""
    try:
        made = json_from(record.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        made = asdict(PretrainConfig())
    mine = asdict(cfg)
    other = [f"{flag} {mine[key]:g}" if isinstance(mine[key], float) else f"{flag} {mine[key]}"
             for key, flag in OPTIONS.items() if key in made and made[key] != mine[key]]
    if other:
        weights = record.with_suffix(".safetensors")
        where = (f"--out {weights} is the embedded weights file" if given else
                 f"without --out this would replace the embedded weights {weights}")
        raise UserError(f"pretrain-clip {' '.join(other)}: {where}, which every synthetic run loads and which was "
                        "made with other settings; give --out FILE.safetensors for a model of your own")


def warmup_note(cfg: PretrainConfig) -> str | None:
    """A warm-up as long as the run keeps the learning rate below ``--lr`` throughout: said before training."""
    steps = cfg.epochs * (cfg.images // cfg.batch_size)
    if cfg.warmup_steps < steps:
        return None
    return (f"warning: the learning rate warms up over {cfg.warmup_steps} steps and this run has {steps} "
            f"(--epochs {cfg.epochs} x --images {cfg.images} // --batch-size {cfg.batch_size}): it never reaches "
            f"--lr {cfg.lr:g}, so the model may learn little; give more --images or --epochs, or a smaller "
            "--batch-size")


def _run_pretrain(cfg: PretrainConfig, out: Path | None, threads: int, progress: bool, command: str, log) -> dict:
    embedded = EMBEDDED_WEIGHTS["vtfpar-synthetic"]
    given, out = out is not None, Path(out) if out else embedded["file"]
    check_out(out)
    remaking = out.resolve() == Path(embedded["file"]).resolve()
    if remaking:
        check_embedded_settings(cfg, Path(embedded["file"]).with_suffix(".json"), given)
    if note := warmup_note(cfg):
        log(note)
    t0 = time.time()
    with _progress(progress) as bars:
        def bar(description: str, total: int):
            task = bars.add_task(description, total=total, info="")
            return lambda n: bars.advance(task, n)

        model, history = pretrain_clip(cfg, log=log, bar=bar)
    seconds = time.time() - t0
    # The file is evaluated before it replaces ``out``: stopped during the evaluation, the previous weights and
    # their card stay as they were (the three files are then written one after the other, in milliseconds). The
    # pending file is beside the target (a link's target), so the replace is a rename.
    target = write_target(out)
    pending = _save_pending(model, target)
    try:
        reloaded = load_clip(cfg.model, str(pending))  # the numbers are those of the file, fp16 round trip included
        metrics = evaluate(reloaded, cfg)
        sha, size = sha256_of(pending), pending.stat().st_size
        beside = remaking and sha != embedded["sha256"]
        if beside:
            # Another CPU or torch rounds differently: the embedded file stays (every synthetic run checks its
            # sha256), and the new weights go beside it.
            out = out.with_name(f"{out.stem}.remade{out.suffix}")
            target = write_target(out)
        info = {"config": asdict(cfg), "history": history, "metrics": metrics, "sha256": sha, "bytes": size,
                "seconds": seconds, "threads": threads, "torch": torch.__version__, "command": f"bench {command}"}
        # Re-made weights that went beside the embedded file are meant to replace it: their card is the embedded one's.
        card = model_card(cfg, metrics, history, sha, size, command, seconds, threads,
                          Path(embedded["file"]).name if remaking else out.name, embedded=remaking)
        try:
            os.replace(pending, target)
        except OSError as exc:
            raise UserError(f"could not write {target} ({exc.strerror or exc}); the previous file is intact") from None
    finally:
        pending.unlink(missing_ok=True)
    atomic_write_json(out.with_suffix(".json"), info)
    atomic_write_text(out.with_suffix(".md"), card)
    zs = ", ".join(f"{g} {v['accuracy']:.2f} (majority {v['majority']:.2f})" for g, v in metrics["zero_shot"].items())
    log(f"held-out retrieval R@1 image->text {metrics['image_to_text_r1']:.3f}, text->image "
        f"{metrics['text_to_image_r1']:.3f} (chance {metrics['chance_r1']:.4f}); zero-shot: {zs}")
    log(f"wrote {out} (sha256 {sha}) and its model card {out.with_suffix('.md')}")
    if beside:
        log(f"note: the embedded weights {embedded['file']} are kept: these weights differ (sha256 {sha}, the "
            f"embedded {embedded['sha256']}), as another CPU or torch version rounds differently; to make them the "
            f"default, move the three {out.stem}.* files over the embedded ones and set that sha256 in "
            "EMBEDDED_WEIGHTS (vtfpar/backbone.py)")
    return info
