"""Parity with the authors' model: their released weight format, imported and run by our pipeline,
reproduces their outputs stage by stage.

The kit (``tests/parity_kit.py``) holds, for each validation image, what the authors' code
computed: the prompt ids, both encoders' uint8 inputs, the first-pass logits, the re-evaluation
hidden states, the mask queries, the low-resolution and full-resolution mask logits and every
decision; for one training batch, the four losses. ``tests/test_trajectory_parity.py`` checks their
training over three optimizer updates.

Mask areas: a pixel whose logit lies within the logit tolerance of zero may fall on either side
of it in two correct fp32 implementations (a different summation order moves logits by ~1e-6), so
areas must agree up to the pixels inside that band, and no further.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gsva.model.gsva as gsva_module
from gsva.data.samples import Collator
from gsva.evaluation.benchmarks import open_benchmark, parse_benchmark
from gsva.config import EvalConfig
from gsva.pipeline import Pipeline, from_pretrained
from tests.conftest import REPO, child_environment
from tests.parity_kit import KIT, import_kit_weights, kit_json, official_micro_batch, requires_kit

pytestmark = requires_kit("eval")
EVAL_CASES = sorted(path.name for path in (KIT / "eval").iterdir()) if KIT is not None and (KIT / "eval").is_dir() else []
LOGIT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
BENCHMARK = "grefcoco:val"
PROMPT_STYLE = "gsva_release"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """``scripts/import_weights.py`` on the kit's .bin, exactly as a user runs it."""
    return import_kit_weights(tmp_path_factory.mktemp("parity"))


def _pipeline(imported: Path, *overrides: str) -> Pipeline:
    """The imported model as ``eval.py`` loads it (``from_pretrained``)."""
    return from_pretrained(imported, list(overrides))


@dataclasses.dataclass
class Traced:
    """What our teacher-forced prediction of one image computed at each stage (slot order)."""

    input_ids: np.ndarray
    sam_input: np.ndarray  # (h, w, 3) uint8, before padding
    clip_input: np.ndarray  # (C, C, 3) uint8
    rejected: list[bool]
    pass1_logits: torch.Tensor  # (T, V) at the position before each slot
    reeval_hidden: torch.Tensor  # (T, D) input of the query projector
    queries: torch.Tensor  # (T, C)
    low_res: torch.Tensor  # (T, 256, 256)
    full_res: torch.Tensor  # (T, H, W)


@pytest.fixture(scope="module")
def traced(imported) -> dict[str, Traced]:
    """Each kit evaluation image through the evaluation dataset, the collator and
    ``predict_teacher_forced`` (batch 1), with every stage recorded on the way."""
    pipeline = _pipeline(imported)
    cfg, tokenizer, model = pipeline.cfg, pipeline.tokenizer, pipeline.model
    dataset = open_benchmark(parse_benchmark(BENCHMARK), KIT / "dataset", pipeline.builder, EvalConfig(prompt_style=PROMPT_STYLE))
    item_of_image = {image_id: item for item, image_id in enumerate(dataset.image_ids)}
    collate = Collator(tokenizer.pad_token_id, cfg.data.sam_image_size)
    stages: dict[str, object] = {}

    def record_projector(module, inputs, output):
        stages["reeval_hidden"], stages["queries"] = inputs[0], output

    def record_logits(module, inputs, output):
        stages.setdefault("pass1_logits", output)  # the first lm_head call reads the first pass

    def decode_masks(*args, **kwargs):
        stages["low_res"] = original_decode(*args, **kwargs)
        return stages["low_res"]

    def postprocess_masks(*args, **kwargs):
        stages["full_res"] = original_postprocess(*args, **kwargs)
        return stages["full_res"]

    original_decode, original_postprocess = gsva_module.decode_masks, gsva_module.postprocess_masks
    hooks = [
        model.query_projector.register_forward_hook(record_projector),
        model.mllm.language_model.get_output_embeddings().register_forward_hook(record_logits),
    ]
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gsva_module, "decode_masks", decode_masks)
        patch.setattr(gsva_module, "postprocess_masks", postprocess_masks)
        for case in EVAL_CASES:
            stages.clear()
            image_id = kit_json("eval", case, "meta.json")["image_id"]
            batch = collate([dataset[item_of_image[image_id]]])
            (prediction,) = model.predict_teacher_forced(batch)
            height, width = batch.resized_sizes[0]
            results[case] = Traced(
                input_ids=batch.input_ids[0].numpy(),
                sam_input=batch.sam_images[0, :, :height, :width].permute(1, 2, 0).numpy(),
                clip_input=batch.clip_images[0].permute(1, 2, 0).numpy(),
                rejected=prediction.rejected,
                **{name: stages[name] for name in ("pass1_logits", "reeval_hidden", "queries", "low_res", "full_res")},
            )
    for hook in hooks:
        hook.remove()
    return results


def _authors_decisions(case: str) -> list[bool]:
    """Per slot: rejected by the authors' model."""
    return [slot["decision"] == "REJ" for slot in kit_json("eval", case, "result.json")["slots"]]


def _authors_areas(case: str) -> list[int]:
    areas = kit_json("eval", case, "mask_areas.json")["mask_area_logits_gt_0"]
    return [areas[str(slot)] for slot in range(len(areas))]


def _check_areas(ours: list[int], case: str, full_res: torch.Tensor) -> None:
    """Areas equal up to the pixels whose logit lies within the tolerance of zero."""
    undecided = (full_res.abs() < LOGIT_TOLERANCE).flatten(1).sum(1).tolist()
    for slot, (area, theirs, band) in enumerate(zip(ours, _authors_areas(case), undecided)):
        assert abs(area - theirs) <= band, f"{case} slot {slot}: area {area} vs the authors' {theirs} ({band} pixels within {LOGIT_TOLERANCE} of 0)"


def _load(case: str, name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(KIT / "eval" / case / name))


@pytest.mark.parametrize("case", EVAL_CASES)
def test_prompt_ids_and_encoder_pixels_are_the_authors(traced, case):
    ours = traced[case]
    np.testing.assert_array_equal(ours.input_ids, np.load(KIT / "eval" / case / "input_ids.npy")[0])
    np.testing.assert_array_equal(ours.sam_input, np.array(Image.open(KIT / "eval" / case / "sam_resized.png")))
    np.testing.assert_array_equal(ours.clip_input, np.array(Image.open(KIT / "eval" / case / "clip_crop.png")))


@pytest.mark.parametrize("case", EVAL_CASES)
def test_every_stage_and_decision_matches_the_authors(traced, case):
    ours = traced[case]
    assert ours.rejected == _authors_decisions(case)
    for name, file in (
        ("pass1_logits", "logits_pass1_at_query.npy"),
        ("reeval_hidden", "reeval_final_hidden_at_query.npy"),
        ("queries", "query_embeddings.npy"),
        ("low_res", "low_res_mask_logits.npy"),
    ):
        torch.testing.assert_close(getattr(ours, name), _load(case, file), rtol=0, atol=LOGIT_TOLERANCE, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(ours.full_res[0], _load(case, "pred_mask_logits_00.npy"), rtol=0, atol=LOGIT_TOLERANCE)
    _check_areas((ours.full_res > 0).flatten(1).sum(1).tolist(), case, ours.full_res)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 8])
def test_eval_cli_reproduces_decisions_and_mask_areas(imported, traced, tmp_path, batch_size):
    """``eval.py`` as a user runs it on the kit's dataset: the authors' decisions and mask areas."""
    command = [
        sys.executable, str(REPO / "eval.py"), "--weights", str(imported), "--benchmark", BENCHMARK,
        "--prompt-style", PROMPT_STYLE, "--batch-size", str(batch_size), "--num-workers", "0",
        "--output-dir", str(tmp_path), f"data.dataset_dir={KIT / 'dataset'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment(), cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (records_file,) = tmp_path.glob("*/records.jsonl")
    by_image: dict[int, list[dict]] = {}
    for line in records_file.read_text().splitlines():
        record = json.loads(line)
        by_image.setdefault(record["image_id"], []).append(record)
    for case in EVAL_CASES:
        meta = kit_json("eval", case, "meta.json")
        records = by_image[meta["image_id"]]
        assert [record["expression"] for record in records] == meta["sentences_as_used"]
        assert [record["rejected"] for record in records] == _authors_decisions(case)
        _check_areas([record["pred_area"] for record in records], case, traced[case].full_res)


@pytest.mark.parametrize("normalization", ["authors", "seg_only"])
def test_training_losses_match_the_authors(imported, normalization):
    """LoRA dropout 0 and gradient checkpointing on, as the kit's losses were computed. The authors
    count each [REJ] row as an all-zero logit map in the BCE and DICE sums and in their divisor:
    our ``authors`` normalisation must give their losses, ``seg_only`` must not."""
    pipeline = _pipeline(
        imported, "model.lora_dropout=0", "model.gradient_checkpointing=true", f"model.mask_loss_normalization={normalization}"
    )
    cfg, tokenizer, model = pipeline.cfg, pipeline.tokenizer, pipeline.model
    model.train()
    seg_id, rej_id = model.token_ids.seg_ids[0], model.token_ids.rej_id
    batch = official_micro_batch(KIT / "train", Collator(tokenizer.pad_token_id, cfg.data.sam_image_size), cfg.data.clip_image_size, seg_id, rej_id)
    losses = model(batch)
    ours = {
        "ce_loss": float(losses.ce) * cfg.model.ce_loss_weight,
        "mask_bce_loss": float(losses.bce) * cfg.model.bce_loss_weight,
        "mask_dice_loss": float(losses.dice) * cfg.model.dice_loss_weight,
        "loss": float(losses.total.detach()),
    }
    reference = kit_json("train", "losses.json")["reference"]
    relative = {name: abs(ours[name] - reference[name]) / abs(reference[name]) for name in ours}
    if normalization == "authors":
        assert max(relative.values()) < LOSS_TOLERANCE, relative
    else:
        assert relative["ce_loss"] < LOSS_TOLERANCE, relative
        assert relative["mask_bce_loss"] > 100 * LOSS_TOLERANCE and relative["mask_dice_loss"] > 100 * LOSS_TOLERANCE, relative
