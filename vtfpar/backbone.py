"""CLIP backbone: loading from open_clip, freezing, and a layer-tapping vision forward.

Three things live here:

* ``load_clip`` builds any open_clip model from a name and ``pretrained`` = an open_clip tag, a
  local checkpoint file, or ``none`` (random init, with a warning). It never hides a network
  failure behind a traceback: it says how to pass a local file instead.
* ``SplitAttention`` re-expresses ``nn.MultiheadAttention`` with four explicit ``nn.Linear``
  layers (q, k, v, out) and ``scaled_dot_product_attention``. The outputs are equal to the
  original module (tested), but the projections become ordinary ``nn.Linear`` modules that are
  *called*. ``nn.MultiheadAttention`` reads ``out_proj.weight`` directly inside
  ``F.multi_head_attention_forward`` and never calls ``out_proj``, which is why wrapping it with
  a LoRA layer does nothing, and why peft needs a special (and fragile) path for it. With split
  attention, every method sees plain linear layers, and the fused SDPA kernel is used where
  the device has one. Every method gets the same converted backbone, so the comparison stays
  fair.
* ``ClipVision`` runs the image tower block by block so methods can insert tokens (VPT),
  and the side networks can read the tokens after chosen layers ("taps"): tap 0 is the output
  of ``ln_pre`` and tap k the output of block k (the layer numbering of the VTFPAR++ code).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vtfpar.errors import UserError, first_few, one_line, require_file
from vtfpar.settings import SettingError

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
# Weights that ship with the suite: tag -> architecture, file and its sha256 (checked on load).
# Made by ``bench pretrain-clip`` (see the model card next to the file).
EMBEDDED_WEIGHTS = {
    "vtfpar-synthetic": {"model": "clip-tiny", "file": WEIGHTS_DIR / "clip-tiny-synthetic.safetensors",
                         "sha256": "b01707362ad986858449a45ea74f9c3440bcf1cb2897a156ba3cb887cdfddaa2"},
}


@functools.cache
def register_model_configs():
    """open_clip, with the suite's own configs (``clip-tiny``) registered once per process.

    Imported here, on first use, not with this module: with the torchvision and transformers it imports, open_clip
    takes seconds to import, which a command that never builds a model (a report, a refused setting) should not
    wait for."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def _listed_config(backbone: str) -> dict | None:
    """open_clip's config of ``backbone`` if it is a name open_clip lists (as ``load_clip`` takes), else None:
    ``get_model_config`` would read a ``local-dir:`` path's files or download an ``hf-hub:`` config, and fail there
    with its own error."""
    open_clip = register_model_configs()
    return open_clip.get_model_config(backbone) if backbone in open_clip.list_models() else None


def check_towers(backbone: str, config: dict) -> None:
    """Refuse, from its open_clip ``config`` and before a model is built, a backbone whose towers bench cannot read:
    a Hugging Face text tower (open_clip would fetch the text model from the Hub first) or CoCa's image tower, which
    ends in an attentional pooler (it would only fail once its attention is rebuilt)."""
    if hf := (config.get("text_cfg") or {}).get("hf_model_name"):
        raise SettingError("model.backbone", f"backbone '{backbone}' has a Hugging Face text tower ({hf}), which "
                           "bench does not read: use a CLIP model with its own text transformer, such as ViT-B-16")
    if (config.get("vision_cfg") or {}).get("attentional_pool"):
        raise SettingError("model.backbone", f"backbone '{backbone}' is a CoCa model, whose image tower ends in an "
                           "attentional pooler that bench does not read: use a CLIP ViT model, such as ViT-B-16")


def clip_tokenizer(backbone: str, context_length: int | None = None):
    """open_clip's tokenizer of ``backbone``. One that open_clip reads from the Hugging Face Hub (CLIPA's BERT, the
    multilingual models' XLM-V and mT5) is fetched as weights are (``_hub_quietly``: from the cache at once, or not at
    all without network), and a failure is one line, not transformers' traceback."""
    open_clip = register_model_configs()
    config = _listed_config(backbone) or {}
    hf = (config.get("text_cfg") or {}).get("hf_tokenizer_name")
    if not hf:
        return open_clip.get_tokenizer(backbone, context_length=context_length)
    try:
        with _hub_quietly():
            return open_clip.get_tokenizer(backbone, context_length=context_length)
    except OSError as exc:  # the Hub's and transformers' fetch and cache failures
        raise UserError(f"could not fetch backbone {backbone}'s tokenizer '{hf}' from Hugging Face "
                        f"({type(exc).__name__}; no network?): fetch it once where you have network (it is then "
                        "cached under ~/.cache/huggingface), or use a CLIP model with its own tokenizer, such as "
                        "ViT-B-16") from None
    except Exception as exc:  # noqa: BLE001 - a package it needs missing, a transformers it does not work with
        raise UserError(f"could not build backbone {backbone}'s tokenizer '{hf}' ({type(exc).__name__}: "
                        f"{one_line(exc)[:200]}); use a CLIP model with its own tokenizer, such as ViT-B-16") from None


def input_size(backbone: str, requested: int = 0) -> int:
    """The square input size of ``backbone``'s image tower, read from its open_clip config (no model is
    built). ``requested`` is ``data.image_size``: 0 follows the backbone, anything else must equal it."""
    config = _listed_config(backbone)
    if config is None:
        raise SettingError("model.backbone", f"unknown backbone '{backbone}': use an open_clip model name such as "
                           "ViT-B-16 or clip-tiny")
    check_towers(backbone, config)
    size = config["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if requested and requested != size:
        raise SettingError("data.image_size", f"data.image_size {requested} differs from backbone {backbone}'s "
                           f"{size} px; set data.image_size = 0 to follow the backbone", also=("model.backbone",))
    return size


def _looks_like_path(value: str) -> bool:
    return any(s in value for s in ("/", "\\")) or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def local_weights(pretrained: str | None) -> Path | None:
    """The checkpoint file ``pretrained`` names, if it names an existing local file: what ``load_clip`` loads
    from a file (not the suite's embedded weights, not an open_clip tag)."""
    pretrained = (pretrained or "").strip()
    if _pretrained_kind(pretrained) != "file":
        return None
    path = Path(pretrained).expanduser()
    return path if path.is_file() else None


@functools.lru_cache(maxsize=16)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def weights_sha256(pretrained: str | None) -> str | None:
    """The sha256 of the local checkpoint file ``pretrained`` names (None for a tag or none): what a run trained
    on, since a file replaced under the same name is other weights. Cached per file, size and mtime."""
    path = local_weights(pretrained)
    if path is None:
        return None
    try:
        st = path.stat()
        return _cached_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise UserError(f"cannot read the checkpoint file {path} ({exc.strerror or exc}); set model.pretrained / "
                        "--pretrained to a readable file") from None


def random_init(pretrained) -> bool:
    """Whether a ``model.pretrained`` value asks for random weights: ``none`` in any case, ``random``, or empty (which
    runs once recorded; a config now refuses it)."""
    return isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none", "random")


def _pretrained_kind(pretrained: str) -> str:
    """What a stripped ``model.pretrained`` names: ``embedded`` weights of the suite, ``none`` (random init), a local
    ``file``, or an open_clip ``tag``."""
    if pretrained in EMBEDDED_WEIGHTS:
        return "embedded"
    if random_init(pretrained):
        return "none"
    if _looks_like_path(pretrained):
        return "file"
    if Path(pretrained).exists() and pretrained not in _open_clip_tags():  # "./openai" names a file called openai
        return "file"
    return "tag"


@functools.lru_cache(maxsize=1)
def _open_clip_tags() -> frozenset[str]:
    """Every pretrained tag open_clip knows, of any model: a bare name that is one is read as the tag, even where
    the current folder holds a file or folder of that name."""
    return frozenset(tag for _, tag in register_model_configs().list_pretrained())


def check_pretrained(name: str, pretrained: str | None, files: bool = True) -> None:
    """What ``load_clip`` refuses before it loads anything: a backbone open_clip does not know, embedded weights of
    another backbone, a tag the backbone has no weights under and (with ``files``) a local checkpoint file that is
    not there. Cheap: no model is built, no file read, no network asked. ``files`` False: the file is looked for
    elsewhere (on a remote cluster's nodes)."""
    open_clip = register_model_configs()
    if name not in open_clip.list_models():
        raise SettingError(
            "model.backbone", f"unknown backbone '{name}': use an open_clip model name such as ViT-B-16 or clip-tiny "
            "(python -c 'import open_clip; print(open_clip.list_models())' lists them)"
        )
    pretrained = (pretrained or "").strip()
    kind = _pretrained_kind(pretrained)
    if kind == "embedded" and name != (model := EMBEDDED_WEIGHTS[pretrained]["model"]):
        raise UserError(f"pretrained '{pretrained}' is a {model} checkpoint, not {name}: set model.backbone = "
                        f"\"{model}\" or choose other weights")
    if kind == "file" and files:
        require_file(Path(pretrained).expanduser(), "checkpoint file", "set model.pretrained / --pretrained to an "
                     "existing file, an open_clip tag such as 'openai', or 'none'")
    if kind == "tag" and pretrained not in (tags := open_clip.list_pretrained_tags_by_model(name)):
        known = [t for t, e in EMBEDDED_WEIGHTS.items() if e["model"] == name] + list(tags)
        here = f"; the file {pretrained} here is ./{pretrained}" if Path(pretrained).exists() else ""
        raise UserError(
            f"unknown pretrained tag '{pretrained}' for {name}: known tags are {', '.join(known) or 'none'}; "
            f"or pass a local checkpoint file, or none{here}"
        )


def check_weights_fetchable(name: str, pretrained: str | None) -> None:
    """Refuse ``pretrained`` that names open_clip weights (a tag) of ``name`` that this machine can neither read from
    its Hugging Face cache nor fetch (the Hub does not answer): found before a sweep starts, rather than once per run
    of the grid. Other kinds of weights (a file, embedded, none) pass."""
    import huggingface_hub

    tag = (pretrained or "").strip()
    if _pretrained_kind(tag) != "tag":
        return
    model_id, filename = os.path.split(register_model_configs().get_pretrained_cfg(name, tag).get("hf_hub", ""))
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if not model_id or any(isinstance(huggingface_hub.try_to_load_from_cache(model_id, f), str) for f in names):
        return
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or not _hub_reachable():
        raise UserError(f"could not fetch {name} weights '{tag}': they are not in this machine's Hugging Face cache "
                        "and the Hub does not answer (no network?); download them where you have network "
                        "(open_clip.create_model caches them under ~/.cache/huggingface) and pass the file with "
                        "--pretrained /path/to/open_clip_model.safetensors")


def load_clip(name: str, pretrained: str | None) -> nn.Module:
    """Create an open_clip CLIP model.

    ``pretrained``: ``none``/empty for random init; an existing file path; or an open_clip tag
    (``openai``, ``laion2b_s34b_b88k``...). Raises ``UserError`` with the fix on failure (``check_pretrained``
    first).
    """
    if (config := _listed_config(name)) is not None:
        check_towers(name, config)
    check_pretrained(name, pretrained)
    if config is not None and (config.get("text_cfg") or {}).get("hf_tokenizer_name"):
        clip_tokenizer(name)  # fetched before the model is built: without network it fails in a second, not minutes
    open_clip = register_model_configs()
    pretrained = (pretrained or "").strip()
    kind = _pretrained_kind(pretrained)
    if kind == "embedded":
        return _load_embedded(name, pretrained)
    if kind == "none":
        warnings.warn(
            f"backbone {name} is randomly initialised (pretrained='none'); results say nothing about CLIP",
            stacklevel=2,
        )
        return open_clip.create_model(name, pretrained=None)
    if kind == "file":
        path = Path(pretrained).expanduser()
        try:
            model = open_clip.create_model(name, pretrained=str(path))
        except Exception as exc:  # noqa: BLE001 - any load failure is the file's fault here
            raise UserError(f"could not load {path} into {name}: {_load_failure(exc)}") from None
        return _finite(model, f"{path}: its weights", "the file is damaged, or was saved from a model whose training "
                       "diverged; give another copy")
    try:
        with _hub_quietly():
            model = open_clip.create_model(name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - network and cache failures all end the same way
        raise UserError(
            f"could not fetch {name} weights '{pretrained}' ({type(exc).__name__}; no network?): download "
            "them where you have network (open_clip.create_model caches them under ~/.cache/huggingface) "
            "and pass the file with --pretrained /path/to/open_clip_model.safetensors"
        ) from None
    return _finite(model, f"the {name} weights '{pretrained}' open_clip loaded", "its cached copy is damaged: delete "
                   "it (under ~/.cache/huggingface) and fetch it again")


def _finite(model: nn.Module, weights: str, fix: str) -> nn.Module:
    """``model``, whose loaded weights hold no NaN or infinity: such a weight makes every output and loss NaN, which
    training would blame on its learning rate, epochs later."""
    from vtfpar.model import non_finite

    if bad := non_finite(model.state_dict().items()):
        raise UserError(f"{weights} hold NaN or infinite values ({first_few(bad)}): {fix}")
    return model


def _load_failure(exc: BaseException) -> str:
    """Why a checkpoint file did not load, in a few words and with the fix (not torch's advice to unpickle an
    unknown file with ``weights_only=False``, which runs whatever code it holds)."""
    import pickle

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (pickle.UnpicklingError, EOFError)) or text.startswith("Weights only load failed") or \
            type(exc).__name__ in ("KeyError", "SafetensorError", "HeaderTooLarge"):
        return (f"it is not a PyTorch or safetensors checkpoint that loads safely ({type(exc).__name__}); give an "
                "open_clip state dict (.pt/.bin) or .safetensors file")
    if isinstance(exc, StopIteration):  # open_clip reads the first key of the state dict
        return "it holds no weights (an empty state dict); give an open_clip state dict (.pt/.bin) or .safetensors file"
    if isinstance(exc, AttributeError) and "has no attribute" in text and "items" in text:
        held = text.split("'")[1] if text.count("'") >= 2 else "something else"
        return (f"it holds a {held}, not a state dict of named tensors; give an open_clip state dict (.pt/.bin) or "
                ".safetensors file")
    if text.startswith("Error(s) in loading state_dict"):  # torch lists what differs, one kind per line
        return f"its weights are not this architecture's ({_state_dict_differences(str(exc))}): is it a checkpoint " \
               "of another backbone?"
    return f"{type(exc).__name__}: {text[:200]} (is it a checkpoint of this architecture?)"


def _state_dict_differences(message: str) -> str:
    """The missing and unexpected keys and the shape mismatches of torch's ``load_state_dict`` error, a few of each
    (its first line alone says only that there are some)."""
    found: dict[str, list[str]] = {"missing": [], "unexpected": [], "of another shape": []}
    for line in message.splitlines()[1:]:
        line = line.strip().rstrip(".").strip()
        for kind, prefix in (("missing", "Missing key(s) in state_dict:"),
                             ("unexpected", "Unexpected key(s) in state_dict:")):
            if line.startswith(prefix):
                found[kind] += [k.strip().strip('"') for k in line[len(prefix):].split(",") if k.strip()]
        if line.startswith("size mismatch for "):
            name, _, rest = line[len("size mismatch for "):].partition(":")
            shapes = [part.split(")")[0] for part in rest.split("torch.Size(")[1:]]
            found["of another shape"].append(f"{name} {shapes[0]} (the model's {shapes[1]})" if len(shapes) == 2
                                             else name)
    return "; ".join(f"{kind}: {first_few(keys)}" for kind, keys in found.items() if keys) or \
        "torch's state dict check failed"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (always True behind a proxy, which is not tested)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_quietly():
    """open_clip's download without the Hub's retry warnings; without network, in the Hub's offline mode, so
    weights already in its cache load at once and others fail at once (not after five retries, ~50 s)."""
    import logging

    import huggingface_hub.constants as hub

    hub_logger = logging.getLogger("huggingface_hub")
    level, offline = hub_logger.level, hub.HF_HUB_OFFLINE
    hub_logger.setLevel(logging.ERROR)
    if not offline and not _hub_reachable():
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_logger.setLevel(level)
        hub.HF_HUB_OFFLINE = offline


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_embedded(name: str, tag: str) -> nn.Module:
    """One of the suite's own checkpoints, after checking that the file is the one that was shipped."""
    entry = EMBEDDED_WEIGHTS[tag]
    path = Path(entry["file"])
    if not path.is_file():
        raise UserError(f"embedded weights missing: {path} (restore them with 'git checkout -- {path.name}' in "
                        "vtfpar/weights, or regenerate them with 'bench pretrain-clip')")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise UserError(f"embedded weights {path} have sha256 {digest[:12]}..., expected {entry['sha256'][:12]}...: "
                        "the file is damaged or not the shipped one (a Git LFS pointer?); restore it with "
                        "'git checkout' or regenerate it with 'bench pretrain-clip' (see its model card)")
    return register_model_configs().create_model(name, pretrained=str(path))


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class SplitAttention(nn.Module):
    """Drop-in replacement for a batch-first ``nn.MultiheadAttention`` with explicit projections.

    ``forward`` has the call signature open_clip's ``ResidualAttentionBlock.attention`` uses and
    returns ``(output, None)``.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim:
            raise ValueError("SplitAttention supports batch-first self-attention only")
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d) for _ in range(3))
        self.out_proj = nn.Linear(d, d)
        with torch.no_grad():
            w, b = mha.in_proj_weight, mha.in_proj_bias
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(w[i * d:(i + 1) * d])
                lin.bias.copy_(b[i * d:(i + 1) * d] if b is not None else torch.zeros(d))
            self.out_proj.weight.copy_(mha.out_proj.weight)
            self.out_proj.bias.copy_(mha.out_proj.bias if mha.out_proj.bias is not None else torch.zeros(d))
        self.requires_grad_(mha.in_proj_weight.requires_grad)
        self._cache_key: tuple | None = None
        self._cache_params: list[torch.Tensor] = []
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The q, k, v projections as one ``[3d, d]`` weight and ``[3d]`` bias, when all three are plain
        ``nn.Linear`` layers (not LoRA-wrapped). Frozen weights are concatenated once and cached until
        any of them changes (new storage or an in-place write); trainable ones are concatenated per call
        (differentiable), which still dispatches fewer operators than three projections. Under
        ``torch.compile`` the concatenation is part of the graph: the cache's bookkeeping (ids, storage
        pointers, versions) would make the compiler guard on it, recompiling once per layer."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        if any(type(layer) is not nn.Linear or layer.bias is None for layer in layers):
            self.clear_cache()  # a deployment form's, now stale
            return None
        params = [layer.weight for layer in layers] + [layer.bias for layer in layers]
        if any(p.requires_grad for p in params) or torch.compiler.is_compiling():
            return torch.cat(params[:3]), torch.cat(params[3:])
        key = tuple((id(p), p.data_ptr(), p._version) for p in params)
        if self._cache_key != key or any(a is not b for a, b in zip(self._cache_params, params, strict=False)):
            with torch.inference_mode(False), torch.no_grad():  # a cache made in inference mode is usable outside
                self._cache = (torch.cat(params[:3]), torch.cat(params[3:]))
            self._cache_key, self._cache_params = key, params  # held, so no other tensor can take their ids
        return self._cache

    def clear_cache(self) -> None:
        """Drop the concatenated q/k/v weights (and the references to what they were made of): they are not
        registered buffers, so ``Module.to`` would leave them where they are."""
        self._cache_key, self._cache_params, self._cache = None, [], None

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None):
        key = query if key is None else key
        value = query if value is None else value
        n, lq, d = query.shape
        h = self.num_heads

        def heads(x):
            return x.reshape(n, -1, h, d // h).transpose(1, 2)

        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(query.dtype)
        elif attn_mask is not None:
            attn_mask = ~attn_mask  # MHA: True = masked out; SDPA: True = attend
        fused = self._fused_qkv() if key is query and value is query else None
        if fused is not None:  # self-attention: one projection for q, k and v
            q, k, v = F.linear(query, *fused).view(n, lq, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, lq, d)), None


def split_attention_(tower: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` of open_clip blocks in ``tower`` in place."""
    for block in tower.modules():
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention):
            block.attn = SplitAttention(attn)
    return tower


def vision_layers(backbone: str) -> int | None:
    """The number of blocks of ``backbone``'s ViT image tower, read from its open_clip config (no model is built);
    None for a backbone open_clip does not know or a tower that is not a ViT."""
    layers = ((_listed_config(backbone) or {}).get("vision_cfg") or {}).get("layers")
    return layers if isinstance(layers, int) else None


def default_taps(layers: int, count: int = 5) -> list[int]:
    """CLIP layers the side networks read: ``[0, 3, 6, 9, 11]`` for 12 layers, as in the paper's code.

    Generalised as evenly spaced layers from 0 (after ``ln_pre``) to ``layers - 1``; duplicates
    are dropped for shallow towers.
    """
    raw = [round(i * layers / (count - 1)) for i in range(count - 1)] + [layers - 1]
    return sorted(set(raw))


BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


class ClipVision(nn.Module):
    """An open_clip ``VisionTransformer`` run block by block.

    ``forward(images, taps, before_block)`` returns the final tokens (after ``ln_post``, all
    tokens, in the tower's width) and a dict ``tap -> tokens`` for the requested taps.
    ``before_block(i, x)`` may rewrite the token sequence before block ``i`` (VPT uses it).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise UserError(f"backbone image tower {type(visual).__name__} is not a ViT; use a ViT CLIP model")
        if not getattr(visual.transformer, "batch_first", True):
            raise UserError("backbone transformer must be batch-first (open_clip >= 2.24)")
        self.visual = split_attention_(visual)
        self.width = visual.transformer.width
        self.layers = len(visual.transformer.resblocks)
        self.grid = tuple(visual.grid_size)
        self.num_tokens = self.grid[0] * self.grid[1] + 1
        self.image_size = tuple(visual.image_size)
        self.patch_size = tuple(visual.patch_size)
        self.heads = visual.transformer.resblocks[0].attn.num_heads

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def clear_caches(self) -> None:
        """Drop every attention layer's cached q/k/v concatenation (``SplitAttention.clear_cache``): before
        moving the tower off a device, or to free the memory of weights held for a while."""
        for module in self.modules():
            if isinstance(module, SplitAttention):
                module.clear_cache()

    def forward(
        self,
        images: torch.Tensor,
        taps: Sequence[int] = (),
        before_block: BlockHook | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x, out = self._blocks_through(images, taps, before_block, self.layers)
        return self.visual.ln_post(x), out

    def tap_tokens(self, images: torch.Tensor, taps: Sequence[int]) -> dict[int, torch.Tensor]:
        """Only the tokens at ``taps``: the blocks after the last tap and ``ln_post`` do not run.

        For readers of taps that never use the final tokens (the side networks): with the paper's taps
        ``[0, 3, 6, 9, 11]`` on ViT-B/16 the twelfth block is skipped, 1/12 of CLIP's forward FLOPs.
        """
        return self._blocks_through(images, taps, None, max(taps, default=0))[1]

    def _blocks_through(self, images: torch.Tensor, taps: Sequence[int], before_block: BlockHook | None,
                        last: int) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Embeddings, then blocks 1..``last``; the tokens after ``last`` and those at ``taps``."""
        x = self.visual._embeds(images)
        out: dict[int, torch.Tensor] = {}
        if 0 in taps:
            out[0] = x
        for i, block in enumerate(itertools.islice(self.blocks, last)):
            if before_block is not None:
                x = before_block(i, x)
            x = block(x)
            if i + 1 in taps:
                out[i + 1] = x
        return x, out
