"""Tests of the other benchmark families' metrics (REC, classic RES, Ref-ZOM, ReasonSeg, ADE20K class mIoU).

Two parts: small hand-computed cases (exact fractions, edge cases), then a cross-check of every
number reported by gres_metrics (both variants) and by the benchmark functions against an
independent numpy computation from the raw masks and decisions of random records.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gsva.evaluation.boxes import box_iou, mask_box, mask_box_iou
from gsva.evaluation.families.ade20k import class_miou
from gsva.evaluation.families.gres import PRECISION_THRESHOLDS, gres_metrics
from gsva.evaluation.families.reason_seg import reason_seg_metrics
from gsva.evaluation.families.refzom import refzom_metrics
from gsva.evaluation.families.res import RES_PRECISION_THRESHOLDS, rec_accuracy, res_metrics
from gsva.evaluation.scores import EXPRESSION_KINDS, VARIANTS, score_expression


from tests.test_metrics import EMPTY, approx, mask

# Hand-made records (pred, gt, rejected, kind) on 4x4 masks, with their hand-computed counts.
# A: gt rows 0-1 x cols 0-1 (area 4), pred rows 0-1 x cols 1-2: I 2, U 6, IoU 1/3.
A = (mask(slice(0, 2), slice(1, 3)), mask(slice(0, 2), slice(0, 2)), False, "single")
# B: gt row 3 + pixel (2, 0) (area 5), pred row 3: I 4, U 5, IoU 4/5.
B_GT = mask(slice(3, 4), slice(None))
B_GT[2, 0] = True
B = (mask(slice(3, 4), slice(None)), B_GT, False, "single")
# C: target wrongly rejected: gt rows 0-1 (area 8), pred rows 0-2; effective I 0, U 8, IoU 0.
C = (mask(slice(0, 3), slice(None)), mask(slice(0, 2), slice(None)), True, "multi")
# D: perfect prediction, gt rows 0-1 x cols 2-3: I 4, U 4, IoU 1.
D = (mask(slice(0, 2), slice(2, 4)), mask(slice(0, 2), slice(2, 4)), False, "single")
# No-target records: rejected (pred area 3, ignored); accepted with an all-zero mask; accepted with area 5.
NT_REJECTED = (mask(slice(0, 1), slice(0, 3)), EMPTY, True, "no-target")
NT_ACCEPTED_EMPTY = (EMPTY.copy(), EMPTY, False, "no-target")
NT_ACCEPTED_AREA5 = (mask(slice(3, 4), slice(None)) | mask(slice(0, 1), slice(0, 1)), EMPTY, False, "no-target")


def scored(*records):
    return [score_expression(*r) for r in records]


# --- REC ----------------------------------------------------------------------------------------


def test_mask_box() -> None:
    assert mask_box(EMPTY) is None
    assert mask_box(mask(slice(2, 3), slice(3, 4))) == (3, 2, 4, 3)  # one pixel at row 2, col 3
    shape_l = mask(slice(1, 4), slice(0, 1)) | mask(slice(3, 4), slice(0, 3))  # an L
    assert mask_box(shape_l) == (0, 1, 3, 4)
    assert mask_box(B_GT) == (0, 2, 4, 4)
    assert mask_box(np.array([[0, 0], [0, 7]], dtype=np.uint8)) == (1, 1, 2, 2)  # nonzero = foreground
    assert all(isinstance(v, int) for v in mask_box(B_GT))
    with pytest.raises(ValueError, match="shape"):
        mask_box(np.zeros((2, 3, 4), dtype=bool))


def test_box_iou() -> None:
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == approx(Fraction(1, 7))  # I 1, U 4 + 4 - 1
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching edges, exclusive ends
    assert box_iou((0, 0, 1, 1), (3, 3, 4, 4)) == 0.0
    assert box_iou((0, 0, 4, 1), (1, 0, 2, 4)) == approx(Fraction(1, 7))  # a cross: I 1, U 4 + 4 - 1
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 1, 1), None) == 0.0
    assert box_iou(None, None) == 0.0
    with pytest.raises(ValueError, match="degenerate"):
        box_iou((1, 0, 1, 2), (0, 0, 2, 2))


def test_mask_box_iou() -> None:
    assert mask_box_iou(A[0], A[1]) == approx(Fraction(1, 3))  # boxes (1,0,3,2) vs (0,0,2,2): I 2, U 6
    assert mask_box_iou(B[0], B[1]) == 0.5  # box (0,3,4,4) inside (0,2,4,4): 4 / 8
    assert mask_box_iou(C[0], C[1], rejected=True) == 0.0  # rejected: no predicted box
    assert mask_box_iou(C[0], C[1], rejected=False) == approx(Fraction(2, 3))
    assert mask_box_iou(EMPTY, D[1]) == 0.0  # empty prediction
    with pytest.raises(ValueError, match="shape"):
        mask_box_iou(np.zeros((3, 4), bool), EMPTY)


def test_rec_accuracy() -> None:
    ious = [0.5, 0.49, 1.0, 0.0]
    assert rec_accuracy(ious) == 0.5  # 0.5 counts (>=)
    assert rec_accuracy(ious, threshold=0.4) == 0.75
    assert rec_accuracy(ious, threshold=1.0) == 0.25
    assert rec_accuracy([]) is None


# --- classic RES ---------------------------------------------------------------------------------


def test_res_metrics_hand_computed() -> None:
    records = [A, B, C, D]
    box_ious = [mask_box_iou(p, g, r) for p, g, r, _ in records]  # 1/3, 1/2, 0, 1
    m = res_metrics(scored(*records), box_ious)
    # per-expression IoU 1/3, 4/5, 0 (rejected), 1
    assert m["giou"] == approx((Fraction(1, 3) + Fraction(4, 5) + 1) / 4)
    assert m["ciou"] == approx(Fraction(2 + 4 + 0 + 4, 6 + 5 + 8 + 4))
    assert m["rec_acc@0.5"] == 0.5
    assert [m[f"pr@{t}"] for t in (0.5, 0.6, 0.7, 0.8)] == [0.5] * 4  # 4/5 >= 0.8 counts
    assert m["pr@0.9"] == 0.25
    assert m["num_expressions"] == 4
    assert set(m) == {"giou", "ciou", "rec_acc@0.5", "num_expressions"} | {f"pr@{t}" for t in RES_PRECISION_THRESHOLDS}


def test_res_metrics_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no-target"):
        res_metrics(scored(A, NT_REJECTED), [0.3, 0.0])
    with pytest.raises(ValueError, match=r"2 scores but 1 box IoUs"):
        res_metrics(scored(A, B), [0.3])


def test_res_metrics_empty() -> None:
    m = res_metrics([], [])
    assert m["num_expressions"] == 0
    assert all(v is None for k, v in m.items() if k != "num_expressions")


# --- Ref-ZOM -------------------------------------------------------------------------------------


def test_refzom_metrics_hand_computed() -> None:
    scores = scored(A, C, NT_REJECTED, NT_ACCEPTED_EMPTY, NT_ACCEPTED_AREA5)
    m = refzom_metrics(scores)
    assert m["oiou"] == approx(Fraction(2 + 0, 6 + 8))  # targets only; the rejected target adds its gt area
    assert m["miou"] == approx(Fraction(1, 6))  # (1/3 + 0) / 2
    assert m["acc"] == approx(Fraction(2, 3))  # rejected and all-zero accepted are both correct
    assert (m["num_expressions"], m["num_target"], m["num_no_target"]) == (5, 2, 3)
    # Contrast with GRES, where an accepted all-zero mask on a no-target is a false negative.
    assert gres_metrics(scores)["n_acc"] == approx(Fraction(1, 3))


def test_refzom_metrics_one_sided() -> None:
    only_no_target = refzom_metrics(scored(NT_ACCEPTED_EMPTY, NT_ACCEPTED_AREA5))
    assert only_no_target["oiou"] is None and only_no_target["miou"] is None
    assert only_no_target["acc"] == 0.5
    only_target = refzom_metrics(scored(B))
    assert only_target["acc"] is None
    assert only_target["oiou"] == approx(Fraction(4, 5)) and only_target["miou"] == approx(Fraction(4, 5))


# --- ReasonSeg -----------------------------------------------------------------------------------


def test_reason_seg_metrics_hand_computed() -> None:
    m = reason_seg_metrics(scored(A, C, NT_REJECTED, NT_ACCEPTED_EMPTY, NT_ACCEPTED_AREA5))
    # IoU: 1/3, 0 (rejected target), 1 (empty union), 1 (empty union), 0 (false positive area 5)
    assert m["giou"] == approx(Fraction(7, 3) / 5)
    assert m["ciou"] == approx(Fraction(2, 6 + 8 + 0 + 0 + 5))
    assert (m["num_expressions"], m["num_no_target"]) == (5, 3)


def test_reason_seg_metrics_all_empty_unions() -> None:
    m = reason_seg_metrics(scored(NT_REJECTED, NT_ACCEPTED_EMPTY))
    assert m["giou"] == 1.0
    assert m["ciou"] is None
    empty = reason_seg_metrics([])
    assert empty["giou"] is None and empty["ciou"] is None and empty["num_expressions"] == 0


# --- ADE20K class mIoU ---------------------------------------------------------------------------


def test_class_miou_hand_computed() -> None:
    # class 7 in two images (A: I 2 U 6; B: I 4 U 5), class 3 rejected (I 0 U 8), class 12 perfect.
    m = class_miou([7, 3, np.int64(7), 12], scored(A, C, B, D))
    assert m["per_class"] == {3: 0.0, 7: approx(Fraction(6, 11)), 12: 1.0}  # 6/11, not the mean 17/30
    assert list(m["per_class"]) == [3, 7, 12]
    assert all(type(c) is int for c in m["per_class"])
    assert m["miou"] == approx((Fraction(6, 11) + 0 + 1) / 3)
    assert (m["num_classes"], m["num_prompts"]) == (3, 4)


def test_class_miou_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"1 class ids but 2 scores"):
        class_miou([1], scored(A, B))
    with pytest.raises(ValueError, match="no-target"):
        class_miou([1, 2], scored(A, NT_REJECTED))
    empty = class_miou([], [])
    assert empty["miou"] is None and empty["num_classes"] == 0 and empty["per_class"] == {}


# --- cross-check against an independent numpy computation ----------------------------------------


def random_records(seed: int, n: int = 300) -> list[tuple[np.ndarray, np.ndarray, bool, str, int]]:
    """(pred, gt, rejected, kind, class_id) with random sizes, kinds consistent with gt, rejections."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, 7, size=2))
        kind = str(rng.choice(EXPRESSION_KINDS))
        gt = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        if kind == "no-target":
            gt[:] = False
        elif not gt.any():
            gt[rng.integers(h), rng.integers(w)] = True
        mode = rng.integers(4)
        if mode == 0:
            pred = np.zeros((h, w), dtype=bool)
        elif mode == 1:
            pred = gt.copy()
        elif mode == 2:
            pred = gt ^ (rng.random((h, w)) < 0.15)
        else:
            pred = rng.random((h, w)) < rng.uniform(0.05, 0.9)
        records.append((pred, gt, bool(rng.random() < 0.3), kind, int(rng.integers(5))))
    return records


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def raw_arrays(records) -> dict[str, np.ndarray]:
    """Per-record counts straight from the masks and decisions (no ExpressionScore involved)."""
    rejected = np.array([r[2] for r in records], dtype=bool)
    eff = [np.zeros_like(p) if rej else p for p, _, rej, *_ in records]
    return {
        "rejected": rejected,
        "kind": np.array([r[3] for r in records], dtype=object),
        "class_id": np.array([r[4] for r in records], dtype=np.int64),
        "has_gt": np.array([g.any() for _, g, *_ in records], dtype=bool),
        "pred_any": np.array([p.any() for p, *_ in records], dtype=bool),
        "I": np.array([np.logical_and(e, r[1]).sum() for e, r in zip(eff, records)], dtype=np.int64),
        "U": np.array([np.logical_or(e, r[1]).sum() for e, r in zip(eff, records)], dtype=np.int64),
        "mI": np.array([np.logical_and(p, g).sum() for p, g, *_ in records], dtype=np.int64),
        "mU": np.array([np.logical_or(p, g).sum() for p, g, *_ in records], dtype=np.int64),
    }


def expected_gres(a: dict[str, np.ndarray], variant: str) -> dict:
    keep_mask = (variant == "gsva") & a["has_gt"] & a["rejected"]
    inter = np.where(keep_mask, a["mI"], a["I"])
    union = np.where(keep_mask, a["mU"], a["U"])
    iou = np.where(a["has_gt"], inter / np.maximum(union, 1), a["rejected"].astype(float))  # targets: U > 0
    t, nt = a["has_gt"], ~a["has_gt"]
    out = {
        "giou": ratio(iou.sum(), iou.size),
        "ciou": ratio(inter.sum(), union.sum()),
        "n_acc": ratio(np.count_nonzero(a["rejected"][nt]), nt.sum()),
        "t_acc": ratio(np.count_nonzero(~a["rejected"][t]), t.sum()),
        "num_expressions": int(iou.size),
        "num_target": int(t.sum()),
        "num_no_target": int(nt.sum()),
    }
    for thr in PRECISION_THRESHOLDS:
        out[f"pr@{thr}"] = ratio(np.count_nonzero(iou[t] >= thr), t.sum())
    for kind in EXPRESSION_KINDS:
        k = a["kind"] == kind
        out[f"{kind}/giou"] = ratio(iou[k].sum(), k.sum())
        out[f"{kind}/ciou"] = ratio(inter[k].sum(), union[k].sum())
        out[f"{kind}/count"] = int(k.sum())
    return out


def raster_box_iou(pred: np.ndarray, gt: np.ndarray, rejected: bool) -> float:
    """Box IoU by painting both tight boxes as pixel masks and counting."""
    if rejected or not pred.any() or not gt.any():
        return 0.0
    boxes = []
    for m in (pred, gt):
        ys, xs = np.nonzero(m)
        painted = np.zeros(m.shape, dtype=bool)
        painted[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        boxes.append(painted)
    return np.logical_and(*boxes).sum() / np.logical_or(*boxes).sum()


def expected_res(a: dict[str, np.ndarray], box_ious: np.ndarray) -> dict:
    iou = a["I"] / a["U"]  # targets only: U >= gt area > 0; a rejected target has I = 0
    out = {
        "giou": ratio(iou.sum(), iou.size),
        "ciou": ratio(a["I"].sum(), a["U"].sum()),
        "rec_acc@0.5": ratio(np.count_nonzero(box_ious >= 0.5), box_ious.size),
        "num_expressions": int(iou.size),
    }
    for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"pr@{thr}"] = ratio(np.count_nonzero(iou >= thr), iou.size)
    return out


def expected_refzom(a: dict[str, np.ndarray]) -> dict:
    t, nt = a["has_gt"], ~a["has_gt"]
    correct = a["rejected"][nt] | ~a["pred_any"][nt]
    return {
        "oiou": ratio(a["I"][t].sum(), a["U"][t].sum()),
        "miou": ratio((a["I"][t] / a["U"][t]).sum(), t.sum()),
        "acc": ratio(np.count_nonzero(correct), nt.sum()),
        "num_expressions": int(t.size),
        "num_target": int(t.sum()),
        "num_no_target": int(nt.sum()),
    }


def expected_reason_seg(a: dict[str, np.ndarray]) -> dict:
    iou = np.ones(a["I"].shape)
    nonempty = a["U"] > 0
    iou[nonempty] = a["I"][nonempty] / a["U"][nonempty]
    return {
        "giou": ratio(iou.sum(), iou.size),
        "ciou": ratio(a["I"].sum(), a["U"].sum()),
        "num_expressions": int(iou.size),
        "num_no_target": int(np.count_nonzero(~a["has_gt"])),
    }


def expected_class_miou(a: dict[str, np.ndarray]) -> dict:
    classes = np.unique(a["class_id"])
    inter = np.bincount(a["class_id"], weights=a["I"], minlength=classes.max(initial=-1) + 1)
    union = np.bincount(a["class_id"], weights=a["U"], minlength=classes.max(initial=-1) + 1)
    per_class = {int(c): float(inter[c] / union[c]) for c in classes}
    return {
        "miou": ratio(sum(per_class.values()), len(per_class)),
        "num_classes": int(classes.size),
        "num_prompts": int(a["I"].size),
        "per_class": per_class,
    }


def assert_same(actual: dict, expected: dict, where: str) -> None:
    assert set(actual) == set(expected), f"{where}: keys differ"
    for key, want in expected.items():
        got = actual[key]
        label = f"{where}[{key!r}]"
        if isinstance(want, dict):
            assert_same(got, want, label)
        elif want is None:
            assert got is None, f"{label}: {got} != None"
        elif isinstance(want, int):
            assert got == want and isinstance(got, int), f"{label}: {got!r} != {want}"
        else:
            assert got is not None and abs(got - want) < 1e-12, f"{label}: {got} != {want}"


def subsets(records):
    targets = [r for r in records if r[1].any()]
    no_targets = [r for r in records if not r[1].any()]
    return {"all": records, "first5": records[:5], "targets": targets, "no_targets": no_targets, "empty": []}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_check_against_raw_masks(seed: int) -> None:
    records = random_records(seed)
    a = raw_arrays(records)
    # The random set must reach every branch, or the cross-check proves little.
    t, nt, rej = a["has_gt"], ~a["has_gt"], a["rejected"]
    assert np.any(t & rej & (a["mI"] > 0))  # wrongly rejected target (gres and gsva differ)
    assert np.any(nt & rej) and np.any(nt & ~rej & ~a["pred_any"]) and np.any(nt & ~rej & a["pred_any"])
    assert np.any(t & ~rej & (a["I"] == a["U"]))  # IoU exactly 1
    assert np.any(t & ~rej & (a["I"] == 0))  # accepted target with no overlap
    assert all(np.any(a["kind"] == k) for k in EXPRESSION_KINDS)

    for name, subset in subsets(records).items():
        a = raw_arrays(subset)
        scores = [score_expression(p, g, rej, kind) for p, g, rej, kind, _ in subset]
        for variant in VARIANTS:
            assert_same(gres_metrics(scores, variant), expected_gres(a, variant), f"{name}/gres_metrics[{variant}]")
        assert_same(refzom_metrics(scores), expected_refzom(a), f"{name}/refzom")
        assert_same(reason_seg_metrics(scores), expected_reason_seg(a), f"{name}/reason_seg")

        target_idx = [i for i, r in enumerate(subset) if r[1].any()]
        target_records = [subset[i] for i in target_idx]
        ta = raw_arrays(target_records)
        target_scores = [scores[i] for i in target_idx]
        box_ious = [mask_box_iou(p, g, rej) for p, g, rej, *_ in target_records]
        raster = np.array([raster_box_iou(p, g, rej) for p, g, rej, *_ in target_records], dtype=float)
        assert np.all(np.abs(np.asarray(box_ious, dtype=float) - raster) < 1e-12), f"{name}: box IoU"
        assert_same(res_metrics(target_scores, box_ious), expected_res(ta, raster), f"{name}/res")
        class_ids = [r[4] for r in target_records]
        assert_same(class_miou(class_ids, target_scores), expected_class_miou(ta), f"{name}/class_miou")
