"""What a table says of itself beneath it (how each column was measured) and above it (its doubts: runs of other
budgets, of other fusion starts, of other parameter counts, of labels that cannot be judged here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.report.experiments import registry_order
from benchmark.report.tables import PRIOR_COLUMN
from benchmark.results import SHARED_START_SINCE
from vtfpar.fusion import SHARED_START, SHIFTS_DROPPED_IN

# What the "step clips/s" column is, and is not: the epoch lines of a run's log count its data loading too.
STEP_NOTE = ("step clips/s: the training batch over one timed training step (forward, backward, optimiser) on random "
             "clips of the run's shape, data loading left out (the clips/s of the training log's epoch lines include "
             "it)")


FLOPS_NOTE = ("FLOPs: 1 multiply-add = 1 FLOP (fvcore); train GFLOPs/clip is the forward pass as the model trains, per "
              "clip of the training batch (what runs once per step, prompt tuning's text encoder, shared by its "
              "clips), infer GFLOPs/clip one clip's forward in deployment form (LoRA merged, text features cached); "
              "a row whose seeds counted training FLOPs in two ways (earlier versions counted one clip's forward) "
              "shows none")


SCORES_NOTE = ("F1, Acc, Prec, Rec instance-based (per sample, averaged; F1 = 2PR/(P+R)), mA label-based, grouped F1 "
               "pooled per attribute group (what the paper's code prints as F1); mean ± sample std (n - 1) over seeds")


def unpaired_starts(group: pd.DataFrame) -> str | None:
    """What to say of a table of two or more experiments (one dataset and backbone) that holds runs which did not
    start fusion and head from their seed alone (``vtfpar.fusion.SHARED_START``): runs that drew them after their
    method's own modules (``fusion_start`` 1), and runs whose start cannot be told (none recorded, and this
    checkout's git history cannot place their commit). Such runs are valid, but a difference between experiments
    then includes their starts (noise that averages out over seeds, which a paired comparison does not have).
    None where there is nothing to say."""
    if group["label"].nunique() < 2:
        return None
    said = []
    for runs, what in ((group[group["fusion_start"] < SHARED_START],
                        f"were made before commit {SHARED_START_SINCE}, when each method drew fusion and head after "
                        "its own modules"),
                       (group[group["fusion_start"].isna()],
                        "record no fusion start and this checkout's git history cannot place their commit (runs made "
                        f"before {SHARED_START_SINCE} drew fusion and head after their method's own modules)")):
        if not runs.empty:
            labels = [label for m in registry_order(runs["method"].unique())
                      for label in sorted(runs.loc[runs["method"] == m, "label"].unique())]
            said.append(f"{len(runs)} of {len(group)} runs ({', '.join(labels)}) {what}")
    if not said:
        return None
    return f"{'; '.join(said)}: differences between experiments include their starts; `bench run --force` remakes them"


def sentence(note: str) -> str:
    """A note as the start of a sentence: its first letter capitalised, the rest (names such as mA) as written."""
    return note[:1].upper() + note[1:]


def differing_note(differ: list[str] | None) -> str | None:
    """What a table says when two of its methods have no row trained alike (``unlike_methods``: another budget of
    epochs or clips, another learning rate); None where every two methods have."""
    if not differ:
        return None
    return (f"its rows differ in {', '.join(differ)} (each row's label says its values), and some methods have no "
            "row trained as another's: compare those as runs of different settings, not only of different methods")


def unsure_labels_note(group: pd.DataFrame) -> str | None:
    """What a table's summary says of its runs whose labels cannot be judged here (``label_problem``), which are
    averaged in (each is named on stderr by ``bench report``); None where there are none."""
    unsure = group[group["labels_unsure"].astype(bool)] if "labels_unsure" in group else group.iloc[:0]
    if unsure.empty:
        return None
    return (f"{len(unsure)} of {len(group)} runs ({', '.join(sorted(unsure['label'].unique()))}) are MARS runs of 43 "
            "attributes from before the later release's bottom type was read as it is now, whose dataset root is not "
            "here to tell which CSV they read: if it was that release's, their bottom type is the other way round; "
            "`bench report` names them")


def mixed_counts_note(group: pd.DataFrame) -> str | None:
    """What a table says of a row whose seeds count trainable parameters differently, so that its count is a mean
    no run had: runs of the same setting from before and after the model dropped two zero-gradient parameters
    (``vtfpar.fusion.DROPPED_SHIFTS``, commit ``SHIFTS_DROPPED_IN``), say. None where every row's runs agree."""
    if "trainable_params" not in group:
        return None
    counts = group.dropna(subset=["trainable_params"]).groupby("label", sort=False)["trainable_params"].unique()
    mixed = [f"{label} ({' and '.join(f'{int(c):,}' for c in sorted(c))})" for label, c in counts.items() if len(c) > 1]
    if not mixed:
        return None
    return (f"the seeds of {'; '.join(mixed)} count trainable parameters differently, so the table shows their mean: "
            "they were made by versions whose models differ (runs made before commit "
            f"{SHIFTS_DROPPED_IN}, for one, also counted the head's bias and the fusion's last LayerNorm shift, one "
            "parameter more per fusion channel and per attribute); `bench run --force` remakes a run")


def inference_note(table: pd.DataFrame) -> str:
    forms = set(table["measured_in"].dropna()) if "measured_in" in table else set()
    if forms == {"deployment form"}:
        return ("inference (latency, memory) measured in each method's deployment form (LoRA merged into the "
                "weights, prompt-tuned text features computed once, weights held in the autocast dtype)")
    if "training form" in forms:
        return (f"inference measured in: {', '.join(sorted(forms))}; runs of an earlier version timed it in "
                "training form (LoRA unmerged, prompt tuning's text encoded on every call), which overstates those "
                "methods' latency: `bench run --force` remakes a run in deployment form")
    return f"inference measured in: {', '.join(sorted(forms)) or 'not measured'}"


def priors_note(s: pd.DataFrame) -> str | None:
    """The prior baselines' F1 (predictions that learn nothing from the clips: every attribute present, or each
    attribute's majority value in the training labels), the floor every row should clear; None where unknown."""
    said = [f"{name} {100 * s[col].mean():.2f}" for name, col in ((PRIOR_COLUMN, "baseline_all_positive_f1"),
                                                                  ("majority", "baseline_majority_f1"))
            if col in s and s[col].notna().any()]
    return f"Prior baselines, F1 (%) of predictions that learn nothing from the clips: {', '.join(said)}." if said \
        else None


def memory_kind(table: pd.DataFrame) -> str | None:
    """What the memory columns of ``table``'s runs are: "cuda" (the CUDA allocator's peak), "cpu" (the CPU
    process's peak RSS), "both", by run (runs on a GPU and on a CPU in one table, whose figures do not compare),
    or None where none was measured."""
    kinds = set(table["memory_kind"].dropna())
    if not kinds:
        return None
    return "cpu" if "cuda" not in kinds else "cuda" if kinds == {"cuda"} else "both"


def memory_note(table: pd.DataFrame) -> str:
    """``memory_kind`` said for a table's header, with the batches each memory column was measured at."""
    cuda = "peak torch.cuda.max_memory_allocated per phase"
    cpu = "CPU process peak RSS per phase (includes weights and libraries)"
    kind = memory_kind(table)
    said = {"cuda": cuda, "cpu": cpu, None: "not measured",
            "both": f"{cuda} for the runs on a GPU, {cpu} for the others, which do not compare"}[kind]
    train, infer = _batches(table, "train_batch"), _batches(table, "eval_batch")
    if kind is None or not (train or infer):  # results that record no batch (earlier versions)
        return said
    return f"{said}; train mem at the training batch ({train or 'not recorded'}), infer mem at the evaluation " \
           f"batch ({infer or 'not recorded'})"


def _batches(table: pd.DataFrame, column: str) -> str:
    """The batch sizes of ``column`` among ``table``'s runs: ``32 clips`` or ``16 or 32 clips``; empty where none
    records one."""
    sizes = sorted({int(b) for b in table[column].dropna()}) if column in table else []
    return f"{' or '.join(map(str, sizes))} clips" if sizes else ""


def _machine(row) -> str | None:
    """Where a run's costs were measured: its device, and on a CPU its host and thread count (``COST_CONDITIONS``)."""
    device = row.get("device")
    if not isinstance(device, str):
        return None
    if device.startswith("cpu") and isinstance(row.get("cpu_host"), str):
        threads = row.get("threads")
        return f"{device} ({row['cpu_host']}" + (f", {int(threads)} threads)" if pd.notna(threads) else ")")
    return device


def machines_note(group: pd.DataFrame) -> str | None:
    """What a table says where its rows' memory and time were measured on different machines (a device, or a CPU
    host or thread count, of their own): each row's costs are its own machine's, so rows compare only with rows of
    the same machine. A row whose seeds were measured on several shows no costs (``summarise``) and is not named.
    None where every row with costs was measured on one machine."""
    if "device" not in group:
        return None
    costs = [c for c in ("train_mem_mib", "infer_mem_mib", "train_clips_per_s", "infer_ms_per_clip") if c in group]
    measured = group[group[costs].notna().any(axis=1)] if costs else group.iloc[:0]
    machines = measured.assign(machine=[_machine(r) or "" for _, r in measured.iterrows()])
    per_row = machines.groupby("label", sort=False)["machine"].unique()
    rows_of: dict[str, list[str]] = {}
    for label, where in per_row.items():
        if len(where) == 1 and where[0]:  # seeds on several machines, or on one not recorded: no costs shown
            rows_of.setdefault(where[0], []).append(str(label))
    if len(rows_of) < 2:
        return None
    return ("memory and time (and the memory and latency charts) come from different machines, and compare only "
            "between rows of one: " + "; ".join(f"{', '.join(rows)} on {m}" for m, rows in rows_of.items()))


def left_out_note(problems: list[tuple[str, str]], dataset: str, method: str | None = None) -> str | None:
    """What a table says of the run files ``load_runs`` left out (failed, unfinished, damaged, copies) that may be of
    its dataset (and of ``method``, the report's filter) by the run id their folder is named with (every one whose
    name does not say): each with why, in one line, so that the written report, not only the terminal, tells a row
    with a seed fewer from a whole experiment. A run id does not name the weights, so where a dataset has a table
    per backbone each names them all. None where nothing was left out."""
    from benchmark.report.runs import may_be_of
    from vtfpar.errors import one_line

    mine = [(path, one_line(why)[:200]) for path, why in problems
            if may_be_of((Path(path).parent if Path(path).name == "result.json" else Path(path)).name, dataset,
                         method)]
    if not mine:
        return None
    shown = "; ".join(f"{path} ({why})" for path, why in mine[:5])
    more = f"; and {len(mine) - 5} more (the terminal names them all)" if len(mine) > 5 else ""
    return (f"left out of this report: {len(mine)} run file{'s' if len(mine) != 1 else ''} of {dataset}: "
            f"{shown}{more}")


def flops_note(table: pd.DataFrame) -> str:
    """How the FLOPs columns were counted, naming the rows whose training FLOPs results of earlier versions counted
    as one clip's forward (``runs._flops_counted``), which do not compare with the others'."""
    older = sorted(set(table.loc[table["flops_counted"] == "one clip", "label"].astype(str))) \
        if "flops_counted" in table else []
    said = FLOPS_NOTE
    if older:
        said += (f"; the train GFLOPs/clip of {', '.join(older)} counted one clip's forward (results of an earlier "
                 "version: what runs once per step counted whole for every clip), not per clip of the training "
                 "batch: `bench run --force` remakes a run")
    return said
