"""Pedestrian-attribute metrics, defined precisely (all divisions guarded).

Label-based (per attribute j, then averaged):
    mA = mean_j (TP_j / P_j + TN_j / N_j) / 2
    An attribute with no positives (or no negatives) in the ground truth is scored on the
    side that exists only (the paper's code, dividing by P + eps, scores it (0 + TN/N) / 2: a
    MARS colour absent from the test split, such as bottom purple with 15 tracklets in all,
    moves mA by about 1/M of 50 points between the two).

Instance-based (per sample i, then averaged over samples):
    acc_i  = |gt & pred| / |gt | pred|   (1 when both are empty)
    prec_i = |gt & pred| / |pred|         (1 when both are empty, 0 when only pred is empty)
    rec_i  = |gt & pred| / |gt|           (1 when both are empty, 0 when only gt is empty)
    F1 = 2 P R / (P + R) of the averaged P and R (the convention of the PAR literature, e.g. the
    strong-baseline code of Jia et al.); ``f1_per_sample`` is the mean of the per-sample F1, which is
    what the instance-based helper of the paper's code computes (it also scores a sample with empty
    ground truth and empty prediction 0, not 1; MARS and Duke have no such samples, every tracklet
    has a colour).

Grouped (what the paper's training script prints as its accuracy, precision, recall and F1, so
the paper's tables compare with these, not with the instance-based figures): per group,
TP/FP/TN/FN are pooled over the group's columns, then accuracy, precision, recall and F1 are
computed and averaged over groups. For multi-valued groups (colours, pose, motion, age) pooled
binary counts flatter the model (every true negative of the other colours counts), so we also
report the group-wise argmax accuracy and macro F1.
"""

from __future__ import annotations

import numpy as np

from vtfpar.attributes import Group

HEADLINE_METRICS = ("f1", "mA", "accuracy", "precision", "recall")
"""The instance-based scores every evaluation and every prior baseline reports (``compute_metrics``), and that a
complete ``result.json`` must hold."""


def _div(num, den, empty):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _f1(p, r):
    return float(2 * p * r / (p + r)) if (p + r) > 0 else 0.0


def label_based(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    tp = (pred & gt).sum(0)
    tn = (~pred & ~gt).sum(0)
    fp = (pred & ~gt).sum(0)
    pos = gt.sum(0)
    neg = (~gt).sum(0)
    tpr = _div(tp, pos, np.nan)
    tnr = _div(tn, neg, np.nan)
    ma = np.nanmean(np.stack([tpr, tnr]), axis=0)
    prec = _div(tp, tp + fp, 0.0)
    rec = _div(tp, pos, 0.0)
    f1 = _div(2 * prec * rec, prec + rec, 0.0)
    return {"ma": ma, "tpr": tpr, "tnr": tnr, "precision": prec, "recall": rec, "f1": f1, "pos": pos}


def instance_based(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    inter = (pred & gt).sum(1)
    union = (pred | gt).sum(1)
    npred = pred.sum(1)
    ngt = gt.sum(1)
    both_empty = (npred == 0) & (ngt == 0)
    acc = np.where(both_empty, 1.0, _div(inter, union, 1.0))
    prec = np.where(both_empty, 1.0, _div(inter, npred, 0.0))
    rec = np.where(both_empty, 1.0, _div(inter, ngt, 0.0))
    f1_i = _div(2 * prec * rec, prec + rec, 0.0)
    p, r = float(prec.mean()), float(rec.mean())
    return {"accuracy": float(acc.mean()), "precision": p, "recall": r, "f1": _f1(p, r),
            "f1_per_sample": float(f1_i.mean())}


def grouped(pred: np.ndarray, gt: np.ndarray, groups: list[Group]) -> dict[str, float]:
    accs, precs, recs, f1s = [], [], [], []
    for g in groups:
        p, y = pred[:, g.start:g.stop], gt[:, g.start:g.stop]
        tp, fp = int((p & y).sum()), int((p & ~y).sum())
        tn, fn = int((~p & ~y).sum()), int((~p & y).sum())
        accs.append((tp + tn) / max(tp + fp + tn + fn, 1))
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        precs.append(pr)
        recs.append(rc)
        f1s.append(_f1(pr, rc))
    return {"accuracy": float(np.mean(accs)), "precision": float(np.mean(precs)),
            "recall": float(np.mean(recs)), "f1": float(np.mean(f1s))}


def multiclass_groups(scores: np.ndarray, gt: np.ndarray, groups: list[Group]) -> dict[str, dict[str, float]]:
    """Per multi-valued group: argmax accuracy and macro F1 over samples with exactly one true value."""
    out = {}
    for g in groups:
        if not g.multiclass:
            continue
        y = gt[:, g.start:g.stop]
        keep = y.sum(1) == 1
        if not keep.any():
            continue
        true = y[keep].argmax(1)
        guess = scores[keep, g.start:g.stop].argmax(1)
        f1s = []
        for c in range(g.size):
            tp = int(((guess == c) & (true == c)).sum())
            fp = int(((guess == c) & (true != c)).sum())
            fn = int(((guess != c) & (true == c)).sum())
            if tp + fn == 0:
                continue  # class absent from the ground truth: macro over present classes
            f1s.append(_f1(tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn)))
        out[g.name] = {"accuracy": float((guess == true).mean()), "macro_f1": float(np.mean(f1s))}
    return out


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    groups: list[Group],
    threshold: float = 0.5,
) -> dict:
    """All figures for predicted probabilities ``probs`` [N,M] against 0/1 ``labels`` [N,M]."""
    probs = np.asarray(probs, dtype=np.float64)
    gt = np.asarray(labels) > 0.5
    pred = probs >= threshold
    lab = label_based(pred, gt)
    inst = instance_based(pred, gt)
    mc = multiclass_groups(probs, gt, groups)
    out = {
        "mA": float(np.nanmean(lab["ma"])),
        **inst,
        "grouped": grouped(pred, gt, groups),
        "multiclass_groups": mc,
        "threshold": threshold,
        "num_samples": int(gt.shape[0]),
        "per_attribute": [
            {"name": n, "positives": int(lab["pos"][j]), "mA": float(lab["ma"][j]),
             "precision": float(lab["precision"][j]), "recall": float(lab["recall"][j]),
             "f1": float(lab["f1"][j])}
            for j, n in enumerate(names)
        ],
    }
    if mc:
        out["grouped"]["argmax_accuracy"] = float(np.mean([v["accuracy"] for v in mc.values()]))
        out["grouped"]["argmax_macro_f1"] = float(np.mean([v["macro_f1"] for v in mc.values()]))
    return out


def prior_baselines(train_labels: np.ndarray, test_labels: np.ndarray, names, groups, threshold=0.5) -> dict:
    """What a model that ignores the video scores.

    ``all_positive`` predicts every attribute present. ``majority`` predicts, from the training
    labels alone, the most frequent value of every multi-valued group and, for binary
    attributes, positive where the training positive ratio is >= 0.5.
    """
    n = test_labels.shape[0]
    ratio = np.asarray(train_labels, dtype=np.float64).mean(0)
    majority = (ratio >= 0.5).astype(np.float64)
    for g in groups:
        if g.multiclass:
            majority[g.start:g.stop] = 0.0
            majority[g.start + int(ratio[g.start:g.stop].argmax())] = 1.0
    res = {}
    for key, probs in (("all_positive", np.ones_like(test_labels, dtype=np.float64)),
                       ("majority", np.tile(majority, (n, 1)))):
        m = compute_metrics(probs, test_labels, names, groups, threshold)
        res[key] = {k: m[k] for k in HEADLINE_METRICS}
        res[key]["per_attribute_f1"] = {a["name"]: a["f1"] for a in m["per_attribute"]}
    return res
