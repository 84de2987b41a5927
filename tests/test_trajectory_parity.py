"""Parity of TRAINING with the authors' model: three optimizer updates of our real training step
(the DeepSpeed engine that ``train.py`` builds: AdamW, gradient accumulation, clipping) from their
released weights reproduce what their code computed, loss by loss, norm by norm, tensor by tensor.

The kit's ``trajectory/`` (``tests/parity_kit.py``) holds six of their training micro-batches and,
from ``gsva-tiny.bin`` trained as their ``main.py`` trains (AdamW betas 0.9/0.95, eps 1e-8, weight
decay 0, accumulation 2, clipping at 1.0, fp32, gradient checkpointing on, LoRA dropout 0, a given
lr per update): every micro-step's losses, every update's gradient norm before clipping, the
trainable tensors and their values after update 3.

Weight tolerance, from float32 rounding. Two correct fp32 implementations differ by a summation
order (our SAM two-way transformer computes the same attention in another order), which moves a
gradient by a few float32 ulps relative to the terms summed into it. Adam divides the first moment
by the root of the second, so a gradient error moves an update by about lr x (error / |gradient|):
small where the gradient is large, up to the whole update where the gradient is near zero. Hence
two checks on the update of each tensor (its value after update 3 minus its value in the
released weights):

- Every tensor with a real gradient: the difference of the two updates is below
  ``UPDATE_RTOL`` of the authors' update in norm, and below ``WEIGHT_ATOL`` in every value (3 % of
  the largest move three updates can make: lr x (1 + 0.5 + 0.25) = 1.75e-3 per value).
- The key-projection biases of attention (``*.k_proj.bias``) get a gradient that is zero in exact
  arithmetic (a key bias adds the same amount to every score of a query, and softmax ignores it):
  theirs and ours are rounding noise, which Adam then turns into moves of either sign. They are
  checked to stay noise on both sides: their update is below ``NOISE_FRACTION`` of the update of
  their own layer's weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from gsva.data.samples import Collator
from gsva.engine.distributed import init_distributed
from gsva.engine.trainer import backward_and_step, build_engine
from gsva.model.released import released_name
from gsva.pipeline import from_pretrained
from tests.parity_kit import KIT, import_kit_weights, kit_json, official_micro_batch, requires_kit

pytestmark = requires_kit("trajectory", "trajectory.json")

RELATIVE_TOLERANCE = 1e-4
"""Losses and gradient norms, relative."""
UPDATE_RTOL = 1e-3
"""Per tensor: norm of (our update - the authors' update) / norm of the authors' update."""
WEIGHT_ATOL = 5e-5
"""Per value: |ours - theirs| after update 3 (3 % of the largest possible move, 1.75e-3)."""
NOISE_FRACTION = 1e-3
"""A key-projection bias moves by less than this fraction of its layer's weight (in norm)."""
LOSS_NAMES = {"loss": "total", "ce_loss": "ce", "mask_bce_loss": "bce", "mask_dice_loss": "dice"}
"""The authors' loss names -> ours; theirs are weighted (their ``model_forward``), ours are not."""


@dataclass
class Trajectory:
    """What our training step computed over the kit's micro-batches."""

    losses: list[dict[str, float]]
    """Per micro-step, in the authors' names and weighting."""
    lrs: list[float]
    """Per update: the LR the optimizer applied."""
    grad_norms: list[float]
    """Per update: the gradient norm before clipping."""
    before: dict[str, torch.Tensor]
    """Our trainable parameters as imported from the release weights, by our names."""
    after: dict[str, torch.Tensor]
    """The same after the last update."""


def _released_to_ours(keys: list[str]) -> dict[str, str | None]:
    """Release name -> our parameter name (without peft's ``base_layer.`` level), None if none."""
    return {key: released_name(key, "gsva-bin") for key in keys}


def trainable_mismatch(ours: set[str], reference_keys: list[str]) -> list[str]:
    """The differences between our trainable names and the authors' (release naming), each as a
    sentence; empty when the two sets are equal name for name."""
    theirs = _released_to_ours(reference_keys)
    unmapped = [key for key, name in theirs.items() if name is None]
    expected = {name for name in theirs.values() if name is not None}
    return (
        [f"no place in our model for the authors' trainable {key}" for key in unmapped]
        + [f"trained by the authors, frozen here: {name}" for name in sorted(expected - ours)]
        + [f"trained here, frozen by the authors: {name}" for name in sorted(ours - expected)]
    )


def is_rounding_noise(name: str) -> bool:
    """Attention key biases: a gradient that is zero in exact arithmetic (softmax shift invariance)."""
    return name.endswith("k_proj.bias")


@dataclass
class UpdateCheck:
    """How one tensor's update compares with the authors'."""

    name: str
    relative: float
    """Norm of the update difference / norm of the authors' update."""
    max_difference: float
    """Largest |ours - theirs| after the last update."""
    noise_fraction: float
    """Norm of the larger of the two updates / norm of the update of the layer's weight."""

    def failures(self) -> list[str]:
        if is_rounding_noise(self.name):
            return [f"{self.name}: moved {self.noise_fraction:.2e} of its weight's update"] if self.noise_fraction >= NOISE_FRACTION else []
        failed = []
        if self.relative >= UPDATE_RTOL:
            failed.append(f"{self.name}: update differs by {self.relative:.2e} relative")
        if self.max_difference >= WEIGHT_ATOL:
            failed.append(f"{self.name}: a value differs by {self.max_difference:.2e}")
        return failed


def compare_updates(before: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[UpdateCheck]:
    """One ``UpdateCheck`` per tensor of ``theirs`` (our names), from the common starting values."""
    def update_norm(name: str, values: dict[str, torch.Tensor]) -> float:
        return float((values[name] - before[name]).norm())

    checks = []
    for name, reference in theirs.items():
        ours_update, theirs_update = ours[name] - before[name], reference - before[name]
        noise = 0.0
        if is_rounding_noise(name):
            weight = name.removesuffix("bias") + "weight"
            noise = max(update_norm(name, ours), update_norm(name, theirs)) / max(update_norm(weight, theirs), 1e-30)
        checks.append(UpdateCheck(
            name=name,
            relative=float((ours_update - theirs_update).norm() / theirs_update.norm().clamp_min(1e-30)),
            max_difference=float((ours[name] - reference).abs().max()),
            noise_fraction=noise,
        ))
    return checks


@pytest.fixture(scope="module")
def reference() -> dict:
    return kit_json("trajectory", "trajectory.json")


@pytest.fixture(scope="module")
def authors_after(reference) -> dict[str, torch.Tensor]:
    """The authors' trainable tensors after update 3, by our names."""
    state = torch.load(KIT / "trajectory" / "trainable-after-3-updates.bin", map_location="cpu", weights_only=True)
    return {released_name(key, "gsva-bin"): tensor.float() for key, tensor in state.items()}


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory, reference) -> Trajectory:
    """The kit's six micro-batches through ``build_engine`` and ``backward_and_step``, the functions
    of ``gsva.engine.trainer.train``, from the imported release weights."""
    imported = import_kit_weights(tmp_path_factory.mktemp("trajectory"))
    lrs = reference["lr_per_update"]
    pipeline = from_pretrained(imported, [
        "model.lora_dropout=0", "model.gradient_checkpointing=true", "model.precision=fp32",
        f"optim.lr={lrs[0]}", "optim.betas=[0.9, 0.95]", "optim.weight_decay=0.0",
        f"optim.grad_clip={reference['grad_clip_max_norm']}", f"optim.grad_accum_steps={reference['accumulation']}",
        "optim.micro_batch_size=2", "optim.global_batch_size=null", "optim.zero_stage=2",
    ])
    cfg, model = pipeline.cfg, pipeline.model.train()
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
    engine = build_engine(model, cfg, init_distributed(), lambda step: lrs[min(step, len(lrs) - 1)] / lrs[0])
    collate = Collator(pipeline.tokenizer.pad_token_id, cfg.data.sam_image_size)
    seg_id, rej_id = model.token_ids.seg_ids[0], model.token_ids.rej_id
    weights = {"total": 1.0, "ce": cfg.model.ce_loss_weight, "bce": cfg.model.bce_loss_weight, "dice": cfg.model.dice_loss_weight}
    result = Trajectory(losses=[], lrs=[], grad_norms=[], before=before, after={})
    for step in reference["micro_steps"]:
        folder = KIT / "trajectory" / f"micro_{step['micro_step']}"
        losses = engine(official_micro_batch(folder, collate, cfg.data.clip_image_size, seg_id, rej_id))
        result.losses.append({theirs: float(getattr(losses, ours).detach()) * weights[ours] for theirs, ours in LOSS_NAMES.items()})
        lr = engine.get_lr()[0]
        if backward_and_step(engine, losses.total):
            result.lrs.append(lr)
            result.grad_norms.append(float(engine.get_global_grad_norm()))
    result.after = {name: parameter.detach().clone() for name, parameter in engine.module.named_parameters() if parameter.requires_grad}
    return result


def _relative(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / abs(theirs)


def test_the_trainable_tensors_are_the_authors_name_for_name(trajectory, reference):
    assert trainable_mismatch(set(trajectory.after), reference["trainable_keys"]) == []
    assert sum(tensor.numel() for tensor in trajectory.after.values()) == reference["trainable_numel"]


def test_a_frozen_or_added_tensor_is_reported(trajectory, reference):
    """The name check fails for a trainable set one tensor short or one tensor over."""
    ours = set(trajectory.after)
    frozen = sorted(ours)[0]
    assert trainable_mismatch(ours - {frozen}, reference["trainable_keys"]) == [f"trained by the authors, frozen here: {frozen}"]
    added = "mllm.mm_projector.weight"
    assert trainable_mismatch(ours | {added}, reference["trainable_keys"]) == [f"trained here, frozen by the authors: {added}"]


def test_every_micro_step_loss_matches(trajectory, reference):
    for ours, step in zip(trajectory.losses, reference["micro_steps"], strict=True):
        relative = {name: _relative(ours[name], step[name]) for name in LOSS_NAMES}
        print(f"micro-step {step['micro_step']}: largest relative loss difference {max(relative.values()):.2e}")
        assert max(relative.values()) < RELATIVE_TOLERANCE, f"micro-step {step['micro_step']}: {relative}"


def test_every_update_has_the_authors_lr_and_gradient_norm(trajectory, reference):
    updates = reference["updates"]
    assert trajectory.lrs == pytest.approx([update["lr"] for update in updates], rel=1e-12)
    for ours, update in zip(trajectory.grad_norms, updates, strict=True):
        print(f"update {update['update']}: gradient norm {ours:.6f} vs {update['grad_norm_before_clip']:.6f}")
        assert _relative(ours, update["grad_norm_before_clip"]) < RELATIVE_TOLERANCE, (update, ours)


def test_the_weights_after_three_updates_match(trajectory, authors_after):
    checks = compare_updates(trajectory.before, trajectory.after, authors_after)
    real = [check for check in checks if not is_rounding_noise(check.name)]
    print("largest relative update differences:", sorted((round(c.relative, 8), c.name) for c in real)[-3:])
    print("largest value differences:", sorted((round(c.max_difference, 8), c.name) for c in real)[-3:])
    failures = [failure for check in checks for failure in check.failures()]
    assert failures == []


def test_a_tensor_left_frozen_fails_the_weight_check(trajectory, authors_after):
    """Had one trained tensor not moved (frozen, or a missed optimizer group), the weight check fails."""
    name = "query_projector.0.weight"
    frozen = dict(trajectory.after, **{name: trajectory.before[name]})
    (check,) = [check for check in compare_updates(trajectory.before, frozen, authors_after) if check.name == name]
    assert check.relative > 0.99 and check.failures()
