"""Measurement conventions: FLOPs against a hand count, timing statistics, memory fields, bench perf."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from benchmark.measure import count_flops, time_it, time_paired
from tests.test_cli import BENCH, ROOT
from vtfpar.backbone import ClipVision, load_clip
from vtfpar.errors import UserError


def test_vit_b16_image_tower_flops_match_the_hand_count():
    torch.manual_seed(0)
    vision = ClipVision(load_clip("ViT-B-16", "none").visual)
    x = torch.randn(1, 3, 224, 224)
    ours = count_flops(vision, x)["total"]
    n, d, layers, patches = 197, 768, 12, 196
    # per block: q, k, v, out (4 N d^2) + MLP (8 N d^2) + QK^T and AV (2 N^2 d);
    # patch embedding: 196 x 768 x (3 x 16 x 16)
    hand = layers * (12 * n * d * d + 2 * n * n * d) + patches * d * 3 * 16 * 16
    # fvcore also counts the 25 LayerNorms (~5 ops per element, ~19 M), hence 0.1% above the matmul count
    assert 0 <= (ours - hand) / hand < 0.005, (ours, hand)
    assert abs(ours / 1e9 - 17.6) < 0.1
    # plain fvcore misses exactly the attention products that the handler adds
    fca = FlopCountAnalysis(vision.eval(), (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert ours - fca.total() == layers * 2 * n * n * d


def test_time_it_statistics():
    stats = time_it(lambda: sum(range(20000)), torch.device("cpu"), warmup=1, iters=7)
    assert stats["min_s"] <= stats["median_s"] <= stats["max_s"] and stats["iters"] == 7 and stats["iqr_s"] >= 0


def test_time_paired_ratio_survives_a_drifting_machine(monkeypatch):
    """The machine slows down 1x, 2x, 3x, ... with every pair of calls: two separate medians would be
    taken on different machines, while each per-pair ratio sees one machine and stays 2. The clock is one that
    the work advances (as a real one would by its duration), so that the machine running the test adds nothing."""
    import types

    import benchmark.measure
    clock, calls = [0.0], [0]
    monkeypatch.setattr(benchmark.measure, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def work(units: float):
        def run():
            clock[0] += 0.01 * units * (1 + calls[0] // 2)
            calls[0] += 1
        return run

    stats = time_paired(work(2), work(1), torch.device("cpu"), warmup=1, iters=6)
    assert calls[0] == 2 + 12 and stats["iters"] == stats["ref"]["iters"] == 6
    assert stats["over_ref"] == pytest.approx(2, rel=1e-9)
    # The reference's own times span the drift (2x .. 7x slower), which one median of each would mix in.
    assert stats["ref"]["max_s"] > 2.5 * stats["ref"]["min_s"]
    # A machine that slows with every call (5% each): within a pair the second call is the slower one, so the
    # order alternates (ref fn, fn ref, ...) and the median of the ratios (2 x 1.05 and 2 / 1.05) stays near 2;
    # ref always first would make every ratio 2.1.
    clock[0], slow = 0.0, [1.0]

    def drifting(units: float):
        def run():
            clock[0] += 0.01 * units * slow[0]
            slow[0] *= 1.05
        return run

    stats = time_paired(drifting(2), drifting(1), torch.device("cpu"), warmup=1, iters=6)
    assert stats["over_ref"] == pytest.approx(2, rel=0.002)


def test_cpu_peak_memory_sees_an_allocation():
    """64 MiB allocated in a phase raise its peak by that much, 4 KiB do not; in a fresh process each (freed memory
    stays resident, so later phases in one process can reuse it)."""
    code = ("import json, sys, torch; from benchmark.measure import peak_memory; n = int(sys.argv[1]); "
            "print(json.dumps(peak_memory(lambda: torch.ones(n // 4).add_(1), torch.device('cpu'))))")
    measured = {}
    for size in (4096, 64 * 2**20):
        r = subprocess.run([sys.executable, "-c", code, str(size)], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        measured[size] = json.loads(r.stdout.strip().splitlines()[-1])
        assert measured[size]["kind"] in ("cpu_peak_rss", "cpu_lifetime_peak_rss")
    if measured[4096]["kind"] != "cpu_peak_rss":
        pytest.skip("this system cannot reset a process's peak RSS: a phase's own increase is not measured")
    assert measured[64 * 2**20]["increase_bytes"] >= 60 * 2**20, measured[64 * 2**20]
    assert measured[4096]["increase_bytes"] < 8 * 2**20, measured[4096]


def test_cpu_peak_memory_does_not_carry_what_earlier_work_freed():
    """A phase's peak RSS is its own, not what ran before it in the process (an earlier run of a sweep): 250 MiB of
    small tensors freed below a live one stay resident unless handed back; measured, they are not counted."""
    code = ("import json, torch; from benchmark.measure import peak_memory; from benchmark.memory import read_kib\n"
            "def rss(): return read_kib('/proc/self/status', ('VmRSS',))['VmRSS']\n"
            "base = rss(); held = [torch.ones(16384) for _ in range(4000)]; keep = torch.ones(16384); alive = rss()\n"
            "del held; mem = peak_memory(lambda: None, torch.device('cpu'))\n"
            "print(json.dumps({'base': base, 'alive': alive, 'start': mem['rss_at_start_bytes'], "
            "'peak': mem['peak_rss_bytes'], 'kind': mem['kind'], 'released': mem['freed_memory_released']}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    rss = json.loads(r.stdout.strip().splitlines()[-1])
    if rss.pop("kind") != "cpu_peak_rss" or not rss.pop("released"):
        pytest.skip("this system cannot reset a process's peak RSS or has no glibc malloc_trim")
    assert rss["alive"] - rss["base"] > 200 * 2**20
    assert rss["peak"] - rss["base"] < 50 * 2**20, {k: v >> 20 for k, v in rss.items()}


def test_bench_perf_reports_ratios(tmp_path):
    r = subprocess.run([*BENCH, "perf", "--methods", "frozen,side_tuning,full_finetune", "--batch", "2",
                        "--warmup", "0", "--iters", "1", "--top-ops", "3", "--out", str(tmp_path)],
                       capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "ERROR" not in r.stderr and "USDT" not in r.stderr, r.stderr  # the CPU profiler's log, on a good run
    (path,) = tmp_path.glob("*.json")
    assert path.name == "clip-tiny_cpu_b2_t6_frozen-side_tuning-full_finetune.json"  # beside, not over, the full table
    out = json.loads(path.read_text())
    assert list(out["methods"]) == ["frozen", "side_tuning", "full_finetune"]  # the table lists them as asked,
    said = [line.split(":")[0] for line in (r.stdout + r.stderr).splitlines() if line.endswith("next to (a) ...")]
    assert said == ["side_tuning", "full_finetune", "frozen"]  # measured as the targets name them (a budget keeps)
    assert {"side_step_over_clip_forward", "full_step_over_side_step", "side_memory_over_full_memory",
            "side_inference_over_clip_forward"} <= set(out["ratios"])
    # Times are compared through each row's own paired CLIP forward
    side, full = out["methods"]["side_tuning"], out["methods"]["full_finetune"]
    assert out["ratios"]["side_step_over_clip_forward"]["value"] == side["step_over_clip_forward"]
    assert side["step_over_clip_forward"] == side["train_step"]["over_ref"] > 0
    assert side["train_step"]["ref"]["iters"] == side["inference"]["ref"]["iters"] == 1
    full_over_side = full["train_step"]["over_ref"] / side["train_step"]["over_ref"]
    assert abs(out["ratios"]["full_step_over_side_step"]["value"] - full_over_side) < 1e-12
    for row in out["methods"].values():
        assert row["memory_train"]["peak_over_imports_bytes"] > 0
        for phase in ("train_step", "inference"):  # the profile: three entries by self time, largest first
            top = row["top_operators"][phase]
            times = [e["ms_per_call"] for e in top["top"]]
            assert len(times) == 3 and times == sorted(times, reverse=True) and times[-1] > 0
            assert all(e["name"].startswith("aten::") for e in top["top"])
            assert 0 < sum(e["share"] for e in top["top"]) <= 1 + 1e-9
        assert "adam" not in str(row["top_operators"]["inference"])  # inference profiles no optimiser step
    assert out["loader"]["workers_0_clips_per_s"] > 0
    assert all(v["met"] is None for v in out["ratios"].values())  # the targets are ViT-B-16's: not judged here
    assert "randomly initialised" not in r.stderr  # costs do not depend on the weights
    md = (tmp_path / path.name.replace(".json", ".md")).read_text()
    assert "on clip-tiny, whose CLIP forward is far smaller" in md
    ops = side["operators_inference"]
    assert f"| side_inference_ops | {ops:,} | <= 800 |" in md  # a count, shown as one (not 500.000)
    assert ", amp off (auto), " in md.splitlines()[2]  # what --amp auto ran as on this device
    assert md.count("|") > 20 and "Where the time goes" in md
    from benchmark.perf import markdown

    assert "| ratio | measured |" in md and "| ratio |" not in markdown({**out, "ratios": {}})  # none: no table
    from benchmark.results import code_version

    assert out["commit"] == code_version()  # what was measured: the checkout's commit (+changes), in the header too
    header = next(line for line in md.splitlines() if line.startswith("backbone "))
    assert header.endswith(out["date"] + (f", code {out['commit']}" if out["commit"] else ""))
    for name in out["methods"]:
        assert f"**{name}, train step**" in md and f"**{name}, inference**" in md
    # Rows are saved as they are measured, beside a complete table of the same name, never over it; the
    # complete result removes them.
    from benchmark.perf import save

    assert f"{path.stem}.partial.json" in r.stdout.replace("\n", "")
    complete = path.read_text()
    stem = save(tmp_path, {**out, "methods": {"frozen": out["methods"]["frozen"]}}, "bench perf", partial=True)
    assert stem.name == f"{path.stem}.partial" and path.read_text() == complete
    assert "partial: 1 of 3 rows measured so far" in Path(f"{stem}.md").read_text()
    save(tmp_path, out, "bench perf")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.with_suffix(".md").name]


def test_targets_are_judged_on_the_backbone_they_are_set_for():
    """The ratios' targets are ViT-B-16's: there a ratio is met or not; on another backbone it is shown only."""
    from benchmark.perf import ratios

    row = {"operators_inference": 500, "operators_train_step": 1000, "train_step": {"over_ref": 1.3},
           "inference": {"over_ref": 1.1}}
    for backbone, met in (("ViT-B-16", True), ("ViT-B/16", True), ("clip-tiny", None)):
        out = {"backbone": backbone, "methods": {"side_tuning": row}}
        assert ratios(out, "cpu")["side_inference_ops"] == {"value": 500, "target": "<= 800", "met": met}
    over = {"backbone": "ViT-B-16", "methods": {"side_tuning": {**row, "operators_inference": 900}}}
    assert ratios(over, "cpu")["side_inference_ops"]["met"] is False


def test_side_rates_counts_multiply_adds_from_recorded_shapes():
    """scripts/side_rates.py reads each product's multiply-adds off torch.profiler's recorded shapes."""
    from torch.profiler import ProfilerActivity, profile

    side_rates = _script("side_rates")
    a, w, bias = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    q = torch.randn(2, 3, 11, 8, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        a.mm(w.t())
        torch.addmm(bias, a, w.t())
        torch.bmm(torch.randn(4, 5, 7), torch.randn(4, 7, 3))
        torch.baddbmm(torch.randn(4, 1, 3), torch.randn(4, 5, 7), torch.randn(4, 7, 3))
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
        conv = torch.nn.Conv2d(3, 6, kernel_size=4, stride=4)
        conv(torch.randn(2, 3, 8, 12)).sum().backward()
    counted = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if side_rates.macs(e.key, e.input_shapes):
            counted[e.key] = side_rates.macs(e.key, e.input_shapes)
    attention = 2 * 2 * 3 * 11 * 11 * 8
    assert counted == {"aten::mm": 5 * 7 * 3, "aten::addmm": 5 * 7 * 3, "aten::bmm": 4 * 5 * 7 * 3,
                       "aten::baddbmm": 4 * 5 * 7 * 3,
                       "aten::_scaled_dot_product_flash_attention_for_cpu": attention,
                       "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 2.5 * attention,
                       "aten::mkldnn_convolution": 2 * 6 * 3 * 4 * 4 * 2 * 3,
                       "aten::convolution_backward": 2 * 6 * 3 * 4 * 4 * 2 * 3}
    assert side_rates.family("aten::addmm") == "linear layers" and side_rates.family("aten::gelu") == "everything else"
    # CUDA's kernels of the same products: q, k, v (and the output gradient before them) in the same places
    q, grad = [2, 3, 11, 8], [2, 3, 11, 8]
    for kernel in ("flash", "efficient", "cudnn"):
        name = f"aten::_scaled_dot_product_{kernel}_attention"
        assert side_rates.macs(name, [q, q, q, []]) == attention and side_rates.family(name) == "attention"
        assert side_rates.macs(name + "_backward", [grad, q, q, q, []]) == 2.5 * attention
        # the operators that launch their kernels (time, no count of their own: the layout differs)
        for inner in (f"aten::_{kernel}_attention_forward", f"aten::_{kernel}_attention_backward"):
            assert side_rates.family(inner) == "attention" and side_rates.macs(inner, [q, q, q, []]) == 0
    assert side_rates.macs("aten::cudnn_convolution", [[2, 3, 8, 12], [6, 3, 4, 4]]) == 2 * 6 * 3 * 4 * 4 * 2 * 3


def test_side_rates_counts_each_product_once_under_autocast():
    """Under autocast the profiler records an autocast-wrapped operator twice, the outer call around the inner
    one; scripts/side_rates.py counts its multiply-adds once, so fp32 and bf16 count the same products."""
    from torch.profiler import ProfilerActivity, profile

    side_rates = _script("side_rates")
    counted = {}
    for dtype in (None, torch.bfloat16):
        a, w = torch.randn(5, 7), torch.randn(3, 7, requires_grad=True)
        bias, batch = torch.randn(4, 1, 3), torch.randn(4, 5, 7)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                linear = torch.addmm(torch.zeros(3), a, w.t())
                out = linear.sum() + torch.baddbmm(bias, batch, w.t().expand(4, 7, 3)).sum()
            out.backward()
        counted[dtype] = {f: m for f, (_, m) in side_rates.families(prof.events(), 1, cuda=False).items() if m}
    # forward and the weight's gradient, for each product
    assert counted[None] == {"linear layers": 2 * 5 * 7 * 3, "tap projections": 2 * 4 * 5 * 7 * 3}
    assert counted[torch.bfloat16] == counted[None]


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_attention_paths_give_the_models_attention_and_time_its_shapes(monkeypatch):
    """scripts/attention_paths.py: every path it times is the side blocks' attention (output and gradient) in the
    side blocks' own layout, and the shapes and calls per step it times are those the side networks run."""
    from vtfpar.side import _Attention

    attention_paths = _script("attention_paths")
    torch.manual_seed(0)
    n, heads, tokens, d = 3, 2, 11, 40
    qkv, grad, *_ = inputs = attention_paths.inputs((n, heads, tokens, d), torch.device("cpu"), torch.float64,
                                                   torch.Generator().manual_seed(0))
    assert qkv.shape == (n * tokens, 3 * heads * d) and grad.shape == (n * tokens, heads * d)
    # the layout: what a side block's attention hands its output projection, for the same q/k/v projection
    block = _Attention(heads * d, heads).double()
    handed = []
    block.proj.register_forward_pre_hook(lambda _, args: handed.append(args[0]))
    x = torch.randn(n * tokens, heads * d, dtype=torch.float64)
    block(x, n)
    out, _ = attention_paths.forward_backward(attention_paths.default, block.qkv(x).detach().requires_grad_(), grad,
                                              n, heads)
    torch.testing.assert_close(out, handed[0], rtol=0, atol=1e-12)

    paths = attention_paths.paths(d)
    assert not [p for p in attention_paths.paths(64) if p.startswith("padded")]  # nothing to pad to
    reference = attention_paths.forward_backward(attention_paths.default, *inputs)
    ran = []
    for name, (attend, split) in paths.items():
        if not attention_paths.runs(attend, split, *inputs):
            continue
        ran.append(name)
        for got, want in zip(attention_paths.forward_backward(attend, *inputs, split=split), reference, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=name)
    # every path but the GPU backends runs on any CPU (a path that broke is not left out as "no kernel here")
    assert {"default", "sdpa-math", "sdpa-flash", "explicit", "padded-48", "padded-64",
            "default-autograd-split"} <= set(ran)
    assert paths["default"][1] is not paths["default-autograd-split"][1]

    seen = []  # the attention inputs of one forward of the side networks
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **kw: seen.append(tuple(q.shape)) or real(q, *a, **kw))
    shapes = attention_paths.side_shapes("clip-tiny", "synthetic", batch=3, frames=2)
    from benchmark.perf import _batch, build_row_model

    model = build_row_model("side_tuning", {}, "clip-tiny", "synthetic", 2)
    x, _ = _batch("clip-tiny", model, 3, 2, torch.device("cpu"))
    enc, flat = model.encoder, x.flatten(0, 1)
    taps = enc.tap_features(flat)
    seen.clear()
    enc.side_spatial(flat, taps)
    spatial, seen[:] = list(seen), []
    enc.side_temporal(taps.view(taps.shape[0], 3, 2, *taps.shape[2:]))
    assert spatial == [shapes["spatial"][0]] * shapes["spatial"][1]
    assert seen == [shapes["temporal"][0]] * shapes["temporal"][1]


def test_perf_floor_leaves_no_weights_or_caches_behind():
    """``bench perf``'s (a) goes back to host memory after every phase it is timed in: the layers get their
    own fp32 Parameters back and no attention layer keeps a q/k/v concatenation of the held bf16 copies
    (on CUDA such a cache would count in the next row's max_memory_allocated)."""
    from benchmark.perf import Floor
    from vtfpar.backbone import SplitAttention

    floor = Floor("clip-tiny", "synthetic", 2, 2, torch.device("cpu"), "bf16")
    attention = [m for m in floor.clip.modules() if isinstance(m, SplitAttention)]
    before = {name: (p, p.data_ptr()) for name, p in floor.clip.named_parameters()}
    with floor.ready():
        floor.forward()
        assert all(m._cache is not None and m._cache[0].dtype == torch.bfloat16 for m in attention)
        assert attention[0].q_proj.weight.dtype == torch.bfloat16  # held copies in the layers' places
    assert attention and all(m._cache is None and not m._cache_params for m in attention)
    after = dict(floor.clip.named_parameters())
    assert after.keys() == before.keys()
    for name, (p, ptr) in before.items():
        assert after[name] is p and p.dtype == torch.float32 and p.data_ptr() == ptr, name


def test_perf_files_are_named_by_what_sets_them_apart():
    from benchmark.perf import stem_of
    from methods import perf_rows

    every = {label: {} for label, _, _ in perf_rows()}
    base = {"backbone": "ViT-B-16", "device": "cuda:0", "batch": 16, "frames": 6, "methods": every, "amp": "auto"}
    assert stem_of(base) == stem_of({**base, "amp": "bf16"}) == "ViT-B-16_cuda_b16_t6"  # auto is bf16 on CUDA
    assert stem_of({**base, "amp": "off"}) == "ViT-B-16_cuda_b16_t6_off"
    assert stem_of({**base, "device": "cpu", "amp": "bf16"}) == "ViT-B-16_cpu_b16_t6_bf16"
    assert stem_of({**base, "profile": "mars"}) == stem_of(base)  # ViT-B-16's own profile
    assert stem_of({**base, "profile": "synthetic"}) == "ViT-B-16_cuda_b16_t6_synthetic"
    rows = {"frozen": {}, "side_tuning+recompute": {}}
    assert stem_of({**base, "methods": rows, "compiled": True}) == \
        "ViT-B-16_cuda_b16_t6_frozen-side_tuning+recompute_compiled"
    assert stem_of({**base, "methods": rows, "compiled": True, "compile_mode": "reduce-overhead"}) == \
        "ViT-B-16_cuda_b16_t6_frozen-side_tuning+recompute_compiled-reduce-overhead"
    many = dict(list(every.items())[:-1])
    assert stem_of({**base, "methods": many}).startswith(f"ViT-B-16_cuda_b16_t6_{len(many)}-rows-")
    assert stem_of({**base, "methods": many}) != stem_of({**base, "methods": dict(list(every.items())[1:])})


def test_bench_perf_compiled_rows(tmp_path):
    """``--compile``: each row compiled as ``train.compile`` does; the compiling first calls are reported
    apart from the timed ones, and what cannot be counted on compiled code says so instead of a number."""
    r = subprocess.run([*BENCH, "perf", "--methods", "frozen", "--batch", "2", "--frames", "2", "--warmup", "1",
                        "--iters", "2", "--compile", "--compile-mode", "reduce-overhead", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "CUDA_HOME": "/usr"})
    assert r.returncode == 0, r.stderr
    assert "No CUDA runtime" not in r.stderr  # torch's cpp_extension says so on a CPU machine with a CUDA_HOME
    (path,) = tmp_path.glob("*.json")
    assert path.name == "clip-tiny_cpu_b2_t2_frozen_compiled-reduce-overhead.json"
    out = json.loads(path.read_text())
    row = out["methods"]["frozen"]
    assert out["compiled"] is True and out["compile_mode"] == "reduce-overhead"
    assert row["operators_train_step"] is None and row["operators_inference"] is None
    assert "memory_train" not in row
    assert row["first_train_step_s"] > row["train_step"]["max_s"]  # compilation happened in the untimed first call
    md = path.with_suffix(".md").read_text()
    assert "| frozen |" in md and "compiled (`--compile`" in md and "frozen " in md.split("First call")[1]


def test_a_perf_rerun_that_drops_a_section_of_the_table_says_so_before_measuring(tmp_path):
    args = [*BENCH, "perf", "--methods", "frozen", "--batch", "2", "--frames", "2", "--warmup", "0", "--iters", "1",
            "--out", str(tmp_path)]
    first = subprocess.run([*args, "--top-ops", "2", "--iters", "2"], capture_output=True, text=True, cwd=ROOT,
                           timeout=600)  # the last --iters counts
    assert first.returncode == 0 and "holds the" not in first.stderr, first.stderr  # nothing to drop yet
    again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    table = tmp_path / "clip-tiny_cpu_b2_t2_frozen.json"
    said = [ln for ln in again.stderr.splitlines() if str(table) in ln]
    assert again.returncode == 0 and said == [
        f"warning: {table} holds the operator profile section that this run does not measure: the table is replaced "
        "without it (add --top-ops N to measure it again)",
        f"warning: {table} was timed with --iters 2, more than this run: the table is replaced by one with fewer "
        "warm-up or timed iterations (give --iters 2 to keep its precision, or --out another folder)"], again.stderr
    assert "warning: --warmup 0: every first iteration is timed cold" in again.stderr
    assert "top_operators" not in json.loads(table.read_text())["methods"]["frozen"]


def test_perf_rows_use_the_shipped_settings_only(tmp_path, monkeypatch):
    """A user's config file ($BENCH_CONFIG, ./bench.toml) must not change bench perf's rows: the table would not
    say so, and the memory children, run from the repository, would not see it."""
    from benchmark.perf import build_row_model

    def trainable():
        model = build_row_model("frozen", {}, "clip-tiny", "synthetic", 2)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    shipped = trainable()
    (tmp_path / "wide.toml").write_text("[model]\nfusion_width = 96\n")
    (tmp_path / "bench.toml").write_text("[model]\nfusion_width = 96\n")
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path / "wide.toml"))
    assert trainable() == shipped
    monkeypatch.delenv("BENCH_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert trainable() == shipped
    # So a row that cannot be built says what bench perf offers (it has no --set), not the setting to change.
    with pytest.raises(UserError, match=r"^st_adapter cannot be measured with --frames 1 on clip-tiny \(the shipped "
                                        r"settings of --profile synthetic: st_adapter: temporal kernel size 3 does "
                                        r"not fit 1 frames\): leave st_adapter out of --methods, or change --frames, "
                                        r"--backbone or --profile$"):
        build_row_model("st_adapter", {}, "clip-tiny", "synthetic", 1)


def test_training_flops_per_clip_share_what_runs_once_per_step_over_the_training_batch():
    """Prompt tuning's text encoder runs once per training step, whatever the batch: per clip it costs 1/B of it,
    not all of it as a forward pass of one clip would count (which made its GFLOPs/clip 1.8x the frozen model's)."""
    from benchmark.measure import measure_model
    from tests.conftest import tiny_model
    from vtfpar.loss import WeightedBCE

    frozen, prompted = tiny_model("frozen"), tiny_model("prompt_tuning")
    loss = WeightedBCE(torch.full((23,), 0.3))
    measured = {name: measure_model(m, loss, torch.device("cpu"), "off", 4, 64, 4, 2, warmup=0, iters=1)
                for name, m in (("frozen", frozen), ("prompt_tuning", prompted), ("lora", tiny_model("lora")))}
    got = {name: m["flops"] for name, m in measured.items()}
    # Inference is counted in deployment form: prompt tuning's text features are constants and LoRA is merged,
    # so both cost what the frozen model costs; trained unmerged, LoRA's forward costs more.
    for name in ("prompt_tuning", "lora"):
        assert got[name]["inference_gflops_per_clip"] == pytest.approx(got["frozen"]["inference_gflops_per_clip"],
                                                                       rel=1e-9), name
    assert got["lora"]["gflops_per_clip"] > got["frozen"]["gflops_per_clip"]
    step = measured["frozen"]["timing"]["train_step"]
    assert step["frames_per_s"] == pytest.approx(step["clips_per_s"] * 4)
    text = count_flops(prompted.text)["total"] / 1e9
    assert text > 0.5 * got["frozen"]["gflops_per_clip"]
    assert got["prompt_tuning"]["gflops_per_clip"] == pytest.approx(got["frozen"]["gflops_per_clip"] + text / 4,
                                                                     rel=1e-6)
    assert got["prompt_tuning"]["by_module_gflops"]["text"] == pytest.approx(text / 4)
    assert got["prompt_tuning"]["counted_on_batch"] == 4


def test_a_run_measures_the_step_it_trains_with_its_clipping_and_weight_decay(tmp_path, monkeypatch):
    """``train.grad_clip`` and ``train.weight_decay`` are part of the run's step, so its ``result.json`` times and
    counts them: a clipped run's measured step dispatches the clipping's operators, which an unclipped one's lacks,
    and the state it is timed with decays as the run's optimiser does."""
    import benchmark.measure
    from benchmark.step import measurement_state
    from benchmark.train import train_run
    from tests.conftest import tiny_config

    timed_with = []

    def recorded(*args, **kwargs):
        state = measurement_state(*args, **kwargs)
        timed_with.append(({g["weight_decay"] for g in state.optimizer.param_groups}, state.grad_clip))
        return state

    monkeypatch.setattr(benchmark.measure, "measurement_state", recorded)
    operators = {}
    for clip in (0.0, 1.0):
        cfg = tiny_config("frozen", out=str(tmp_path / f"clip{clip:g}"), measure=True, grad_clip=clip,
                          weight_decay=0.1 * clip)
        cfg.measure.warmup, cfg.measure.iters, cfg.measure.flops = 0, 1, False
        cfg.data.train_clips, cfg.data.test_clips = 8, 8
        result, _ = train_run(cfg, progress=False, log=lambda *_: None)
        assert (result["config"]["train"]["grad_clip"], result["config"]["train"]["weight_decay"]) == (clip, clip / 10)
        operators[clip] = result["operators"]
    assert operators[1.0]["inference"] == operators[0.0]["inference"]
    # clip_grad_norm_: a norm per parameter, their norm, the factor and one multiply per parameter at least
    assert operators[1.0]["train_step"] >= operators[0.0]["train_step"] + 4, operators
    # (fused Adam decays inside its one kernel, so the decay is seen in the state the step is timed with)
    assert timed_with == [({0.0}, 0.0), ({0.1}, 1.0)]
