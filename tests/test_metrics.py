"""Tests of the GRES metrics (gRefCOCO gIoU / cIoU / N-acc / T-acc / Pr@)."""

from __future__ import annotations

import json
from dataclasses import asdict
from fractions import Fraction

import numpy as np
import pytest

from gsva.evaluation.families.gres import PRECISION_THRESHOLDS, GresAccumulator, gres_metrics
from gsva.evaluation.scores import EXPRESSION_KINDS, VARIANTS, ExpressionScore, expression_iou, score_expression
from gsva.evaluation.table import format_metrics_table


def approx(value: Fraction | float) -> object:
    return pytest.approx(float(value), rel=1e-12, abs=0.0)


def mask(rows: slice, cols: slice, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


EMPTY = np.zeros((4, 4), dtype=bool)


# --- the four branches, on 4x4 masks -------------------------------------------------------


def target_accepted() -> ExpressionScore:
    # gt = rows 0-1 x cols 0-1 (area 4); pred = rows 0-1 x cols 1-2 (area 4)
    # I = rows 0-1 x col 1 = 2; U = 4 + 4 - 2 = 6; IoU = 1/3
    return score_expression(mask(slice(0, 2), slice(1, 3)), mask(slice(0, 2), slice(0, 2)), False, "single")


def target_rejected() -> ExpressionScore:
    # gt = rows 0-1 (area 8); pred = rows 0-2 (area 12), but the model said [REJ].
    # gres: effective pred empty -> I = 0, U = 8, IoU 0.  gsva: I = 8, U = 12, IoU = 2/3.
    return score_expression(mask(slice(0, 3), slice(None)), mask(slice(0, 2), slice(None)), True, "multi")


def no_target_rejected() -> ExpressionScore:
    # TP: the (ignored) predicted mask has area 3; I = U = 0, IoU = 1.
    return score_expression(mask(slice(0, 1), slice(0, 3)), EMPTY, True, "no-target")


def no_target_accepted() -> ExpressionScore:
    # FN: predicted area 5 -> I = 0, U = 5, IoU = 0.
    pred = mask(slice(3, 4), slice(None))
    pred[0, 0] = True
    return score_expression(pred, EMPTY, False, "no-target")


def target_accepted_high() -> ExpressionScore:
    # gt = row 3 + pixel (2, 0) (area 5); pred = row 3 (area 4); I = 4, U = 5, IoU = 4/5.
    gt = mask(slice(3, 4), slice(None))
    gt[2, 0] = True
    return score_expression(mask(slice(3, 4), slice(None)), gt, False, "single")


def test_target_accepted() -> None:
    s = target_accepted()
    assert (s.intersection, s.union, s.pred_area, s.gt_area) == (2, 6, 4, 4)
    assert (s.mask_intersection, s.mask_union) == (2, 6)
    for variant in VARIANTS:
        assert expression_iou(s, variant) == approx(Fraction(1, 3))
        m = gres_metrics([s], variant)
        assert m["giou"] == approx(Fraction(1, 3))
        assert m["ciou"] == approx(Fraction(1, 3))
        assert m["t_acc"] == 1.0
        assert m["n_acc"] is None
        assert all(m[f"pr@{t}"] == 0.0 for t in PRECISION_THRESHOLDS)


def test_target_wrongly_rejected_gres_vs_gsva() -> None:
    s = target_rejected()
    assert (s.intersection, s.union) == (0, 8)
    assert (s.mask_intersection, s.mask_union, s.pred_area, s.gt_area) == (8, 12, 12, 8)

    assert expression_iou(s, "gres") == 0.0
    gres = gres_metrics([s], "gres")
    assert gres["giou"] == 0.0
    assert gres["ciou"] == 0.0
    assert gres["t_acc"] == 0.0

    assert expression_iou(s, "gsva") == approx(Fraction(2, 3))
    gsva = gres_metrics([s], "gsva")
    assert gsva["giou"] == approx(Fraction(2, 3))
    assert gsva["ciou"] == approx(Fraction(2, 3))
    assert gsva["t_acc"] == 0.0  # the decision is still counted as a false positive


def test_no_target_rejected_is_true_positive() -> None:
    s = no_target_rejected()
    assert (s.intersection, s.union, s.pred_area, s.gt_area) == (0, 0, 3, 0)
    for variant in VARIANTS:
        assert expression_iou(s, variant) == 1.0
        m = gres_metrics([s], variant)
        assert m["giou"] == 1.0
        assert m["ciou"] is None  # adds 0/0: nothing to cIoU
        assert m["n_acc"] == 1.0
        assert m["t_acc"] is None


def test_no_target_rejected_adds_nothing_to_ciou() -> None:
    base = gres_metrics([target_accepted()])
    with_tp = gres_metrics([target_accepted(), no_target_rejected()])
    assert with_tp["ciou"] == base["ciou"]


def test_no_target_accepted_is_false_negative() -> None:
    s = no_target_accepted()
    assert (s.intersection, s.union, s.pred_area, s.gt_area) == (0, 5, 5, 0)
    for variant in VARIANTS:
        assert expression_iou(s, variant) == 0.0
        m = gres_metrics([s, target_accepted()], variant)
        assert m["n_acc"] == 0.0
        assert m["ciou"] == approx(Fraction(2, 6 + 5))  # union grows by the predicted area


def mix() -> list[ExpressionScore]:
    return [target_accepted(), target_rejected(), no_target_rejected(), no_target_accepted(), target_accepted_high()]


def test_mix_gres() -> None:
    m = gres_metrics(mix(), "gres")
    # per-expression IoU: 1/3, 0, 1, 0, 4/5  -> sum 32/15 over 5
    assert m["giou"] == approx(Fraction(32, 75))
    # sum I = 2+0+0+0+4 = 6, sum U = 6+8+0+5+5 = 24
    assert m["ciou"] == approx(Fraction(6, 24))
    assert m["n_acc"] == approx(Fraction(1, 2))
    assert m["t_acc"] == approx(Fraction(2, 3))
    # target IoUs: 1/3, 0, 4/5
    assert m["pr@0.7"] == approx(Fraction(1, 3))
    assert m["pr@0.8"] == approx(Fraction(1, 3))
    assert m["pr@0.9"] == 0.0
    assert (m["num_expressions"], m["num_target"], m["num_no_target"]) == (5, 3, 2)


def test_mix_gsva() -> None:
    m = gres_metrics(mix(), "gsva")
    # per-expression IoU: 1/3, 2/3, 1, 0, 4/5  -> sum 14/5 over 5
    assert m["giou"] == approx(Fraction(14, 25))
    # sum I = 2+8+0+0+4 = 14, sum U = 6+12+0+5+5 = 28
    assert m["ciou"] == approx(Fraction(14, 28))
    assert m["n_acc"] == approx(Fraction(1, 2))
    assert m["t_acc"] == approx(Fraction(2, 3))
    # target IoUs: 1/3, 2/3, 4/5
    assert m["pr@0.7"] == approx(Fraction(1, 3))
    assert m["pr@0.8"] == approx(Fraction(1, 3))
    assert m["pr@0.9"] == 0.0


def test_per_kind_breakdown() -> None:
    gres = gres_metrics(mix(), "gres")
    assert gres["single/count"] == 2
    assert gres["single/giou"] == approx(Fraction(1, 3) / 2 + Fraction(4, 5) / 2)  # 17/30
    assert gres["single/ciou"] == approx(Fraction(2 + 4, 6 + 5))
    assert gres["multi/count"] == 1
    assert gres["multi/giou"] == 0.0
    assert gres["multi/ciou"] == 0.0  # 0 / 8
    assert gres["no-target/count"] == 2
    assert gres["no-target/giou"] == approx(Fraction(1, 2))
    assert gres["no-target/ciou"] == 0.0  # 0 / 5

    gsva = gres_metrics(mix(), "gsva")
    assert gsva["multi/giou"] == approx(Fraction(2, 3))
    assert gsva["multi/ciou"] == approx(Fraction(8, 12))
    assert gsva["single/giou"] == gres["single/giou"]
    assert gsva["no-target/giou"] == gres["no-target/giou"]


def test_evaluate_keys() -> None:
    expected = {"giou", "ciou", "n_acc", "t_acc", "num_expressions", "num_no_target", "num_target"}
    expected |= {f"pr@{t}" for t in PRECISION_THRESHOLDS}
    expected |= {f"{k}/{m}" for k in EXPRESSION_KINDS for m in ("giou", "ciou", "count")}
    assert set(gres_metrics(mix())) == expected


# --- empty denominators --------------------------------------------------------------------


def test_only_targets_gives_none_for_no_target_metrics() -> None:
    m = gres_metrics([target_accepted(), target_rejected()])
    assert m["n_acc"] is None
    assert m["no-target/giou"] is None
    assert m["no-target/ciou"] is None
    assert m["no-target/count"] == 0
    assert m["t_acc"] == approx(Fraction(1, 2))


def test_only_rejected_no_targets_gives_none_for_target_metrics() -> None:
    m = gres_metrics([no_target_rejected(), no_target_rejected()])
    assert m["giou"] == 1.0
    assert m["ciou"] is None
    assert m["t_acc"] is None
    assert all(m[f"pr@{t}"] is None for t in PRECISION_THRESHOLDS)
    assert m["single/giou"] is None and m["multi/ciou"] is None


def test_empty_accumulator() -> None:
    m = GresAccumulator().evaluate()
    assert all(v is None for k, v in m.items() if not (k.startswith("num_") or k.endswith("/count")))
    assert m["num_expressions"] == 0 and m["single/count"] == 0


# --- accumulator behaviour -----------------------------------------------------------------


def test_accumulator_process_extend_reset() -> None:
    acc = GresAccumulator("gsva")
    acc.process(mix()[0])
    acc.extend(mix()[1:])
    assert acc.evaluate() == gres_metrics(mix(), "gsva")
    acc.reset()
    assert acc.evaluate()["num_expressions"] == 0


def test_score_is_json_round_trippable() -> None:
    for s in mix():
        restored = ExpressionScore(**json.loads(json.dumps(asdict(s))))
        assert restored == s


def test_accepts_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    pred = mask(slice(0, 2), slice(1, 3))
    gt = mask(slice(0, 2), slice(0, 2))
    assert score_expression(torch.from_numpy(pred), torch.from_numpy(gt), False, "single") == target_accepted()


# --- cross-check against an independent re-derivation from raw masks ------------------------


def reference_metrics(samples: list[tuple[np.ndarray, np.ndarray, bool, str]], variant: str) -> dict:
    """Plain-numpy metrics straight from the definitions, looping over raw masks."""
    ious, target_ious = [], []
    sum_i = sum_u = 0
    tp = fn = tn = fp = 0
    for pred, gt, rejected, _kind in samples:
        if gt.sum() == 0:
            tp, fn = tp + rejected, fn + (not rejected)
            effective = np.zeros_like(pred) if rejected else pred
            sum_u += int((effective | gt).sum())
            ious.append(1.0 if rejected else 0.0)
            continue
        tn, fp = tn + (not rejected), fp + rejected
        effective = pred if (not rejected or variant == "gsva") else np.zeros_like(pred)
        i, u = int((effective & gt).sum()), int((effective | gt).sum())
        sum_i, sum_u = sum_i + i, sum_u + u
        ious.append(i / u)
        target_ious.append(i / u)
    out = {
        "giou": sum(ious) / len(ious),
        "ciou": sum_i / sum_u,
        "n_acc": tp / (tp + fn),
        "t_acc": tn / (tn + fp),
        "num_target": tn + fp,
        "num_no_target": tp + fn,
    }
    for t in PRECISION_THRESHOLDS:
        out[f"pr@{t}"] = sum(iou >= t for iou in target_ious) / len(target_ious)
    return out


def random_samples(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, bool, str]]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        kind = str(rng.choice(EXPRESSION_KINDS))
        if kind == "no-target":
            gt = np.zeros((16, 16), dtype=bool)
        else:
            gt = rng.random((16, 16)) < rng.uniform(0.05, 0.6)
            gt[rng.integers(16), rng.integers(16)] = True  # never empty
        # mix of unrelated predictions and near-copies of gt (so that some IoUs pass 0.7-0.9)
        if rng.random() < 0.5:
            pred = gt ^ (rng.random((16, 16)) < rng.uniform(0.0, 0.1))
        else:
            pred = rng.random((16, 16)) < rng.uniform(0.0, 0.5)
        samples.append((pred, gt, bool(rng.random() < 0.4), kind))
    return samples


def reference_giou(samples: list[tuple[np.ndarray, np.ndarray, bool, str]], variant: str) -> float:
    """gIoU of a subset, straight from the definitions (no empty-denominator guards needed here)."""
    ious = []
    for pred, gt, rejected, _kind in samples:
        if gt.sum() == 0:
            ious.append(1.0 if rejected else 0.0)
        elif rejected and variant == "gres":
            ious.append(0.0)
        else:
            ious.append(int((pred & gt).sum()) / int((pred | gt).sum()))
    return sum(ious) / len(ious)


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_cross_check(variant: str) -> None:
    samples = random_samples(200, seed=1234)
    m = gres_metrics([score_expression(*s) for s in samples], variant)
    ref = reference_metrics(samples, variant)
    assert 0 < ref["pr@0.9"] and ref["pr@0.7"] < 1  # the sample exercises the thresholds
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, rel=1e-12, abs=0.0), key
    for kind in EXPRESSION_KINDS:
        subset = [s for s in samples if s[3] == kind]
        assert m[f"{kind}/count"] == len(subset)
        assert m[f"{kind}/giou"] == pytest.approx(reference_giou(subset, variant), rel=1e-12)


# --- errors ---------------------------------------------------------------------------------


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        score_expression(EMPTY, np.ones((4, 5), dtype=bool), False, "single")


def test_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind 'plural'"):
        score_expression(EMPTY, np.ones((4, 4), dtype=bool), False, "plural")


def test_bad_kind_in_process() -> None:
    bad = ExpressionScore("plural", False, 0, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="kind 'plural'"):
        GresAccumulator().process(bad)


def test_no_target_kind_with_non_empty_gt() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        score_expression(EMPTY, np.ones((4, 4), dtype=bool), False, "no-target")


def test_target_kind_with_empty_gt() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        score_expression(EMPTY, EMPTY, True, "single")


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match=r"variant 'refcoco'.*gres.*gsva"):
        GresAccumulator("refcoco")
    with pytest.raises(ValueError, match="variant 'refcoco'"):
        expression_iou(target_accepted(), "refcoco")
    with pytest.raises(ValueError, match="variant 'refcoco'"):
        gres_metrics(mix(), "refcoco")


# --- table ----------------------------------------------------------------------------------


def test_format_metrics_table() -> None:
    table = format_metrics_table({"val (gres)": gres_metrics(mix()), "targets only": gres_metrics([target_accepted()])})
    lines = table.splitlines()
    assert len(lines) == 3
    for name in ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"):
        assert name in lines[0]
    assert lines[1].split() == ["val", "(gres)", "42.67", "25.00", "50.00", "66.67", "33.33", "33.33", "0.00"]
    assert "-" in lines[2].split()  # n_acc is None without no-target expressions
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width
