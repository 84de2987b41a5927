"""Every benchmark of the paper end to end on fixture files: records, metrics, prompt styles,
batch-size independence, and scripts/score.py recomputing metrics.json from records.jsonl."""

import json
import subprocess
import sys

import pytest
import torch

from gsva.data.sample_builder import SampleBuilder
from gsva.engine.benchmarks import TABLE_COLUMNS, headline, open_benchmark, parse_benchmark, summarize
from gsva.engine.evaluator import EvalSettings, run_evaluation
from gsva.engine.report import evaluate_benchmark
from gsva.engine.trainer import sample_settings
from gsva.model.build import build_gsva
from tests.conftest import REPO, tiny_config
from tests.formats import write_every_dataset

BENCHMARKS = ["grefcoco:val", "refcoco:testA", "refcocog:test", "refclef:val", "refzom:test", "reason_seg:val", "ade20k:val"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("benchmarks")
    write_every_dataset(root)
    cfg = tiny_config(root, tokenizer_dir)
    torch.manual_seed(0)
    tokenizer, model, prompts = build_gsva(cfg)
    model.eval()
    return root, cfg, model, SampleBuilder(tokenizer, prompts, sample_settings(cfg))


def count_slots(dataset) -> int:
    return sum(len(conv.slot_exists) for item in range(len(dataset)) for conv in dataset[item].conversations)


@pytest.mark.parametrize("spec", BENCHMARKS)
def test_benchmark_reports_its_metrics_from_its_records(setup, spec, tmp_path):
    root, cfg, model, builder = setup
    benchmark = parse_benchmark(spec)
    settings = EvalSettings(batch_size=2, output_dir=str(tmp_path), visualize=1)
    summary = evaluate_benchmark(model, builder, benchmark, root, settings, torch.device("cpu"))
    expected_slots = count_slots(open_benchmark(benchmark, root, builder))
    assert summary["num_records"] == expected_slots > 0
    row = headline(summary)
    assert all(column in row for column in TABLE_COLUMNS[benchmark.family])
    assert (tmp_path / "overlays").is_dir() and len(list((tmp_path / "overlays").glob("*.png"))) == 1
    stored = json.loads((tmp_path / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert json.loads(json.dumps(summarize(benchmark.family, records)["metrics"])) == stored["metrics"]


@pytest.mark.parametrize("spec", ["grefcoco:val", "ade20k:val"])
def test_score_py_recomputes_metrics_json(setup, spec, tmp_path):
    root, _, model, builder = setup
    settings = EvalSettings(batch_size=2, output_dir=str(tmp_path))
    evaluate_benchmark(model, builder, parse_benchmark(spec), root, settings, torch.device("cpu"))
    done = subprocess.run(
        [sys.executable, "scripts/score.py", str(tmp_path / "records.jsonl"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == json.loads((tmp_path / "metrics.json").read_text())["metrics"]


def test_prompt_styles_ask_per_image_or_per_expression(setup):
    root, _, _, builder = setup
    benchmark = parse_benchmark("grefcoco:val")
    per_image = open_benchmark(benchmark, root, builder)[0]
    per_expression = open_benchmark(benchmark, root, builder, one_per_prompt=True)[0]
    lisa = open_benchmark(benchmark, root, builder, prompt_style="lisa")[0]
    assert len(per_image.conversations) == 1 and len(per_image.conversations[0].slot_exists) == 4
    assert len(per_expression.conversations) == len(lisa.conversations) == 4
    assert all(len(conv.slot_exists) == 1 for conv in lisa.conversations)
    first = builder.tokenizer.decode([t for t in lisa.conversations[0].input_ids if t >= 0])
    assert "Please output the segmentation mask." in first


@pytest.mark.parametrize("protocol", ["teacher-forced", "generate"])
def test_batched_evaluation_equals_one_image_at_a_time(setup, protocol):
    root, _, model, builder = setup
    dataset = open_benchmark(parse_benchmark("refzom:test"), root, builder, one_per_prompt=True)
    runs = [
        run_evaluation(model, dataset, EvalSettings(protocol=protocol, batch_size=size, max_new_tokens=8), torch.device("cpu"), builder.tokenizer)
        for size in (1, 4)
    ]
    fields = ("key", "rejected", "intersection", "union", "pred_area", "generated_text")
    assert [[r[f] for f in fields] for r in runs[0]] == [[r[f] for f in fields] for r in runs[1]]


def test_unknown_benchmarks_are_named(setup):
    with pytest.raises(ValueError, match="expected <dataset>:<split>"):
        parse_benchmark("coco:val")
    with pytest.raises(ValueError, match="expected <dataset>:<split>"):
        parse_benchmark("grefcoco")
