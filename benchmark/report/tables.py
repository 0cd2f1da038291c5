"""The report's tables: mean ± std over seeds per experiment (``summarise``), as Markdown, CSV (full precision,
so the numbers equal those in the run files) and LaTeX (booktabs), and the per-attribute F1 grid."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.report.experiments import registry_order
from benchmark.report.runs import COST_CONDITIONS, DEVICE_COSTS, EVAL_BATCH_COSTS, SCORES


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per experiment: (dataset, backbone, method, settings). The std of a single
    seed is undefined (NaN, shown as no ``±``), not 0."""
    numeric = [c for c in table.columns if c not in ("run_id", "dataset", "method", "backbone", "seed",
                                                      "memory_kind", *COST_CONDITIONS, "train_batch", "eval_batch",
                                                      "label", "fusion_start", "labels_unsure", "flops_counted")]
    g = table.groupby(["dataset", "backbone", "method", "label"], sort=False)
    mean = g[numeric].mean()
    # Seeds of one experiment may have run on other machines, compiled or not, or (results of an earlier version)
    # been measured in training form: none of that is part of a run's setting. Their accuracy averages, their
    # memory and time do not (CUDA allocator bytes with CPU RSS, an H100 with a laptop, a merged LoRA with one
    # that is not).
    costs = [c for c in DEVICE_COSTS if c in mean.columns]
    conditions = [g[c].nunique(dropna=False) > 1 for c in COST_CONDITIONS if c in table]
    # (a table without those columns, from results that record none: no row is mixed; a bare False would be taken
    # by .loc below as a new row's label)
    mixed = np.logical_or.reduce(conditions) if conditions else pd.Series(False, index=mean.index)
    mean.loc[mixed, costs] = np.nan
    if "flops_counted" in table and "gflops" in mean:  # training FLOPs counted two ways (``runs._flops_counted``)
        mean.loc[g["flops_counted"].nunique() > 1, "gflops"] = np.nan
    if "eval_batch" in table:  # inference memory and throughput are measured at the evaluation batch
        mean.loc[g["eval_batch"].nunique(dropna=False) > 1, [c for c in EVAL_BATCH_COSTS if c in mean]] = np.nan
    std = g[[c for c in SCORES if c in table]].std(ddof=1).add_suffix("_std")
    if "infer_ms_per_clip" in table:  # how far the seeds' latencies spread (the latency chart's whiskers)
        std["infer_ms_per_clip_std"] = g["infer_ms_per_clip"].std(ddof=1)
        std.loc[mixed, "infer_ms_per_clip_std"] = np.nan
    # How many seeds each score is the mean of: a score a result does not record (grouped F1 before it was kept)
    # is averaged over the others, and the table says over how many.
    counts = g[[c for c in SCORES if c in table]].count().add_suffix("_n")
    out = mean.join(std).join(counts).join(g["seed"].nunique().rename("seeds")).reset_index()
    out["method"] = pd.Categorical(out["method"], registry_order(out["method"]), ordered=True)
    out["order"] = out["label"].map(_natural)
    out = out.sort_values(["dataset", "backbone", "method", "order"]).drop(columns="order")
    for count in ("trainable_params", "method_params", "total_params"):  # a count, not a mean (55813, not 55813.0)
        if count in out and out[count].notna().all():
            out[count] = out[count].round().astype(np.int64)
    return out.reset_index(drop=True)


def _natural(label: str) -> tuple:
    """Sort key of an experiment's label by the values of its settings, numbers as numbers: ``lr=5e-05`` before
    ``lr=0.0005`` before ``lr=0.001``, ``train.epochs=5`` before ``train.epochs=30``."""
    method, _, settings = label.partition(" (")
    key = []
    for pair in settings.removesuffix(")").split(", ") if settings else []:
        name, _, value = pair.partition("=")
        try:
            key.append((name, 0, float(value), ""))
        except ValueError:
            key.append((name, 1, 0.0, value))
    return (method, *key)


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _compact(n) -> str:
    """A count to 3 significant digits, from 0 to millions: ``512``, ``2.94 k``, ``217 k``, ``85.8 M``; ``-``
    where there is none."""
    if n is None or pd.isna(n):
        return "-"
    n = float(n)
    return f"{n:.0f}" if n < 1e3 else f"{n / 1e3:.3g} k" if n < 1e6 else f"{n / 1e6:.3g} M"


def display_rows(s: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    # The method's own parameters (outside fusion and head), where any row's results record them.
    own = "method_params" in s and s["method_params"].notna().any()
    head = ["method", "seeds", "F1 (%)", "mA (%)", "Acc (%)", "Prec (%)", "Rec (%)", "grouped F1 (%)",
            "trainable params", *(["method params"] if own else []), "train mem (MiB)", "infer mem (MiB)",
            "train GFLOPs/clip", "infer GFLOPs/clip", "step clips/s", "infer ms/clip"]
    rows = []
    for _, r in s.iterrows():
        rows.append([
            str(r["label"]), str(int(r["seeds"])),
            *(_mean_std(r.get(k, np.nan), r.get(k + "_std", np.nan), r.get(k + "_n"), r["seeds"]) for k in SCORES),
            f"{r['trainable_params'] / 1e6:.3f} M ({_fmt(r['trainable_pct'], '.2f')}%)",
            *([_compact(r["method_params"])] if own else []),
            _fmt(r["train_mem_mib"], ".0f"), _fmt(r["infer_mem_mib"], ".0f"), _fmt(r["gflops"], ".3f"),
            _fmt(r.get("infer_gflops", np.nan), ".3f"),
            _fmt(r["train_clips_per_s"], ".1f"), _fmt(r["infer_ms_per_clip"], ".2f"),
        ])
    return head, rows


def _mean_std(mean: float, std: float, n=None, seeds=None) -> str:
    """``48.61 ± 1.76`` in %; a single seed has no std: ``48.61``; no score (not recorded): ``-``; a mean over fewer
    of the row's seeds than all (``n`` of ``seeds``, the others record no such score): ``65.10 ± 0.26 (2/3 seeds)``."""
    if np.isnan(mean):
        return "-"
    shown = f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"
    if n is not None and seeds is not None and pd.notna(n) and 0 < int(n) < int(seeds):
        shown += f" ({int(n)}/{int(seeds)} seeds)"
    return shown


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# LaTeX's special characters as text, in one pass (so that one's escape is not escaped again).
_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in s)


def latex(head: list[str], rows: list[list[str]], caption: str) -> str:
    cols = "l" + "r" * (len(head) - 1)
    body = [" & ".join(_tex_escape(c) for c in r) + r" \\" for r in rows]
    return "\n".join([
        r"% requires \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
        rf"\caption{{{_tex_escape(caption)}}}", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
        " & ".join(_tex_escape(h) for h in head) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table}", "",
    ])


PRIOR_COLUMN = "always positive"  # the heatmap's prior-baseline column


def per_attribute_grid(per_attribute: pd.DataFrame, table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """attribute x experiment F1, averaged over each experiment's seeds, columns in the summary's order, after a
    first column (``PRIOR_COLUMN``) of what predicting every attribute present scores, where the results record it:
    the floor each row's F1 on an attribute is read against."""
    grid = _by_label(per_attribute, table, "mean")
    grid = grid[[c for c in labels if c in grid.columns]]
    prior = per_attribute.groupby("attribute", sort=False)["prior_f1"].mean().reindex(grid.index)
    if prior.notna().any():
        grid.insert(0, PRIOR_COLUMN, prior)
    return grid


def per_attribute_spread(per_attribute: pd.DataFrame, table: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """The sample std (n - 1) over seeds of each cell of ``per_attribute_grid``'s ``grid`` (NaN for one seed, and in
    the prior column, which is no row's score): how far a row's F1 on one attribute moves with the seed, which on a
    few hundred test clips is often more than the difference between two rows."""
    return _by_label(per_attribute, table, lambda v: v.std(ddof=1)).reindex(index=grid.index, columns=grid.columns)


def _by_label(per_attribute: pd.DataFrame, table: pd.DataFrame, aggfunc) -> pd.DataFrame:
    """attribute x row (``table``'s label of each run) of the runs' per-attribute F1, ``aggfunc`` over seeds."""
    return per_attribute.merge(table[["run_id", "label"]], on="run_id").pivot_table(
        index="attribute", columns="label", values="f1", aggfunc=aggfunc, sort=False)
