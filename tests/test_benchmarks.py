"""Every benchmark of the paper end to end on fixture files: records, metrics, prompt styles,
batch-size independence, and scripts/score.py recomputing metrics.json from records.jsonl."""

import json
import subprocess
import sys

import pytest
import torch

from gsva.evaluation.benchmarks import benchmark_evaluator, open_benchmark, parse_benchmark
from gsva.evaluation.families import FAMILIES
from gsva.evaluation.loop import run_evaluation
from gsva.evaluation.report import evaluate_benchmark
from gsva.config import EvalConfig
from gsva.evaluation.settings import EvalSettings
from gsva.pipeline import build_pipeline
from tests.conftest import REPO, tiny_config
from tests.formats import write_every_dataset

BENCHMARKS = ["grefcoco:val", "refcoco:testA", "refcocog:test", "refclef:val", "refzom:test", "reason_seg:val", "ade20k:val"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("benchmarks")
    write_every_dataset(root)
    cfg = tiny_config(root, tokenizer_dir)
    torch.manual_seed(0)
    pipeline = build_pipeline(cfg)
    pipeline.model.eval()
    return root, cfg, pipeline.model, pipeline.builder


def count_slots(dataset) -> int:
    return sum(len(conv.slot_exists) for item in range(len(dataset)) for conv in dataset[item].conversations)


@pytest.mark.parametrize("spec", BENCHMARKS)
def test_benchmark_reports_its_metrics_from_its_records(setup, spec, tmp_path):
    root, cfg, model, builder = setup
    benchmark = parse_benchmark(spec)
    settings = EvalSettings(EvalConfig(batch_size=2, visualize=1), output_root=str(tmp_path))
    summary = evaluate_benchmark(model, builder, benchmark, root, settings, torch.device("cpu"))
    expected_slots = count_slots(open_benchmark(benchmark, root, builder, settings.options))
    assert summary["num_records"] == expected_slots > 0
    family = FAMILIES[benchmark.family]
    row = family.headline(summary)
    assert all(column in row for column in family.columns)
    report = settings.report_dir(benchmark.dataset, benchmark.split)
    assert report == tmp_path / f"{benchmark.dataset}_{benchmark.split}_teacher-forced_gsva"
    assert (report / "overlays").is_dir() and len(list((report / "overlays").glob("*.png"))) == 1
    stored = json.loads((report / "metrics.json").read_text())
    records = [json.loads(line) for line in (report / "records.jsonl").read_text().splitlines()]
    assert json.loads(json.dumps(family.summary(records)["metrics"])) == stored["metrics"]


@pytest.mark.parametrize("spec", ["grefcoco:val", "ade20k:val"])
def test_score_py_recomputes_metrics_json(setup, spec, tmp_path):
    root, _, model, builder = setup
    settings = EvalSettings(EvalConfig(batch_size=2), output_root=str(tmp_path))
    benchmark = parse_benchmark(spec)
    evaluate_benchmark(model, builder, benchmark, root, settings, torch.device("cpu"))
    report = settings.report_dir(benchmark.dataset, benchmark.split)
    done = subprocess.run(
        [sys.executable, "scripts/score.py", str(report / "records.jsonl"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == json.loads((report / "metrics.json").read_text())["metrics"]


def test_prompt_styles_ask_per_image_or_per_expression(setup):
    root, _, _, builder = setup
    benchmark = parse_benchmark("grefcoco:val")
    per_image = open_benchmark(benchmark, root, builder, EvalConfig())[0]
    per_expression = open_benchmark(benchmark, root, builder, EvalConfig(one_expression_per_prompt=True))[0]
    lisa = open_benchmark(benchmark, root, builder, EvalConfig(prompt_style="lisa"))[0]
    assert len(per_image.conversations) == 1 and len(per_image.conversations[0].slot_exists) == 4
    assert len(per_expression.conversations) == len(lisa.conversations) == 4
    assert all(len(conv.slot_exists) == 1 for conv in lisa.conversations)
    first = builder.tokenizer.decode([t for t in lisa.conversations[0].input_ids if t >= 0])
    assert "Please output the segmentation mask." in first


@pytest.mark.parametrize("protocol", ["teacher-forced", "generate"])
def test_batched_evaluation_equals_one_image_at_a_time(setup, protocol):
    root, _, model, builder = setup
    benchmark = parse_benchmark("refzom:test")
    runs = []
    for size in (1, 4):
        options = EvalConfig(protocol=protocol, batch_size=size, max_new_tokens=8, one_expression_per_prompt=True)
        dataset = open_benchmark(benchmark, root, builder, options)
        evaluator = benchmark_evaluator(benchmark, dataset)
        run_evaluation(model, dataset, evaluator, options, torch.device("cpu"), builder.tokenizer)
        evaluator.evaluate()
        runs.append(evaluator.records)
    fields = ("key", "rejected", "intersection", "union", "pred_area", "generated_text")
    assert [[r[f] for f in fields] for r in runs[0]] == [[r[f] for f in fields] for r in runs[1]]


def test_unknown_benchmarks_are_named(setup):
    with pytest.raises(ValueError, match="expected <dataset>:<split>"):
        parse_benchmark("coco:val")
    with pytest.raises(ValueError, match="expected <dataset>:<split>"):
        parse_benchmark("grefcoco")
