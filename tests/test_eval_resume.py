"""Evaluation reports written atomically, and an interrupted evaluation resumed: it re-evaluates
only the images it had not finished and reports exactly what an uninterrupted run reports."""

import json
import logging
from pathlib import Path

import pytest
import torch

import gsva.atomic as atomic
from gsva.atomic import write_json_atomic, write_text_atomic
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.evaluation.resume import partial_path
from gsva.config import EvalConfig
from gsva.evaluation.settings import EvalSettings
from gsva.pipeline import build_pipeline
from tests.conftest import tiny_config

BENCHMARK = parse_benchmark("grefcoco:val")  # 8 images in the test set: 4 batches of 2
BATCH_SIZE = 2
NUM_BATCHES = 4
REPORT = "grefcoco_val_teacher-forced_gsva"
"""The report folder's name under the output root (``EvalSettings.report_dir``)."""


class Interrupted(Exception):
    """Stands for the kill of an evaluation."""


@pytest.fixture(scope="module")
def setup(synthetic_root, tokenizer_dir, tmp_path_factory):
    cfg = tiny_config(synthetic_root, tokenizer_dir)
    torch.manual_seed(0)
    pipeline = build_pipeline(cfg)
    weights = tmp_path_factory.mktemp("weights") / "model.safetensors"
    weights.write_bytes(b"stands for the scored weights")
    return synthetic_root, pipeline.model, pipeline.builder, weights


@pytest.fixture
def out(tmp_path) -> Path:
    """The report folder of an evaluation whose output root is ``tmp_path``."""
    return tmp_path / REPORT


def count_calls(monkeypatch, model, fail_after: int | None = None) -> list[int]:
    """Count the model's teacher-forced batches (the number of images of each); with
    ``fail_after``, raise ``Interrupted`` on the batch after that many."""
    calls: list[int] = []
    original = type(model).predict_teacher_forced

    def predict(batch):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupted
        calls.append(len({meta["item"] for meta in batch.metadata}))
        return original(model, batch)

    monkeypatch.setattr(model, "predict_teacher_forced", predict)
    return calls


def evaluate(setup, output_dir: Path, visualize: int = 0, weights: Path | None = None):
    """Evaluate into the report folder ``output_dir`` (named ``REPORT``, under its output root)."""
    root, model, builder, default_weights = setup
    assert output_dir.name == REPORT
    settings = EvalSettings(
        EvalConfig(batch_size=BATCH_SIZE, visualize=visualize), output_root=str(output_dir.parent), weights=str(weights or default_weights)
    )
    return evaluate_benchmark(model, builder, BENCHMARK, root, settings, torch.device("cpu"))


def report(output_dir: Path) -> tuple[dict, str]:
    """metrics.json without the settings (they name the output directory) and records.jsonl."""
    metrics = json.loads((output_dir / "metrics.json").read_text())
    del metrics["settings"]
    return metrics, (output_dir / "records.jsonl").read_text()


def interrupt(setup, monkeypatch, output_dir: Path, after_batches: int, visualize: int = 0) -> None:
    with monkeypatch.context() as patch:
        count_calls(patch, setup[1], fail_after=after_batches)
        with pytest.raises(Interrupted):
            evaluate(setup, output_dir, visualize)
    assert not (output_dir / "metrics.json").exists() and not (output_dir / "records.jsonl").exists()


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / REPORT
    evaluate(setup, output_dir, visualize=3)
    return report(output_dir)


def test_uninterrupted_evaluation_leaves_no_partial_file(setup, uninterrupted, monkeypatch, out):
    calls = count_calls(monkeypatch, setup[1])
    evaluate(setup, out)
    assert calls == [BATCH_SIZE] * NUM_BATCHES
    assert report(out) == uninterrupted
    assert not list(out.glob("records.partial*"))


def test_interrupted_evaluation_resumes_with_the_missing_images_only(setup, uninterrupted, monkeypatch, out):
    interrupt(setup, monkeypatch, out, after_batches=2, visualize=3)
    partial = partial_path(out, 0).read_text().splitlines()
    assert len(partial) == 1 + 2 and "fingerprint" in json.loads(partial[0])
    assert len(list((out / "overlays").glob("*.png"))) == 3  # batch 1: 2, batch 2: 1

    calls = count_calls(monkeypatch, setup[1])
    summary = evaluate(setup, out, visualize=3)
    assert calls == [BATCH_SIZE] * (NUM_BATCHES - 2)
    assert summary["num_records"] > 0
    assert report(out) == uninterrupted
    assert len(list((out / "overlays").glob("*.png"))) == 3  # none added on resume
    assert not partial_path(out, 0).exists()


def test_batch_cut_short_by_the_interruption_is_evaluated_again(setup, uninterrupted, monkeypatch, out):
    interrupt(setup, monkeypatch, out, after_batches=3)
    path = partial_path(out, 0)
    text = path.read_text()
    path.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2])  # the last batch line half-written

    calls = count_calls(monkeypatch, setup[1])
    evaluate(setup, out)
    assert calls == [BATCH_SIZE] * (NUM_BATCHES - 2)
    assert report(out) == uninterrupted


def test_different_weights_start_the_evaluation_over(setup, uninterrupted, monkeypatch, out, caplog):
    interrupt(setup, monkeypatch, out, after_batches=2)
    other_weights = out.parent / "other.safetensors"
    other_weights.write_bytes(b"other weights")

    calls = count_calls(monkeypatch, setup[1])
    with caplog.at_level(logging.WARNING, logger="gsva.evaluation.resume"):
        evaluate(setup, out, weights=other_weights)
    assert calls == [BATCH_SIZE] * NUM_BATCHES
    assert "different evaluation (differing: weights); starting this evaluation over" in caplog.text
    assert report(out) == uninterrupted


def test_unreadable_partial_file_starts_the_evaluation_over(setup, uninterrupted, monkeypatch, out, caplog):
    out.mkdir()
    partial_path(out, 0).write_text('{"items": [0, 1], "records": [], "overlays": 0}\n')
    calls = count_calls(monkeypatch, setup[1])
    with caplog.at_level(logging.WARNING, logger="gsva.evaluation.resume"):
        evaluate(setup, out)
    assert calls == [BATCH_SIZE] * NUM_BATCHES
    assert "no readable fingerprint" in caplog.text
    assert report(out) == uninterrupted


def test_evaluation_without_weights_file_is_not_resumable(setup, uninterrupted, monkeypatch, out):
    root, model, builder, _ = setup
    settings = EvalSettings(EvalConfig(batch_size=BATCH_SIZE, visualize=0), output_root=str(out.parent))
    with monkeypatch.context() as patch:
        count_calls(patch, model, fail_after=2)
        with pytest.raises(Interrupted):
            evaluate_benchmark(model, builder, BENCHMARK, root, settings, torch.device("cpu"))
    assert list(out.parent.iterdir()) == []
    calls = count_calls(monkeypatch, model)
    evaluate_benchmark(model, builder, BENCHMARK, root, settings, torch.device("cpu"))
    assert calls == [BATCH_SIZE] * NUM_BATCHES
    assert report(out) == uninterrupted


def test_failure_while_writing_the_report_keeps_the_old_report_and_the_partial_file(setup, uninterrupted, monkeypatch, out):
    interrupt(setup, monkeypatch, out, after_batches=2)
    (out / "metrics.json").write_text("the previous report\n")
    real_replace = atomic.os.replace

    def replace(source, destination):
        if Path(destination).name == "metrics.json":
            raise Interrupted
        real_replace(source, destination)

    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "replace", replace)
        with pytest.raises(Interrupted):
            evaluate(setup, out)
    assert (out / "metrics.json").read_text() == "the previous report\n"
    assert partial_path(out, 0).is_file()
    assert sorted(path.name for path in out.iterdir() if path.name.endswith(".tmp")) == []

    calls = count_calls(monkeypatch, setup[1])
    evaluate(setup, out)
    assert calls == []  # every image was recorded before the report failed
    assert report(out) == uninterrupted


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_atomic_write_failing_midway_leaves_the_old_file_intact(monkeypatch, tmp_path, failing):
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"giou": 0.5})

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, failing, fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "x" * 1_000_000)
    assert json.loads(target.read_text()) == {"giou": 0.5}
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "records.jsonl"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert [path.name for path in target.parent.iterdir()] == ["records.jsonl"]


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    write_text_atomic(tmp_path / "atomic.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "atomic.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
