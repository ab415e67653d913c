"""`aigc eval` for a classifier: its predictions on labelled texts, scored.

The texts are data.source's held-out split (the records training held out: same data.seed and
data.val_fraction), or eval.references when it names a labelled records file. Reported:
accuracy; precision, recall and F1 macro-, micro- and weighted-averaged; ROC-AUC for two labels;
the per-class table in scikit-learn's classification_report layout (report.md); a confusion
matrix (confusion_matrix.png beside the report). multi_label: subset accuracy, the averages over
labels (and per sample) at the checkpoint's thresholds; regression: mse, mae, r2. Definitions are
scikit-learn's (zero_division=0), checked against it in tests/evaluation/test_classification.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aigc_cli.config import ExperimentConfig
from aigc_cli.errors import AigcError

AVERAGES = ("macro", "micro", "weighted")


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)


def confusion(y_true: list[int], y_pred: list[int], n: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision, recall = _divide(tp, tp + fp), _divide(tp, tp + fn)
    return precision, recall, _divide(2 * tp, 2 * tp + fp + fn)


def averaged(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """(precision, recall, f1) per averaging: macro (mean over classes), micro (pooled counts),
    weighted (mean weighted by support)."""
    p, r, f = per_class(tp, fp, fn)
    support = tp + fn
    weighted = (lambda x: (x * support).sum() / support.sum()) if support.sum() else (lambda x: 0.0)  # np.average's order of operations
    mp, mr, mf = per_class(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))
    return {"macro": (p.mean(), r.mean(), f.mean()), "micro": (mp[0], mr[0], mf[0]),
            "weighted": (weighted(p), weighted(r), weighted(f))}


def roc_auc(y_true: list[int], positive_scores: list[float]) -> float:
    """The area under the ROC curve: P(score of a positive > score of a negative), ties counting half."""
    y, s = np.asarray(y_true), np.asarray(positive_scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def report_table(names: list[str], tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, accuracy: float | None,
                 samples: tuple[float, float, float] | None = None, digits: int = 2) -> str:
    """scikit-learn's classification_report text, row for row."""
    p, r, f = per_class(tp, fp, fn)
    support = (tp + fn).astype(int)
    width = max(max(len(n) for n in names), len("weighted avg"), digits)
    head = "{:>{width}s} " + " {:>9}" * 4
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    out = head.format("", "precision", "recall", "f1-score", "support", width=width) + "\n\n"
    for values in zip(names, p, r, f, support):
        out += row.format(*values, width=width, digits=digits)
    out += "\n"
    total = int(support.sum())
    avgs = averaged(tp, fp, fn)
    for average in AVERAGES[1:2] + AVERAGES[:1] + AVERAGES[2:]:  # micro (or accuracy), macro, weighted
        if average == "micro" and accuracy is not None:
            accuracy_row = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
            out += accuracy_row.format("accuracy", "", "", accuracy, total, width=width, digits=digits)
            continue
        out += row.format(f"{average} avg", *avgs[average], total, width=width, digits=digits)
    if samples is not None:
        out += row.format("samples avg", *samples, total, width=width, digits=digits)
    return out


def single_label_metrics(y_true: list[int], y_pred: list[int], probabilities: list[list[float]], names: list[str]) -> tuple[dict, dict]:
    counts = confusion(y_true, y_pred, len(names))
    tp = np.diag(counts).astype(float)
    fp, fn = counts.sum(0) - tp, counts.sum(1) - tp
    accuracy = float(tp.sum() / counts.sum())
    metrics = {"accuracy": accuracy}
    for average, (p, r, f) in averaged(tp, fp, fn).items():
        metrics |= {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
    if len(names) == 2:
        metrics["roc_auc"] = roc_auc(y_true, [row[1] for row in probabilities])
    details = {"classification_report": report_table(names, tp, fp, fn, accuracy), "confusion_matrix": counts.tolist(), "labels": names}
    return metrics, details


def multi_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> tuple[dict, dict]:
    tp = (y_true * y_pred).sum(0).astype(float)
    fp, fn = ((1 - y_true) * y_pred).sum(0).astype(float), (y_true * (1 - y_pred)).sum(0).astype(float)
    row_tp, row_fp, row_fn = (y_true * y_pred).sum(1), ((1 - y_true) * y_pred).sum(1), (y_true * (1 - y_pred)).sum(1)
    sp, sr, sf = per_class(row_tp, row_fp, row_fn)
    samples = (float(sp.mean()), float(sr.mean()), float(sf.mean()))
    metrics = {"subset_accuracy": float((y_true == y_pred).all(1).mean())}
    for average, (p, r, f) in averaged(tp, fp, fn).items():
        metrics |= {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
    metrics |= {"samples_precision": samples[0], "samples_recall": samples[1], "samples_f1": samples[2]}
    return metrics, {"classification_report": report_table(names, tp, fp, fn, None, samples), "labels": names}


def regression_metrics(y_true: list[float], y_pred: list[float]) -> tuple[dict, dict]:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    residual = ((t - p) ** 2).sum()
    spread = ((t - t.mean()) ** 2).sum()
    return {"mse": float(((t - p) ** 2).mean()), "mae": float(np.abs(t - p).mean()),
            "r2": float(1 - residual / spread) if spread else float("nan")}, {}


def save_confusion_png(counts: list[list[int]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aigc_cli.runs.atomic_files import write_bytes_atomic

    size = max(3.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(np.asarray(counts), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(1, max(max(r) for r in counts))
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


LOWER_IS_BETTER = ("mse", "mae")


def entity_metrics(truth: list[list[str]], predicted: list[list[str]]) -> tuple[dict, dict]:
    """Entity-level scores: an entity counts when its type and its first and last word both match
    (seqeval's default mode); per-type table in seqeval's classification_report layout."""
    from aigc_cli.data.tagged import entities

    kinds: dict[str, list[float]] = {}
    for t_tags, p_tags in zip(truth, predicted):
        t_set, p_set = set(entities(t_tags)), set(entities(p_tags))
        for kind, *_ in t_set | p_set:
            kinds.setdefault(kind, [0.0, 0.0, 0.0])
        for e in t_set & p_set:
            kinds[e[0]][0] += 1
        for e in p_set - t_set:
            kinds[e[0]][1] += 1
        for e in t_set - p_set:
            kinds[e[0]][2] += 1
    names = sorted(kinds)
    tp, fp, fn = (np.array([kinds[n][k] for n in names]) for k in range(3))
    words = sum(len(t) for t in truth)
    metrics = {"token_accuracy": sum(a == b for t, p in zip(truth, predicted) for a, b in zip(t, p)) / max(1, words)}
    if not names:
        return metrics | {"micro_precision": 0.0, "micro_recall": 0.0, "micro_f1": 0.0}, {"classification_report": ""}
    for average, (p, r, f) in averaged(tp, fp, fn).items():
        metrics |= {f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)}
    return metrics, {"classification_report": report_table(names, tp, fp, fn, None), "entity_types": names}


def evaluate_classifier(cfg: ExperimentConfig, checkpoint: str | Path, report_dir: Path, log=lambda _: None) -> tuple[dict, dict]:
    """(metrics, details) of the checkpoint's predictions on the held-out records (or eval.references)."""
    from aigc_cli.data.labelled import label_ids
    from aigc_cli.generation.classification import load_classifier, predict_scores
    from aigc_cli.training.classification import load_records, split_records

    references = cfg.eval.references
    if isinstance(references, list):
        raise AigcError("eval.references for a classifier is one labelled records file", "pass one file")
    if cfg.model.backend == "tagger":
        return _evaluate_tagger(cfg, checkpoint, references, log)
    if cfg.model.backend == "reward":
        return _evaluate_reward(cfg, checkpoint, references, log)
    records = load_records(cfg, references) if references else split_records(cfg)[1]
    clf = load_classifier(checkpoint, cfg.train.device)
    if clf.task != cfg.model.task:
        raise AigcError(f"{checkpoint} is a {clf.task} classifier but model.task is {cfg.model.task}", "use the config it was trained with")
    truth = label_ids(records, clf.labels, clf.task)
    scores = predict_scores(clf, [r.text for r in records], cfg.eval.batch_size)
    where = references or f"the held-out {cfg.data.val_fraction:.0%} of {cfg.data.source}"
    details = {"checkpoint": str(checkpoint), "scored": f"{checkpoint} on {len(records):,} labelled texts ({where})"}
    log(f"scored {details['scored']}")
    if clf.task == "regression":
        metrics, more = regression_metrics(truth, [s[0] for s in scores])
        return metrics, details | more
    if clf.task == "multi_label":
        limits = np.asarray(clf.thresholds or [0.5] * len(clf.labels))
        metrics, more = multi_label_metrics(np.asarray(truth, dtype=int), (np.asarray(scores) >= limits).astype(int), clf.labels)
        return metrics, details | more
    predicted = [max(range(len(s)), key=s.__getitem__) for s in scores]
    metrics, more = single_label_metrics(truth, predicted, scores, clf.labels)
    png = report_dir / "confusion_matrix.png"
    save_confusion_png(more["confusion_matrix"], clf.labels, png)
    return metrics, details | more | {"confusion_matrix_png": str(png)}


def _evaluate_tagger(cfg: ExperimentConfig, checkpoint, references: str | None, log) -> tuple[dict, dict]:
    from aigc_cli.generation.classification import load_classifier, predict_tags
    from aigc_cli.training.classification import split_sentences

    sentences = split_sentences(cfg, references)[1]
    clf = load_classifier(checkpoint, cfg.train.device)
    predicted = predict_tags(clf, [s.words for s in sentences], cfg.eval.batch_size)
    where = references or f"the held-out {cfg.data.val_fraction:.0%} of {cfg.data.source}"
    details = {"checkpoint": str(checkpoint), "scored": f"{checkpoint} on {len(sentences):,} tagged sentences ({where})"}
    log(f"scored {details['scored']}")
    metrics, more = entity_metrics([s.tags for s in sentences], predicted)
    return metrics, details | more


def reward_metrics(chosen: list[float], rejected: list[float]) -> dict:
    """Reward accuracy (chosen scored above rejected), the mean margin and the Bradley–Terry loss."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    return {"reward_accuracy": float((c > r).mean()), "mean_margin": float((c - r).mean()),
            "loss": float(np.logaddexp(0.0, -(c - r)).mean())}


def _evaluate_reward(cfg: ExperimentConfig, checkpoint, references: str | None, log) -> tuple[dict, dict]:
    from aigc_cli.data.labelled import pair_texts
    from aigc_cli.generation.classification import load_classifier, predict_scores
    from aigc_cli.training.classification import split_pairs

    pairs = split_pairs(cfg, references)[1]
    clf = load_classifier(checkpoint, cfg.train.device)
    texts = [pair_texts(p) for p in pairs]
    chosen = [s[0] for s in predict_scores(clf, [c for c, _ in texts], cfg.eval.batch_size)]
    rejected = [s[0] for s in predict_scores(clf, [r for _, r in texts], cfg.eval.batch_size)]
    where = references or f"the held-out {cfg.data.val_fraction:.0%} of {cfg.data.source}"
    details = {"checkpoint": str(checkpoint), "scored": f"{checkpoint} on {len(pairs):,} preference pairs ({where})"}
    log(f"scored {details['scored']}")
    return reward_metrics(chosen, rejected), details
