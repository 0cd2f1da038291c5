"""The report's charts, as PNG and SVG: F1 vs trainable parameters (log x, Pareto front, its steps within the
seeds' noise dotted), F1 vs peak training memory, inference latency, a per-attribute F1 heat map, and training
curves (a panel per row as well where more than ``CROWDED_CURVES`` rows' would cross on one axes)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.report.notes import memory_kind
from benchmark.report.runs import Runs
from benchmark.report.tables import PRIOR_COLUMN, per_attribute_grid
from methods import get_method, list_methods


def params_axis(s: pd.DataFrame) -> tuple[str, str, str]:
    """f1_vs_params' x axis (column, axis label, what the title calls it): the method's own trainable parameters
    where every row's results record them (what PEFT papers compare; fusion and head, the same for all, would
    otherwise crowd together the methods that add little), else all trainable parameters."""
    if "method_params" in s and s["method_params"].notna().all():
        return ("method_params", "parameters the method trains besides fusion and head (log scale)",
                "the method's own trainable parameters")
    return "trainable_params", "trainable parameters (log scale)", "trainable parameters"


def _save(fig, path: Path) -> list[Path]:
    out = []
    for ext in ("png", "svg"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    return out


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats with fewer-or-equal x and higher-or-equal y."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000075", "#800000", "#469990", "#f032e6", "#9a6324", "#808000", "#ffe119", "#aaffc3",
           "#dcbeff", "#fabed4"]
"""The rows' colours: tab10's ten, then ten of other hues (navy, maroon, teal, magenta, ...), so that no two rows of
a report differ only in shade, as tab20's paired shades did; the Pareto front is black."""


LABEL_OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                 (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
                 (14, 0, "left", "center"), (-14, 0, "right", "center")]
LABEL_NEARER = 1.25  # how many times nearer its own point than any other a name must start
LABEL_LEVEL_GAP = 12  # points: how far beyond a name's ends another point level with it takes the name for its own


def place_labels(ax, points: list[tuple], fontsize: int = 8, lines: list = ()) -> list:
    """Name each point beside it where the name overlaps no other name, no marker or error bar, stays inside the
    axes and reads as that point's (``_reads_as_own``: a name that starts between two points, or runs on towards
    another level with it, reads as the other's), trying eight spots around the point in turn; a name with no free
    spot is left out (the legend still names its colour). ``points``: ``(x, y, name)`` or ``(x, y, name, y_error)``,
    in priority order; ``lines``: polylines, each an ``(n, 2)`` array of data-space vertices (the Pareto front's
    steps, ``step_vertices``), that a name crosses only where no spot clear of them is free: a name across a
    dashed line reads better than one left out. Returns the labels placed."""
    from matplotlib.path import Path as Polyline
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker = 5.0  # px around each point's centre
    gap = LABEL_LEVEL_GAP * fig.dpi / 72  # px
    taken = []
    centres = ax.transData.transform([(x, y) for x, y, *_ in points]) if points else np.zeros((0, 2))
    for x, y, *rest in points:
        err = float(rest[1]) if len(rest) > 1 and np.isfinite(rest[1]) else 0.0
        (cx, low), (_, high) = ax.transData.transform([(x, y - err), (x, y + err)])
        taken.append(Bbox([[cx - marker, min(low, high) - marker], [cx + marker, max(low, high) + marker]]))
    paths = [Polyline(ax.transData.transform(np.asarray(vertices, float))) for vertices in lines]
    placed = []
    for i, (x, y, text, *_) in enumerate(points):
        label = None
        for avoid in (paths, []) if paths else ([],):
            for dx, dy, ha, va in LABEL_OFFSETS:
                label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                    fontsize=fontsize)
                box = label.get_window_extent(renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if (inside and not any(box.overlaps(other) for other in taken)
                        and _reads_as_own(box, ha, va, centres, i, gap, marker)
                        and not any(path.intersects_bbox(box, filled=False) for path in avoid)):
                    taken.append(box)
                    placed.append(label)
                    break
                label.remove()
                label = None
            if label is not None:
                break
    return placed


def _reads_as_own(box, ha: str, va: str, centres: np.ndarray, own: int, gap: float, marker: float) -> bool:
    """Whether a label in ``box`` (display px), anchored at its point by ``ha`` and ``va``, reads as point ``own``'s
    of ``centres``: the corner or edge it starts from is ``LABEL_NEARER`` times nearer that point than any other,
    and no other point sits level with it (within ``marker`` px of its height) less than ``gap`` px beyond either
    end, where a reader takes a name for the point it runs on from."""
    start_x = {"left": box.x0, "right": box.x1, "center": (box.x0 + box.x1) / 2}[ha]
    start_y = {"bottom": box.y0, "top": box.y1, "center": (box.y0 + box.y1) / 2}[va]
    others = np.delete(centres, own, axis=0)
    if not len(others):
        return True
    start = np.array([start_x, start_y])
    nearer = np.hypot(*(others - start).T).min() >= LABEL_NEARER * np.hypot(*(centres[own] - start))
    level = ((box.y0 - marker <= others[:, 1]) & (others[:, 1] <= box.y1 + marker)
             & (box.x0 - gap <= others[:, 0]) & (others[:, 0] <= box.x1 + gap))
    return bool(nearer and not level.any())


def steps_within_noise(y: np.ndarray, std: np.ndarray) -> np.ndarray:
    """For each rise of a Pareto front (points in order of cost, ``y`` their mean F1), whether it is no larger than
    the std over seeds of either of its two points (NaN or 0 for one seed): a gain the seeds' spread could make
    alone, which the chart draws dotted rather than as a step the front is sure of."""
    y, std = np.asarray(y, float), np.nan_to_num(np.asarray(std, float))
    rise, noise = np.diff(y), np.maximum(std[1:], std[:-1])
    return (noise > 0) & (rise <= noise)


def step_vertices(x, y) -> np.ndarray:
    """The corners ``ax.step(x, y, where="post")`` draws through: each level held to the next x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    corners = np.empty((2 * len(x) - 1, 2))
    corners[0::2] = np.stack([x, y], axis=1)
    corners[1::2] = np.stack([x[1:], y[:-1]], axis=1)
    return corners


@dataclass(frozen=True)
class Look:
    """What the charts of one table share: its rows in order, each row's colour and marker, the seeds they average
    over (``3 seeds``, ``1-3 seeds``) and the table's title as the charts show it."""

    labels: list[str]
    colours: dict[str, str]
    markers: dict[str, str]
    over: str
    title: str


def look_of(s: pd.DataFrame, title: str) -> Look:
    """The colours, markers and titles of the charts of the table ``s`` (its summary rows), titled ``title``."""
    labels = [str(m) for m in s["label"]]
    # Colours follow the registry's order, so a method keeps its colour from report to report while the registry
    # holds the same methods (a method added before it moves it along; the legend names every colour): a method's
    # one row has its method's colour, whatever settings its label names; the rows of a method run with several
    # settings get colours of their own after the registry's.
    method_of = dict(zip(labels, s["method"].astype(str), strict=True))
    rows_of = collections.Counter(method_of.values())
    key = {label: method_of[label] if rows_of[method_of[label]] == 1 else label for label in labels}
    names = list(dict.fromkeys(list_methods() + [key[label] for label in labels]))
    # One colour per row, each a hue of its own (PALETTE), markers differing after the first ten.
    slot = {m: i for i, m in enumerate(names)}
    colours = {label: PALETTE[slot[key[label]] % len(PALETTE)] for label in labels}
    markers = {label: "osD^vP"[slot[key[label]] // 10 % 6] for label in labels}
    seeds = sorted({int(n) for n in s["seeds"]}) if "seeds" in s else []
    over = f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    return Look(labels, colours, markers, over, title.replace("(none)", "(random init)"))


def charts(s: pd.DataFrame, runs: Runs, run_ids: list[str], folder: Path, title: str) -> list[Path]:
    """Every chart of one table into ``folder`` (``s``: its summary rows, ``run_ids``: its runs): the files written.
    A chart that would compare nothing (one point, one bar) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    look = look_of(s, title)
    xcol, xlabel, what = params_axis(s)
    shown = {"cuda": "CUDA allocated", "cpu": "CPU peak RSS, runtime and frozen weights included",
             "both": "CUDA allocated or CPU peak RSS, by run"}
    kind = memory_kind(runs.table[runs.table["run_id"].isin(run_ids)]) or "cpu"  # this table's runs
    mem_label = f"peak training memory (MiB, {shown[kind]})"
    return [*_f1_scatter(plt, s, look, xcol, xlabel, what, True, folder / "f1_vs_params"),
            *_f1_scatter(plt, s, look, "train_mem_mib", mem_label, "training memory", False, folder / "f1_vs_memory"),
            *_latency_bars(plt, s, look, folder / "latency"),
            *_attribute_heatmap(plt, runs, run_ids, look, folder / "per_attribute_f1"),
            *_training_curves(plt, s, runs, run_ids, look, folder)]


def _f1_scatter(plt, s: pd.DataFrame, look: Look, xcol: str, xlabel: str, what: str, logx: bool, path: Path
                ) -> list[Path]:
    """F1 against ``xcol`` (a cost), each row with ± its std over seeds, and the Pareto front of the means: a step of
    it dotted where its rise is within the seeds' std (``steps_within_noise``). On a log axis a row at 0 is a
    horizontal line."""
    d = s.dropna(subset=[xcol])
    if len(d) < 2:  # one point compares nothing
        return []
    # On a log axis a row at 0 (the frozen baseline's own parameters) is a horizontal line: the level every
    # point is measured against, at no cost of its own.
    flat = d[d[xcol] <= 0] if logx else d.iloc[:0]
    dots = d.drop(flat.index)
    if dots.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for _, r in dots.iterrows():
        ax.errorbar(r[xcol], 100 * r["f1"], yerr=100 * _or0(r["f1_std"]), fmt=look.markers[str(r["label"])], ms=7,
                    capsize=3, color=look.colours[str(r["label"])], label=str(r["label"]))
    left = dots[xcol].min() / 3 if logx else None  # where the axis starts, and a row at 0 is drawn from
    for _, r in flat.iterrows():
        colour, y, err = look.colours[str(r["label"])], 100 * r["f1"], 100 * _or0(r["f1_std"])
        ax.axhline(y, color=colour, ls=":", lw=1.2, label=f"{r['label']}: no parameters of its own")
        if err:
            ax.axhspan(y - err, y + err, color=colour, alpha=0.12, lw=0)
        ax.text(0.99, y, str(r["label"]), transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=8,
                color=colour)
    idx = pareto_front(d[xcol].to_numpy(float), d["f1"].to_numpy(float))
    pts = d.iloc[idx]
    front = [str(m) for m in pts["label"]]
    xs = (pts[xcol].clip(lower=left) if left else pts[xcol]).to_numpy(float)
    ys, errs = 100 * pts["f1"].to_numpy(float), 100 * pts["f1_std"].map(_or0).to_numpy(float)
    corners = step_vertices(xs, ys)
    within = steps_within_noise(ys, errs)
    # Each step to the next point of the front: its run at the last level, then its rise; dotted where the
    # rise is within the seeds' spread (that point is on the front by less than its noise). Each style is
    # named once in the legend.
    sure, unsure = {"ls": "--", "lw": 0.8, "color": "black"}, {"ls": ":", "lw": 1.3, "color": "0.4"}
    named: set[str] = set()
    for i, noise in enumerate(within):
        legend = "Pareto front, a step within the seeds' std" if noise else "Pareto front"
        ax.plot(*zip(*corners[2 * i:2 * i + 3], strict=True), **(unsure if noise else sure),
                label=None if legend in named else legend)
        named.add(legend)
    # (a front of one point has no step: nothing is drawn, and the legend names no front)
    if logx:
        ax.set_xscale("log")
        if not flat.empty:
            ax.set_xlim(left=left)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1 (%)")
    sure_steps = len(within) > 0 and not within.all()  # some of the front drawn dashed
    ax.set_title(f"F1 vs {what}, {look.title}\nmean ± std over {look.over}"
                 + ("; dashed: Pareto front of the means" if sure_steps else "")
                 + ("\ndotted: a step whose rise is within the std of either end's seeds" if within.any() else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers no point
    points = [(float(r[xcol]), 100 * float(r["f1"]), str(r["label"]), 100 * _or0(r["f1_std"]))
              for _, r in dots.iterrows()]
    place_labels(ax, sorted(points, key=lambda p: p[2] not in front), lines=[corners])  # the front's names first
    written = _save(fig, path)
    plt.close(fig)
    return written


def _latency_bars(plt, s: pd.DataFrame, look: Look, path: Path) -> list[Path]:
    """Each row's inference latency as a bar, with whiskers of its spread over seeds."""
    d = s.dropna(subset=["infer_ms_per_clip"])
    if len(d) < 2:  # one bar compares nothing
        return []
    bars = [str(m) for m in d["label"]]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.5 + 0.55 * len(bars)), 3.8))
    ax.bar(range(len(bars)), d["infer_ms_per_clip"], color=[look.colours[m] for m in bars])
    # Whiskers: how far the seeds' latencies spread (their std), which is what tells two rows apart; a row of
    # one seed shows half the interquartile range of its own timed iterations instead, and says so.
    nan = pd.Series(np.nan, index=d.index)
    seed_std = d.get("infer_ms_per_clip_std", nan).where(d.get("seeds", 1) > 1)
    own = d.get("infer_ms_iqr", nan) / 2
    spread = seed_std.fillna(own)
    if spread.notna().any():
        ax.errorbar(range(len(bars)), d["infer_ms_per_clip"], yerr=spread.fillna(0), fmt="none",
                    ecolor="black", capsize=4, lw=1)
    ax.set_xticks(range(len(bars)), bars, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("inference latency (ms per clip, batch 1)")
    whiskers = {(True, False): "± std over seeds", (False, True): "± half each run's interquartile range",
                (True, True): "± std over seeds (rows of one seed: ± half its interquartile range)"}.get(
                    (bool(seed_std.notna().any()), bool((seed_std.isna() & own.notna()).any())))
    ax.set_title(f"inference latency, {look.title}\nmean over {look.over} of each run's median timed iteration"
                 + (f"; whiskers: {whiskers}" if whiskers else ""), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    written = _save(fig, path)
    plt.close(fig)
    return written


def _attribute_heatmap(plt, runs: Runs, run_ids: list[str], look: Look, path: Path) -> list[Path]:
    """Attribute x row F1, averaged over seeds, after a first column of what predicting every attribute present
    scores (where the results record it)."""
    pa = runs.per_attribute[runs.per_attribute["run_id"].isin(run_ids)]
    if pa.empty:
        return []
    grid = per_attribute_grid(pa, runs.table, look.labels)
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 3, 0.32 * grid.shape[0] + 1.5))
    im = ax.imshow(100 * grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    if grid.columns[0] == PRIOR_COLUMN:
        ax.axvline(0.5, color="white", lw=3)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = 100 * grid.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 60 else "black")
    fig.colorbar(im, ax=ax, label="F1 (%)")
    ax.set_title(f"per-attribute F1, {look.title}, mean over {look.over}"
                 + (f"\nfirst column: {PRIOR_COLUMN}, every attribute predicted present (the prior baseline)"
                    if grid.columns[0] == PRIOR_COLUMN else ""), fontsize=9)
    written = _save(fig, path)
    plt.close(fig)
    return written


def _training_curves(plt, s: pd.DataFrame, runs: Runs, run_ids: list[str], look: Look, folder: Path) -> list[Path]:
    """Training loss and test F1 per epoch, a line per row (``curves``), and where more than ``CROWDED_CURVES``
    rows' F1 curves would cross, a panel per row too (``curves_by_method``)."""
    from matplotlib.ticker import MaxNLocator

    cur = runs.curves[runs.curves["run_id"].isin(run_ids)]
    if cur.empty:
        return []
    c = cur.merge(runs.table[["run_id", "label"]], on="run_id")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in [m for m in look.labels if m in set(c["label"])]:
        g = c[c["label"] == method].groupby("epoch")[["loss", "f1"]].mean()
        a1.plot(g.index, g["loss"], marker=look.markers[method], ms=3, label=method, color=look.colours[method])
        f1 = g["f1"].dropna()
        if not f1.empty:
            a2.plot(f1.index, 100 * f1, marker=look.markers[method], ms=3, label=method, color=look.colours[method])
    a1.set_xlabel("epoch")
    a1.set_ylabel("training loss (weighted BCE, eq. 6)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("test F1 (%)")
    epochs = sorted(c["epoch"].unique())
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if len(epochs) <= 12:  # every epoch a tick (one epoch alone would get fractional ones)
            a.set_xticks(epochs)
        else:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: covers no line
    fig.suptitle(f"training curves, {look.title}, mean over {look.over}")
    written = _save(fig, folder / "curves")
    plt.close(fig)
    stats = f1_curves(c)
    if stats["label"].nunique() > CROWDED_CURVES:
        floors = trains_nothing_of_its_own(s)
        written.extend(_curves_by_row(plt, stats, [m for m in look.labels if m in set(stats["label"])], look, floors,
                                      epochs, folder / "curves_by_method"))
    return written


def trains_nothing_of_its_own(s: pd.DataFrame) -> set[str]:
    """The labels of rows that train nothing besides fusion and head (frozen): 0 method parameters where results
    record them, else a registered method that declares no parameters of its own (``prefixes=()``)."""
    registered = set(list_methods())  # a method this checkout does not register declares nothing
    declares_none = s["method"].astype(str).map(lambda m: m in registered and get_method(m).prefixes == ())
    recorded = s["method_params"] if "method_params" in s else pd.Series(np.nan, index=s.index)
    floor = (recorded == 0) | (recorded.isna() & declares_none)
    return set(s.loc[floor, "label"].astype(str))


CROWDED_CURVES = 4
"""More F1 curves than this on one axes cross and hide one another: the report then also draws each in a panel of
its own (``curves_by_method``)."""


def f1_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Test F1 per row and epoch over the row's seeds: ``label, epoch, mean, std, seeds`` (std NaN for one seed).

    ``curves``: ``label, epoch, f1`` per run and epoch; epochs without an evaluation (F1 NaN) are left out."""
    g = curves.dropna(subset=["f1"]).groupby(["label", "epoch"], sort=False)["f1"]
    return g.agg(mean="mean", std="std", seeds="count").reset_index()


def _curves_by_row(plt, stats: pd.DataFrame, rows: list[str], look: Look, floors: set[str], epochs: list,
                   path: Path) -> list[Path]:
    """Small multiples of test F1 per epoch: a panel per row, its mean drawn in its colour with a band of ± one
    std over seeds, every other row in light grey behind it for scale, and a row that trains no parameters of its
    own (frozen) dashed in every other panel: the level a method has to clear. One y scale for all panels."""
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.9 * cols, 2.3 * nrows + 0.7), sharex=True, sharey=True,
                             squeeze=False)
    by_row = {label: g.sort_values("epoch") for label, g in stats.groupby("label", sort=False)}
    floor, others = {"color": "black", "ls": "--", "lw": 1, "zorder": 2}, {"color": "0.82", "lw": 0.8, "zorder": 1}
    for ax, label in zip(axes.flat, rows, strict=False):
        for other in rows:
            if other != label:
                g = by_row[other]
                ax.plot(g["epoch"], 100 * g["mean"], **(floor if other in floors else others))
        g = by_row[label]
        mean, std = 100 * g["mean"], 100 * g["std"]
        if std.notna().any():
            ax.fill_between(g["epoch"], mean - std.fillna(0), mean + std.fillna(0), color=look.colours[label],
                            alpha=0.2, lw=0, zorder=3)
        ax.plot(g["epoch"], mean, color=look.colours[label], marker=look.markers[label], ms=3, lw=1.6, zorder=4)
        last = g.iloc[-1]
        spread = f" ± {100 * last['std']:.2f}" if np.isfinite(last["std"]) else ""
        ax.set_title(f"{label}: {100 * last['mean']:.2f}{spread}", fontsize=8, color=look.colours[label])
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    if len(epochs) <= 12:
        axes.flat[0].set_xticks(epochs)
    for ax in axes[:, 0]:
        ax.set_ylabel("test F1 (%)", fontsize=8)
    for ax in axes.flat[len(rows) - cols:len(rows)]:  # the lowest visible panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("epoch", fontsize=8)
    dashed = f"; dashed: {', '.join(sorted(floors))}" if floors else ""
    fig.suptitle(f"test F1 per epoch, {look.title}, mean ± std over {look.over}\neach panel's title: its last "
                 f"epoch; grey: the other rows{dashed}", fontsize=9)
    fig.tight_layout()
    written = _save(fig, path)
    plt.close(fig)
    return written


def _or0(x) -> float:
    return 0.0 if x is None or np.isnan(x) else float(x)


CHART_CAPTIONS = {"f1_vs_params": "F1 against trainable parameters", "f1_vs_memory": "F1 against training memory",
                  "latency": "inference latency", "per_attribute_f1": "F1 per attribute",
                  "curves": "training curves", "curves_by_method": "test F1 per epoch, a panel per row"}


def chart_links(pngs: list[Path]) -> str:
    """summary.md's last section: the table's charts shown where the Markdown is read (a repository's web page, an
    editor's preview), each by its file name beside summary.md."""
    if not pngs:
        return ""
    return "\n## Charts\n\n" + "\n".join(f"![{CHART_CAPTIONS.get(p.stem, p.stem)}]({p.name})\n" for p in pngs)
