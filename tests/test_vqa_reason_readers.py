"""LLaVA-Instruct and ReasonSeg readers against hand-written trees in the LISA/GSVA layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gsva.data.vqa.reader import LlavaInstruct, remove_placeholder
from gsva.data.reason_seg.reader import ReasonSegIndex, explanations_path, split_dir
from gsva.text.special_tokens import IMAGE_PLACEHOLDER
from tests.formats.vqa_reason_formats import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    LLAVA_RECORDS,
    write_json,
    write_llava_instruct,
    write_llava_records,
    write_reason_seg,
)

# ----------------------------------------------------------------------------- LLaVA-Instruct


def test_llava_records_paired_with_image_first(tmp_path: Path) -> None:
    expected = write_llava_instruct(tmp_path)
    records = LlavaInstruct(tmp_path)

    assert records.path == tmp_path / "llava_dataset" / "llava_instruct_150k.json"
    assert len(records) == len(expected)
    for index, want in enumerate(expected):
        record = records[index]
        assert record.record_id == want.record_id
        assert record.image_path == tmp_path / "coco" / "train2017" / want.image_name
        assert record.image_path.is_file()
        assert record.turns == want.turns
        messages = [message for turn in record.turns for message in turn]
        assert sum(message.count(IMAGE_PLACEHOLDER) for message in messages) == 1
        assert record.turns[0][0].startswith(IMAGE_PLACEHOLDER + "\n")


def test_records_do_not_share_their_turns(tmp_path: Path) -> None:
    write_llava_instruct(tmp_path)
    records = LlavaInstruct(tmp_path)
    records[0].turns.clear()
    assert len(records[0].turns) == 2


@pytest.mark.parametrize(
    ("text", "tidied"),
    [
        ("<image>\nWhat is this?", "What is this?"),
        ("What is this?\n<image>", "What is this?"),
        ("  What is this? <image>  ", "What is this?"),
        ("Look at <image>  and answer.", "Look at and answer."),
        ("First part.\n<image>\nSecond part.", "First part.\nSecond part."),
        ("<image>", ""),
        ("  no placeholder here \n", "  no placeholder here \n"),
    ],
)
def test_remove_placeholder(text: str, tidied: str) -> None:
    assert remove_placeholder(text) == tidied


def test_placeholder_in_a_later_question_moves_to_the_first(tmp_path: Path) -> None:
    record = {
        "id": 7,
        "image": "000000000007.jpg",
        "conversations": [
            {"from": "human", "value": "What is shown?"},
            {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "What colour is it? <image>"},
            {"from": "gpt", "value": "Brown."},
        ],
    }
    write_llava_records(tmp_path, [record])
    parsed = LlavaInstruct(tmp_path)[0]
    assert parsed.record_id == "7"
    assert parsed.turns == [("<image>\nWhat is shown?", "A dog."), ("What colour is it?", "Brown.")]


def _broken(change: Any) -> list[dict[str, Any]]:
    """The fixture records with ``change`` applied to the second one (id 000000033471)."""
    records = copy.deepcopy(LLAVA_RECORDS)
    change(records[1])
    return records


def _set_value(message: int, value: str) -> Any:
    return lambda record: record["conversations"][message].update(value=value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_value(0, "Which colours does the bus have?"), "expected exactly one '<image>' placeholder, found 0"),
        (_set_value(2, "<image>\nWhere is it parked?"), "expected exactly one '<image>' placeholder, found 2"),
        (lambda record: record["conversations"].pop(), "is a human question without a gpt answer"),
        (lambda record: record["conversations"].pop(0), "message 0 is from 'gpt', expected 'human'"),
        (lambda record: record["conversations"][3].update({"from": "human"}), "message 3 is from 'human'"),
        (lambda record: record["conversations"][1].update({"from": "assistant"}), "expected 'gpt'"),
        (lambda record: record.update(conversations=[]), "'conversations' must be a non-empty list"),
        (lambda record: record.pop("image"), "missing field 'image'"),
        (lambda record: record["conversations"][1].update(value=None), "message 1 must be an object"),
    ],
)
def test_llava_errors_name_file_record_and_expectation(tmp_path: Path, change: Any, message: str) -> None:
    path = write_llava_records(tmp_path, _broken(change))
    with pytest.raises(ValueError) as error:
        LlavaInstruct(tmp_path)
    text = str(error.value)
    assert str(path) in text
    assert "record #1" in text
    assert "(id '000000033471')" in text
    assert message in text


def test_llava_missing_file_and_wrong_top_level(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="llava_dataset/other.json"):
        LlavaInstruct(tmp_path, file_name="other.json")
    write_llava_records(tmp_path, {"records": []})
    with pytest.raises(ValueError, match="expected a JSON list of records"):
        LlavaInstruct(tmp_path)


# ----------------------------------------------------------------------------------- ReasonSeg


@pytest.fixture(scope="module")
def reason_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reason_seg")
    return root, write_reason_seg(root)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_reason_seg_items_and_masks(reason_root: tuple[Path, dict], split: str) -> None:
    root, expected = reason_root
    index = ReasonSegIndex(root, split)
    assert len(index) == len(expected[split]) == 2
    for position, want in enumerate(expected[split]):
        item = index[position]
        assert item.image_path == split_dir(root, split) / want.name
        assert item.json_path == item.image_path.with_suffix(".json")
        assert item.texts == want.texts
        assert item.is_sentence is want.is_sentence
        assert item.explanation == want.explanation
        mask = index.read_mask(item, IMAGE_HEIGHT, IMAGE_WIDTH)
        assert mask.dtype == bool and mask.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)
        np.testing.assert_array_equal(mask, want.target)


def test_reason_seg_conventions_visible_in_the_fixture(reason_root: tuple[Path, dict]) -> None:
    """The fixture really exercises a hole, a target inside ignore, a str text, a match and a miss."""
    root, expected = reason_root
    train = ReasonSegIndex(root, "train")
    assert [item.image_path.name for item in train] == ["a_street.jpg", "b_kitchen.jpg"]
    kitchen = expected["train"][1]
    assert kitchen.ignore.any() and not (kitchen.target & kitchen.ignore).any()
    assert train[1].explanation is not None and train[0].explanation is None
    assert ReasonSegIndex(root, "val")[1].texts == ["the animal that guards the house"]


def test_reason_seg_without_explanations(tmp_path: Path) -> None:
    expected = write_reason_seg(tmp_path, with_explanations=False)
    with pytest.raises(FileNotFoundError) as error:
        ReasonSegIndex(tmp_path, "train")
    assert str(explanations_path(tmp_path)) in str(error.value)
    index = ReasonSegIndex(tmp_path, "train", load_explanations=False)
    assert [item.explanation for item in index] == [None, None]
    assert [item.texts for item in index] == [item.texts for item in expected["train"]]
    assert len(ReasonSegIndex(tmp_path, "val")) == 2  # no split but train needs the file


def test_reason_seg_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        ReasonSegIndex(tmp_path, "val")
    assert str(tmp_path / "reason_seg" / "ReasonSeg" / "val") in str(error.value)

    write_reason_seg(tmp_path)
    json_path = split_dir(tmp_path, "val") / "val_02.json"
    json_path.unlink()
    with pytest.raises(FileNotFoundError) as error:
        ReasonSegIndex(tmp_path, "val")
    assert str(json_path) in str(error.value)

    with pytest.raises(ValueError, match="unknown ReasonSeg split 'testA'"):
        ReasonSegIndex(tmp_path, "testA")


def _edit_annotation(path: Path, change: Any) -> None:
    annotation = json.loads(path.read_text(encoding="utf-8"))
    change(annotation)
    write_json(path, annotation)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda annotation: annotation.pop("shapes"), "missing field 'shapes'"),
        (lambda annotation: annotation.pop("text"), "missing field 'text'"),
        (lambda annotation: annotation.update(text=[]), "'text' must be a string or a non-empty list"),
        (lambda annotation: annotation.update(is_sentence="yes"), "'is_sentence' must be true or false"),
        (lambda annotation: annotation["shapes"][0].update(points=[]), "shape #0: 'points' must be"),
        (lambda annotation: annotation["shapes"][1].update(points=[[1, 2, 3]]), "shape #1: 'points' must be"),
        (lambda annotation: annotation["shapes"][1].update(points=[["1", 2]]), "got the point ['1', 2]"),
        (lambda annotation: annotation["shapes"][0].pop("points"), "shape #0: 'points' must be"),
        (lambda annotation: annotation["shapes"][0].pop("label"), "shape #0: expected an object"),
    ],
)
def test_reason_seg_bad_annotation_names_the_file(tmp_path: Path, change: Any, message: str) -> None:
    write_reason_seg(tmp_path)
    json_path = split_dir(tmp_path, "train") / "b_kitchen.json"
    _edit_annotation(json_path, change)
    with pytest.raises(ValueError) as error:
        ReasonSegIndex(tmp_path, "train")
    assert str(json_path) in str(error.value)
    assert message in str(error.value)


def test_reason_seg_reads_cp1252_annotations(tmp_path: Path) -> None:
    write_reason_seg(tmp_path)
    json_path = split_dir(tmp_path, "test") / "test_02.json"
    annotation = json.loads(json_path.read_text(encoding="utf-8"))
    annotation["text"] = ["the café sign"]
    json_path.write_bytes(json.dumps(annotation, ensure_ascii=False).encode("cp1252"))
    assert ReasonSegIndex(tmp_path, "test")[1].texts == ["the café sign"]


def test_read_mask_refuses_an_item_of_another_split(reason_root: tuple[Path, dict]) -> None:
    root, _ = reason_root
    val_item = ReasonSegIndex(root, "val")[0]
    with pytest.raises(ValueError, match="not an annotation of the ReasonSeg test split"):
        ReasonSegIndex(root, "test").read_mask(val_item, IMAGE_HEIGHT, IMAGE_WIDTH)
