"""How much of a COCO score is the test set's own noise: a bootstrap over the test images.

A test split of 60 images scores a detector on 60 draws of the scene; another 60 would score it
elsewhere. The percentile bootstrap (Efron & Tibshirani 1993, *An Introduction to the
Bootstrap*, ch. 13) resamples the images with replacement, scores every resampled set, and reads
the 2.5 % and 97.5 % quantiles of the scores. Two detectors scored on the same images are
compared on the *same* resampled sets (a paired bootstrap), so the noise they share cancels.

Scoring a resample must not re-run COCOeval: pycocotools' ``evaluate()`` already matches every
detection of every image (``evalImgs``: per category, area range and image, the detections'
scores, which ground truth each matched at each IoU threshold and which are ignored), and only
its ``accumulate()`` step depends on which images are in the set. :class:`PerImageEval` keeps
what ``accumulate`` reads (area "all", the largest maxDets, as model/coco_eval.py reports every AP
number), and :func:`weighted_ap` redoes ``accumulate`` for image *multiplicities* — how many
times each image is in a resampled set — for many sets at once. The rule, as pycocotools'
``COCOeval.accumulate``:

* per category, the detections of the images, each image's sorted by score and cut at maxDet,
  concatenated in image-id order and stably sorted by score (``mergesort``);
* a detection is a true positive at IoU threshold t when it matched a ground truth and is not
  ignored, a false positive when it matched none and is not ignored; ``tp``, ``fp`` are their
  cumulative sums and ``npig`` the number of ground truths not ignored;
* recall ``tp / npig``, precision ``tp / (tp + fp + eps)`` made non-increasing from the right;
  at each of the 101 recall thresholds r the precision at the first index whose recall ≥ r
  (``searchsorted(…, side="left")``), 0 beyond the last detection;
* a category without ground truth is −1 and left out of the mean; mAP is the mean over the
  IoU thresholds 0.50:0.95, recall thresholds and categories, AP50 the same at IoU 0.50.

Where we depart from running pycocotools on a dataset that holds image i ``w_i`` times: an
image's detections enter the cumulative sums with weight ``w_i`` at their one position, where
the copies would sit side by side. The precision envelope and the recall thresholds see the same
points either way, so the result is the same — except that detections of *different* images with
exactly equal scores keep their order here (image-id order) where copies would interleave; the
tests check equality with pycocotools on duplicated datasets with distinct scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

BOOTSTRAP_METRICS: tuple[str, ...] = ("mAP", "AP50")  # what the intervals are given for
RESAMPLES = 1000
LEVEL = 0.95
_CHUNK_ELEMENTS = 8_000_000  # resamples x thresholds x detections per chunk


@dataclass(frozen=True)
class PerImageEval:
    """What ``COCOeval.accumulate`` reads, for area "all" at the largest maxDets.

    ``image_ids``: (N,) in pycocotools' order (sorted ids); ``cat_ids``: (K,);
    ``iou_thrs``: (T,); ``rec_thrs``: (R,). Detections, D of them, grouped by category and, within
    one, in pycocotools' concatenation order (image order, each image's by score, at most
    ``max_det`` each): ``det_image`` (D,) index into ``image_ids``, ``det_cat`` (D,) index into
    ``cat_ids``, ``det_score`` (D,), ``det_tp`` / ``det_fp`` (T, D) bool (matched / unmatched and
    not ignored). ``npig``: (K, N) ground truths not ignored per category and image.
    """

    image_ids: np.ndarray
    cat_ids: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    max_det: int
    det_image: np.ndarray
    det_cat: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_fp: np.ndarray
    npig: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def save(self, path: str | Path) -> Path:
        """``np.savez_compressed`` (plain arrays: it loads without unpickling)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in self.__dict__.items()})
        tmp.replace(path)
        return path

    def select(self, image_ids: Sequence[int]) -> PerImageEval:
        """The same evaluation with its images re-indexed to ``image_ids`` (the same set)."""
        ids = [int(i) for i in image_ids]
        if sorted(ids) != sorted(int(i) for i in self.image_ids):
            raise ValueError("select needs the same image ids")
        pos = {int(i): n for n, i in enumerate(self.image_ids)}
        perm = np.array([pos[i] for i in ids], dtype=np.int64)
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        return PerImageEval(
            np.asarray(ids, dtype=np.int64), self.cat_ids, self.iou_thrs, self.rec_thrs,
            self.max_det, inverse[self.det_image], self.det_cat, self.det_score, self.det_tp,
            self.det_fp, self.npig[:, perm],
        )


def load_per_image_eval(path: str | Path) -> PerImageEval:
    """Read :meth:`PerImageEval.save`'s file (``allow_pickle=False``: never unpickles)."""
    with np.load(Path(path), allow_pickle=False) as z:
        values: dict[str, Any] = {k: z[k] for k in z.files}
    values["max_det"] = int(values["max_det"])
    return PerImageEval(**values)


def per_image_eval(ev: Any) -> PerImageEval:
    """Extract a :class:`PerImageEval` from a ``COCOeval`` after ``evaluate()``."""
    p = ev.params
    image_ids = np.asarray(p.imgIds, dtype=np.int64)
    cat_ids = np.asarray(p.catIds, dtype=np.int64)
    n_img, n_area, n_t = len(image_ids), len(p.areaRng), len(p.iouThrs)
    a = list(p.areaRngLbl).index("all")
    max_det = int(p.maxDets[-1])
    npig = np.zeros((len(cat_ids), n_img), dtype=np.int64)
    parts: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(len(cat_ids)):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + a * n_img + i]
            if e is None:
                continue
            npig[k, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            scores = np.asarray(e["dtScores"], dtype=np.float64)[:max_det]
            if not len(scores):
                continue
            matched = np.asarray(e["dtMatches"])[:, :max_det] != 0  # (T, D_i)
            ignored = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
            parts.append((k, i, scores, matched & ~ignored, ~matched & ~ignored))
    if parts:
        det_cat = np.concatenate([np.full(len(s), k) for k, _, s, _, _ in parts])
        det_image = np.concatenate([np.full(len(s), i) for _, i, s, _, _ in parts])
        det_score = np.concatenate([s for *_, s, _, _ in parts])
        det_tp = np.concatenate([tp for *_, tp, _ in parts], axis=1)
        det_fp = np.concatenate([fp for *_, fp in parts], axis=1)
    else:
        det_cat = det_image = np.zeros(0, dtype=np.int64)
        det_score = np.zeros(0)
        det_tp = det_fp = np.zeros((n_t, 0), dtype=bool)
    return PerImageEval(
        image_ids, cat_ids, np.asarray(p.iouThrs, dtype=np.float64),
        np.asarray(p.recThrs, dtype=np.float64), max_det, det_image.astype(np.int64),
        det_cat.astype(np.int64), det_score, det_tp, det_fp, npig,
    )


def _category_precision(
    pe: PerImageEval, k: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision over the recall thresholds, (B, T), of category ``k`` for image weights
    (B, N); and (B,) whether the category has ground truth in each set."""
    sel = np.flatnonzero(pe.det_cat == k)
    npig = weights @ pe.npig[k]  # (B,)
    out = np.zeros((weights.shape[0], len(pe.iou_thrs)))
    if not len(sel):
        return out, npig > 0
    order = sel[np.argsort(-pe.det_score[sel], kind="mergesort")]
    tp, fp = pe.det_tp[:, order], pe.det_fp[:, order]  # (T, D) in score order
    counted = tp | fp  # not ignored
    fast = bool((counted == counted[:1]).all())  # the ignores do not depend on the threshold
    width = int(tp.any(axis=0).sum()) * tp.shape[0] if fast else tp.size  # floats per resample
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for lo in range(0, weights.shape[0], step):
        w = weights[lo:lo + step].astype(np.float64)
        prec = _at_tp_positions if fast else _every_position
        out[lo:lo + step] = prec(pe, order, tp, fp, w, npig[lo:lo + step])
    return out, npig > 0


def _at_tp_positions(
    pe: PerImageEval, order: np.ndarray, tp: np.ndarray, fp: np.ndarray, w: np.ndarray,
    npig: np.ndarray,
) -> np.ndarray:
    """(b, T) mean precisions, reading only the true positives' positions.

    Recall rises only at a true positive and a false positive never lifts the precision
    envelope above the true positive before it, so the precision at each recall threshold is
    the envelope over the true positives' positions alone. There, the weighted count of counted
    detections up to each position (t-independent here: the ignores are) is a sparse sum of the
    image weights — the detections grouped by the next true positive they precede — instead of
    a cumulative sum over every detection for every threshold."""
    n_t, n_rec = tp.shape[0], len(pe.rec_thrs)
    out = np.zeros((w.shape[0], n_t))
    u = np.flatnonzero(tp.any(axis=0))  # positions that are a true positive at some threshold
    if not len(u):
        return out
    img = pe.det_image[order]
    pos = np.flatnonzero(tp[0] | fp[0])
    seg = np.searchsorted(u, pos, side="left")  # the first such position at or after it
    keep = seg < len(u)
    groups = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (seg[keep], img[pos[keep]])), shape=(len(u), pe.num_images)
    )
    counted = np.cumsum(np.asarray(groups @ w.T), axis=0)  # (U, b): tp + fp up to each
    w_u = w[:, img[u]].T  # (U, b)
    for t in range(n_t):
        mask = tp[t, u]
        if not mask.any():
            continue
        tp_c = np.cumsum(np.where(mask[:, None], w_u, 0.0), axis=0)[mask]  # (P, b)
        pr = tp_c / (counted[mask] + np.spacing(1))
        rc = tp_c / np.maximum(npig, 1)[None, :]
        env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
        for b in range(w.shape[0]):
            idx = np.searchsorted(rc[:, b], pe.rec_thrs, side="left")
            out[b, t] = env[idx[idx < len(rc)], b].sum() / n_rec
    return out


def _every_position(
    pe: PerImageEval, order: np.ndarray, tp: np.ndarray, fp: np.ndarray, w: np.ndarray,
    npig: np.ndarray,
) -> np.ndarray:
    """(b, T) mean precisions by pycocotools' rule over every detection (the general case:
    ignores that change with the IoU threshold, e.g. crowd ground truths)."""
    n_t, n_d = tp.shape
    out = np.zeros((w.shape[0], n_t))
    w_det = w[:, pe.det_image[order]]  # (b, D)
    tp_c = np.cumsum(w_det[:, None, :] * tp[None], axis=-1)  # (b, T, D)
    fp_c = np.cumsum(w_det[:, None, :] * fp[None], axis=-1)
    rc = tp_c / np.maximum(npig, 1)[:, None, None]
    pr = tp_c / (tp_c + fp_c + np.spacing(1))
    env = np.maximum.accumulate(pr[..., ::-1], axis=-1)[..., ::-1]
    for b in range(w.shape[0]):
        for t in range(n_t):
            idx = np.searchsorted(rc[b, t], pe.rec_thrs, side="left")
            out[b, t] = env[b, t, idx[idx < n_d]].sum() / len(pe.rec_thrs)
    return out


def weighted_ap(pe: PerImageEval, weights: np.ndarray) -> dict[str, np.ndarray]:
    """mAP and AP50, (B,) each, of the B image sets that hold image i ``weights[b, i]`` times,
    as pycocotools would score them (module docstring); −1 for a set without any ground truth."""
    weights = np.atleast_2d(np.asarray(weights))
    if weights.shape[1] != pe.num_images:
        raise ValueError(f"weights need {pe.num_images} columns (images), got {weights.shape}")
    n_b, n_k = weights.shape[0], len(pe.cat_ids)
    sums = np.zeros((n_b, len(pe.iou_thrs)))
    valid = np.zeros(n_b)
    for k in range(n_k):
        prec, has_gt = _category_precision(pe, k, weights)
        sums += np.where(has_gt[:, None], prec, 0.0)
        valid += has_gt
    t50 = int(np.flatnonzero(np.isclose(pe.iou_thrs, 0.5))[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        m_ap = np.where(valid > 0, sums.mean(axis=1) / np.maximum(valid, 1), -1.0)
        ap50 = np.where(valid > 0, sums[:, t50] / np.maximum(valid, 1), -1.0)
    return {"mAP": m_ap, "AP50": ap50}


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval: the full-set value, the percentile interval, and how many
    resamples were drawn and dropped (a set without any ground truth has no score)."""

    point: float
    lo: float
    hi: float
    resamples: int
    dropped: int = 0


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) multiplicities: each row is n_images draws with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples)


def _interval(point: float, values: np.ndarray, valid: np.ndarray, level: float) -> Interval:
    kept = values[valid]
    if not len(kept):
        return Interval(point, float("nan"), float("nan"), len(values), len(values))
    lo, hi = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi), len(values), int((~valid).sum()))


def _aligned(runs: Sequence[PerImageEval]) -> list[PerImageEval]:
    """The runs with their images in the first run's order; ValueError naming the image ids
    that are not in every run."""
    first = [int(i) for i in runs[0].image_ids]
    out = [runs[0]]
    for n, r in enumerate(runs[1:], start=1):
        ids = {int(i) for i in r.image_ids}
        if ids != set(first):
            missing = sorted(set(first) - ids)[:5]
            extra = sorted(ids - set(first))[:5]
            raise ValueError(
                f"runs scored on different test images: run {n} lacks image ids {missing} and "
                f"has {extra} that run 0 does not; a paired bootstrap needs the same test split"
            )
        out.append(r.select(first))
    return out


def _mean_over_runs(
    runs: Sequence[PerImageEval], weights: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    scores = [weighted_ap(r, weights) for r in runs]
    valid = np.all([s["mAP"] >= 0 for s in scores], axis=0)
    return {m: np.mean([s[m] for s in scores], axis=0) for m in BOOTSTRAP_METRICS}, valid


def bootstrap_mean_ci(
    runs: Sequence[PerImageEval], *, resamples: int = RESAMPLES, seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Interval]:
    """Percentile intervals of mAP and AP50 averaged over ``runs`` (seeds of one config, scored
    on the same images), every run on the same resampled sets; one run = its own interval."""
    if not runs:
        raise ValueError("bootstrap_mean_ci needs at least one run")
    runs = _aligned(runs)
    full, _ = _mean_over_runs(runs, np.ones((1, runs[0].num_images), dtype=np.int64))
    values, valid = _mean_over_runs(runs, resample_weights(runs[0].num_images, resamples, seed))
    return {m: _interval(float(full[m][0]), values[m], valid, level) for m in BOOTSTRAP_METRICS}


def bootstrap_ci(
    pe: PerImageEval, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> dict[str, Interval]:
    """Percentile intervals of one run's mAP and AP50 over resampled test images."""
    return bootstrap_mean_ci([pe], resamples=resamples, seed=seed, level=level)


def paired_bootstrap(
    a: Sequence[PerImageEval], b: Sequence[PerImageEval], *, resamples: int = RESAMPLES,
    seed: int = 0, level: float = LEVEL,
) -> dict[str, Interval]:
    """Percentile intervals of mean(a) − mean(b) (each a list of runs, e.g. the seeds of one
    arm) for mAP and AP50, every run scored on the same resampled sets of the same images."""
    if not a or not b:
        raise ValueError("paired_bootstrap needs at least one run on each side")
    runs = _aligned([*a, *b])
    ra, rb = runs[: len(a)], runs[len(a):]
    ones = np.ones((1, runs[0].num_images), dtype=np.int64)
    weights = resample_weights(runs[0].num_images, resamples, seed)
    fa, _ = _mean_over_runs(ra, ones)
    fb, _ = _mean_over_runs(rb, ones)
    va, ok_a = _mean_over_runs(ra, weights)
    vb, ok_b = _mean_over_runs(rb, weights)
    return {
        m: _interval(float(fa[m][0] - fb[m][0]), va[m] - vb[m], ok_a & ok_b, level)
        for m in BOOTSTRAP_METRICS
    }
