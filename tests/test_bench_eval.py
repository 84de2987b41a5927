"""The evaluation benchmark: its arithmetic on hand-made numbers, the count of generated answer
tokens read from the decoded text, the prediction dumps and their batch-vs-single comparison, and
one configuration timed in-process on the tiny shape (with the tests' small tokenizer)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gsva.bench.evaluation import (
    TimedBatches,
    compare_to_single,
    failure_reason,
    generated_text_tokens,
    generation_fields,
    load_dump,
    parse_args,
    run_one,
    throughput_fields,
    write_dump,
)
from gsva.model.gsva import SlotPredictions
from gsva.text.special_tokens import REJ_TOKEN, SEG_TOKEN
from gsva.text.tokenizer import add_task_tokens, load_tokenizer


def test_throughput_splits_the_model_call_into_stages():
    timed = TimedBatches(model_s=[1.0, 3.0], data_s=[0.5, 0.5])
    fields = throughput_fields(timed, {"sam_image_encoder": 1.0, "mask_decoder": 0.6}, images=4)
    assert fields["images_timed"] == 4 and fields["batches_timed"] == 2 and fields["batch_s"] == [1.0, 3.0]
    assert fields["images_per_s"] == 1.0 and fields["s_per_image"] == 1.0
    assert fields["stage_s_per_image"] == {"sam_image_encoder": 0.25, "mask_decoder": 0.15, "other": 0.6}
    assert fields["data_s_per_image"] == 0.25 and fields["images_per_s_with_data"] == 0.8


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir, 1024)
    add_task_tokens(tokenizer, [SEG_TOKEN, REJ_TOKEN])
    return tokenizer


def test_generated_answer_tokens_are_read_from_the_decoded_text(tokenizer):
    answer = tokenizer("Sure, red: [SEG], blue: [REJ], green: [SEG].", add_special_tokens=False).input_ids
    text = tokenizer.decode(answer)  # what GsvaModel.generate puts in SlotPredictions.text (no </s>)
    empty = torch.zeros((3, 4, 4), dtype=torch.bool)
    predictions = [
        SlotPredictions(rejected=[False, True, False], masks=empty, text=text, parse_failures=0),
        SlotPredictions(rejected=[True, True, True], masks=empty, text="", parse_failures=3),
    ]
    assert generated_text_tokens(predictions, tokenizer) == [len(answer), 0]
    fields = generation_fields(TimedBatches(decoder_steps=[5, 8], predictions=predictions), 9, tokenizer)
    assert fields == {
        "max_new_tokens": 9,
        "decoder_steps_per_batch": 6.5,
        "mean_generated_text_tokens_per_conversation": round(len(answer) / 2, 1),
        "generated_seg_per_conversation": 1.0,
        "generated_rej_per_conversation": 0.5,
        "mean_parse_failures": 1.5,
    }


def test_batched_predictions_are_compared_slot_by_slot():
    first = np.zeros((2, 4, 4), dtype=bool)
    first[0, :2] = True  # 8 pixels
    second = first.copy()
    second[0, 2] = True  # 4 more: IoU 8 / 12
    single = {"rejected": [[False, True], [True]], "masks": [first, np.zeros((1, 4, 4), bool)], "texts": ["", ""]}
    batched = {"rejected": [[False, False], [True]], "masks": [second, np.zeros((1, 4, 4), bool)], "texts": ["", ""]}
    agreement = compare_to_single(single, batched)
    assert agreement["images_compared"] == 2 and agreement["slots"] == 3
    assert not agreement["decisions_identical"] and agreement["decision_agreement"] == round(2 / 3, 4)
    assert not agreement["masks_identical"] and agreement["mask_identical_fraction"] == round(2 / 3, 4)
    assert agreement["mask_iou_min"] == round(8 / 12, 5) and agreement["mask_iou_mean"] == round((8 / 12 + 2) / 3, 5)
    assert agreement["generated_text_identical_fraction"] is None  # teacher forcing generates no text


def test_a_dump_reads_back_what_was_predicted(tmp_path):
    masks = torch.from_numpy(np.random.default_rng(0).random((3, 5, 7)) > 0.5)  # 105 bits: not whole bytes
    predictions = [
        SlotPredictions(rejected=[False, True, False], masks=masks, text="a [SEG]"),
        SlotPredictions(rejected=[], masks=torch.zeros((0, 5, 7), dtype=torch.bool), text=""),
    ]
    write_dump(predictions, tmp_path / "dump.pt")
    dump = load_dump(tmp_path / "dump.pt")
    assert dump["rejected"] == [[False, True, False], []] and dump["texts"] == ["a [SEG]", ""]
    assert np.array_equal(dump["masks"][0], masks.numpy()) and dump["masks"][1].shape == (0, 5, 7)
    agreement = compare_to_single(dump, dump)
    assert agreement["decisions_identical"] and agreement["masks_identical"]
    assert agreement["generated_text_identical_fraction"] == 1.0


def test_failures_are_named():
    assert failure_reason(-9, "", 12.0) == "killed (out of memory?)"
    assert failure_reason(1, "Traceback ...\nMemoryError", 12.0) == "out of memory under --memory-limit-gb 12.0"
    assert failure_reason(2, "Traceback ...\nValueError", None) == "exit status 2"


@pytest.mark.parametrize("argv, message", [
    (["--one", "generate", "x"], "--one expects PROTOCOL BATCH"),
    (["--shape", "7b"], "--shape 7b needs --device cuda"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.fixture
def work_dir(tmp_path, tokenizer_dir) -> Path:
    """A work dir whose tokenizer is the tests' small BPE (the model takes its vocabulary size)."""
    (tmp_path / "tokenizer").symlink_to(tokenizer_dir, target_is_directory=True)
    return tmp_path


def test_one_teacher_forced_configuration_runs_in_process(work_dir):
    args = parse_args(["--one", "teacher-forced", "1", "--images", "2", "--threads", "2",
                       "--work-dir", str(work_dir), "--dump", str(work_dir / "dump.pt")])
    row = run_one(args)
    assert row["protocol"] == "teacher-forced" and row["batch_size"] == 1
    assert row["images_timed"] == 2 and row["batches_timed"] == 2 and len(row["batch_s"]) == 2
    assert row["warmup_images"] == 1 and row["mean_expressions_per_image"] == 11.5  # images of 11 and 12
    assert row["model"]["tokenizer_entries"] == row["model"]["embedding_rows"]
    assert set(row["stage_s_per_image"]) == {"sam_image_encoder", "clip_vision_tower", "llm_decoder_layers",
                                             "mask_decoder", "other"}
    assert row["stage_s_per_image"]["mask_decoder"] > 0 and "decoder_steps_per_batch" not in row
    dump = load_dump(work_dir / "dump.pt")
    assert [len(rejected) for rejected in dump["rejected"]] == [11, 12]
    assert [masks.shape for masks in dump["masks"]] == [(11, 480, 640), (12, 480, 640)]


def test_one_generate_configuration_counts_its_decoder_steps(work_dir):
    args = parse_args(["--one", "generate", "1", "--images", "2", "--threads", "2", "--max-new-tokens", "3",
                       "--work-dir", str(work_dir), "--dump", str(work_dir / "dump.pt")])
    row = run_one(args)
    assert row["max_new_tokens"] == 3 and row["batches_timed"] == 2
    assert 1 <= row["decoder_steps_per_batch"] <= 3  # one forward per generated token, </s> included
    texts = load_dump(work_dir / "dump.pt")["texts"]
    assert row["generated_seg_per_conversation"] == sum(text.count(SEG_TOKEN) for text in texts) / 2
    assert row["mean_parse_failures"] >= 11.5 - 3  # at most 3 tokens: at most 3 of 11.5 slots answered
