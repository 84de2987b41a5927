"""Model directories: save_pretrained / from_pretrained, the DeepSpeed checkpoint export (plain and
LoRA-merged) round trip, a frozen random projector through export and resume, and scripts/infer.py
on a saved tiny model."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from gsva.engine.export import copy_weights, export_checkpoint
from gsva.engine.trainer import train
from gsva.model import build
from gsva.model.directory import save_pretrained, stored_parameter_names
from gsva.pipeline import build_pipeline, from_pretrained
from tests.conftest import run_script, seeded_pipeline, tiny_config
from tests.test_model import make_batch



def outputs(model, batch):
    """Teacher-forced decisions + masks and the forward losses of ``batch`` (eval mode)."""
    model.eval()
    with torch.no_grad():
        predictions = model.predict_teacher_forced(batch)
        losses = model(batch)
    return predictions, torch.stack([losses.total.detach(), losses.ce, losses.bce, losses.dice])


def test_save_then_from_pretrained_is_identical(synthetic_root, tokenizer_dir, tmp_path):
    cfg = tiny_config(synthetic_root, tokenizer_dir, "model.finetune=lora", "model.lora_r=4")
    pipeline = build_pipeline(cfg)
    tokenizer, model, prompts = pipeline.tokenizer, pipeline.model, pipeline.builder.prompts
    with torch.no_grad():  # move the trainable weights away from what a rebuild gives
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    save_pretrained(model, cfg, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = from_pretrained(tmp_path / "saved")
    assert not loaded.model.training
    batch, _ = make_batch(cfg, tokenizer, prompts)
    (expected, expected_losses), (got, got_losses) = outputs(model, batch), outputs(loaded.model, batch)
    assert torch.equal(expected_losses, got_losses)
    for a, b in zip(expected, got):
        assert a.rejected == b.rejected and torch.equal(a.masks, b.masks)


@pytest.mark.slow
def test_deepspeed_checkpoint_export_round_trip(synthetic_root, tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(
        synthetic_root, tokenizer_dir, f"run.output_dir={run}", "model.finetune=lora", "model.lora_r=4", "schedule.steps=3",
        "schedule.save_every=2", "eval.at_end=false", "optim.micro_batch_size=2", "optim.lr=1e-2",
        "optim.warmup_steps=0",
    )
    untrained = seeded_pipeline(cfg).model
    result = train(cfg)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step3"
    trained = result.model.cpu().eval()
    batch, _ = make_batch(cfg, result.builder.tokenizer, result.builder.prompts)
    expected, expected_losses = outputs(trained, batch)
    _, untrained_losses = outputs(untrained, batch)
    assert not torch.equal(expected_losses, untrained_losses)  # training moved the weights

    exported = export_checkpoint(run / "checkpoints", tmp_path / "export")
    assert exported.step == 3
    summary = json.loads((tmp_path / "export" / "config.json").read_text())
    assert summary["step"] == 3 and summary["finetune"] == "lora" and summary["lora_r"] == 4 and summary["source"].endswith("step3")
    loaded = from_pretrained(tmp_path / "export")
    got, got_losses = outputs(loaded.model, batch)
    assert torch.equal(expected_losses, got_losses), (expected_losses, got_losses)
    for a, b in zip(expected, got):
        assert a.rejected == b.rejected and torch.equal(a.masks, b.masks)
    print("plain export losses", expected_losses.tolist(), got_losses.tolist())

    # An earlier tag directory exports too (step 2 is not the in-memory model).
    assert export_checkpoint(run / "checkpoints" / "step2", tmp_path / "export2").step == 2

    merged = export_checkpoint(run / "checkpoints", tmp_path / "merged", merge_lora=True)
    assert merged.merged_lora_modules == 2 * cfg.model.tiny.llm_layers  # q_proj and v_proj per layer
    merged_model = from_pretrained(tmp_path / "merged")
    assert merged_model.cfg.model.finetune == "frozen"
    assert not any("lora_" in name for name, _ in merged_model.model.named_parameters())
    got, got_losses = outputs(merged_model.model, batch)
    difference = (got_losses - expected_losses).abs().max().item()
    print("merged export losses", got_losses.tolist(), "max |difference|", difference)
    assert difference < 1e-5
    for a, b in zip(expected, got):
        assert a.rejected == b.rejected
        assert (a.masks != b.masks).float().mean() < 1e-3  # logits within 1e-5: a pixel may flip at 0
    llm = LlamaForCausalLM.from_pretrained(str(tmp_path / "merged" / "llava"))
    reference = merged_model.model.mllm.language_model.state_dict()
    for name, tensor in llm.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


# ----------------------------------------------------------------- a frozen random projector
PROJECTOR = ("mllm.mm_projector.weight", "mllm.mm_projector.bias")
RANDOM_PROJECTOR_RUN = (
    "model.finetune=lora", "model.lora_r=4", "schedule.steps=3", "schedule.save_every=1", "schedule.keep_last=3", "eval.at_end=false",
    "optim.micro_batch_size=2", "optim.lr=1e-2", "optim.warmup_steps=0",
)


def projector(model) -> dict[str, torch.Tensor]:
    """A copy of the image projector's weight and bias of ``model``, by state-dict name."""
    state = model.state_dict()
    return {name: state[name].detach().clone() for name in PROJECTOR}


def assert_same_projector(model, expected: dict[str, torch.Tensor]) -> None:
    """The image projector of ``model`` is exactly ``expected``."""
    got = projector(model)
    assert all(torch.equal(got[name], expected[name]) for name in PROJECTOR)


@pytest.fixture(scope="module")
def random_projector_run(synthetic_root, tokenizer_dir, tmp_path_factory):
    """(config, trained model, output dir) of 3 LoRA steps with ``model.mm_projector_init: random``,
    a checkpoint after each step."""
    run = tmp_path_factory.mktemp("random_projector") / "run"
    cfg = tiny_config(synthetic_root, tokenizer_dir, f"run.output_dir={run}", "model.mm_projector_init=random",
                      *RANDOM_PROJECTOR_RUN)
    return cfg, train(cfg).model.cpu().eval(), run


def test_export_of_a_random_projector_run_holds_its_projector(random_projector_run, synthetic_root, tokenizer_dir,
                                                             tmp_path):
    _, trained, run = random_projector_run
    drawn = projector(trained)
    fresh = build_pipeline(tiny_config(synthetic_root, tokenizer_dir, "model.finetune=lora", "model.lora_r=4")).model
    assert not torch.equal(projector(fresh)["mllm.mm_projector.weight"], drawn["mllm.mm_projector.weight"])

    export_checkpoint(run / "checkpoints", tmp_path / "plain")
    assert set(load_file(str(tmp_path / "plain" / "model.safetensors"))) == stored_parameter_names(trained)
    loaded = from_pretrained(tmp_path / "plain").model.state_dict()
    assert all(torch.equal(tensor, loaded[name]) for name, tensor in trained.state_dict().items())

    export_checkpoint(run / "checkpoints", tmp_path / "merged", merge_lora=True)
    assert set(PROJECTOR) <= set(load_file(str(tmp_path / "merged" / "model.safetensors")))
    assert_same_projector(from_pretrained(tmp_path / "merged").model, drawn)


def test_export_of_a_finetune_keeps_the_projector_of_its_init_weights(random_projector_run, synthetic_root,
                                                                      tokenizer_dir, tmp_path):
    """A run with the default projector setting that starts from a random-projector run's weights
    trains with that run's projector; both exports hold it, not the LLaVA's."""
    _, pretrained, pretraining_run = random_projector_run
    drawn = projector(pretrained)
    cfg = tiny_config(synthetic_root, tokenizer_dir, f"run.output_dir={tmp_path / 'run'}",
                      f"model.init_weights={pretraining_run / 'final'}", *RANDOM_PROJECTOR_RUN)
    assert cfg.model.mm_projector_init == "pretrained"
    finetuned = train(cfg).model.cpu().eval()
    assert_same_projector(finetuned, drawn)

    export_checkpoint(tmp_path / "run" / "checkpoints", tmp_path / "plain")
    loaded = from_pretrained(tmp_path / "plain").model.state_dict()
    assert all(torch.equal(tensor, loaded[name]) for name, tensor in finetuned.state_dict().items())
    export_checkpoint(tmp_path / "run" / "checkpoints", tmp_path / "merged", merge_lora=True)
    assert_same_projector(from_pretrained(tmp_path / "merged").model, drawn)


def test_resume_continues_with_the_checkpoints_random_projector(random_projector_run, tmp_path, monkeypatch):
    """Resumed from step 1 by a build that draws another projector, the run ends where the
    uninterrupted one did: DeepSpeed's module state restores the projector it trained with."""
    cfg, trained, run = random_projector_run
    drawn = projector(trained)
    randomise_projector = build.randomise_projector

    def another_draw(model) -> None:
        randomise_projector(model)
        with torch.no_grad():
            model.mllm.mm_projector.weight.add_(1.0)

    monkeypatch.setattr(build, "randomise_projector", another_draw)
    redrawn = projector(build_pipeline(cfg).model)
    assert not torch.equal(redrawn["mllm.mm_projector.weight"], drawn["mllm.mm_projector.weight"])

    resumed_dir = tmp_path / "run"
    shutil.copytree(run, resumed_dir)
    resumed_cfg = replace(cfg, run=replace(cfg.run, output_dir=str(resumed_dir)))
    resumed = train(resumed_cfg, resume=str(resumed_dir / "checkpoints" / "step1"))
    assert resumed.steps == 3
    assert_same_projector(resumed.model.cpu(), drawn)
    ours, theirs = (load_file(str(path / "final" / "model.safetensors")) for path in (resumed_dir, run))
    assert ours.keys() == theirs.keys() and set(PROJECTOR) <= set(ours)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_infer_script_writes_masks_and_prints_decisions(tiny_pipeline, tmp_path, capsys):
    save_pretrained(tiny_pipeline.model, tiny_pipeline.cfg, tmp_path / "weights")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(images / name), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    arguments = [
        "--weights", str(tmp_path / "weights"), "--images-dir", str(images), "--expressions", "red square, blue circle",
        "--max-new-tokens", "12", "--batch-size", "2", "--output-dir", str(tmp_path / "out"),
    ]
    assert run_script("infer", arguments) == 0
    printed = capsys.readouterr().out
    for stem in ("a", "b"):
        assert f"== {images / (stem + ('.png' if stem == 'a' else '.jpg'))}" in printed
        for index, expression in enumerate(["red_square", "blue_circle"]):
            mask = cv2.imread(str(tmp_path / "out" / stem / f"mask_{index:02d}_{expression}.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (40, 56) and set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "out" / stem / "overlay.png").is_file()
    lines = printed.splitlines()
    assert sum(line.strip().startswith("answer:") for line in lines) == 2
    assert sum(("red square" in line) and ("[SEG]" in line or "[REJ]" in line) for line in lines) == 2

    reasoning = [
        "--weights", str(tmp_path / "weights"), "--image", str(images / "a.png"), "--prompt", "the thing that is most red",
        "--max-new-tokens", "8", "--output-dir", str(tmp_path / "reason"),
    ]
    assert run_script("infer", reasoning) == 0
    assert (tmp_path / "reason" / "a" / "mask_00_the_thing_that_is_most_red.png").is_file()


def test_a_weight_missing_from_a_checkpoint_is_named():
    """Export refuses a checkpoint that lacks a weight it must copy, naming the file and the weight."""
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"step3/states\.pt") as error:
        copy_weights(layer, {"weight", "bias"}, {"weight": torch.zeros(2, 2)}, Path("step3/states.pt"), "frozen weights (test)", "hint")
    assert "'bias'" in str(error.value) and "hint" in str(error.value)
