"""ReferIndex on every referring dataset's on-disk format, and the safe pickle loader."""

from __future__ import annotations

import json
import pickle
import pickletools
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from gsva.data.bad_samples import BadSampleError
from gsva.data.refer_seg.reader import ReferIndex, images_dir, instances_path, refs_path
from gsva.data.registry import ReferFormat, datasets_stored_as
from gsva.data.safe_pickle import load_pickle
from tests.formats.refer_formats import (
    ACCENTED_PLACE,
    WrittenRefer,
    python2_pickle,
    write_all_refer,
    write_grefcoco,
    write_refclef,
    write_refcoco,
    write_refcoco_plus,
    write_refcocog,
    write_refzom,
)

WRITERS: dict[str, Callable[[Path], WrittenRefer]] = {
    "refcoco": write_refcoco,
    "refcoco+": write_refcoco_plus,
    "refcocog": write_refcocog,
    "refclef": write_refclef,
    "grefcoco": write_grefcoco,
    "refzom": write_refzom,
}


def literal(path: Path) -> str:
    """``path`` as a regular expression that matches it literally."""
    return re.escape(str(path))


def test_registry_names_every_dataset() -> None:
    assert sorted(datasets_stored_as(ReferFormat)) == sorted(WRITERS)


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_reader_returns_written_sentences_and_masks(tmp_path: Path, dataset: str) -> None:
    written = WRITERS[dataset](tmp_path)
    index = ReferIndex(tmp_path, dataset)
    assert index.refs_file == written.refs_file
    assert index.splits == written.splits()

    for split in written.splits():
        expected_by_image: dict[int, list] = {}
        for expected in written.expressions:
            if expected.split == split:
                expected_by_image.setdefault(expected.image_id, []).append(expected)
        assert index.image_ids(split) == sorted(expected_by_image)
        for image_id, expected_list in expected_by_image.items():
            expressions = index.expressions(image_id, split)
            assert [(e.ref_id, e.sent_id, e.text, e.ann_ids) for e in expressions] == [
                (x.ref_id, x.sent_id, x.text, x.ann_ids) for x in expected_list
            ]
            for expression, expected in zip(expressions, expected_list):
                mask = index.target_mask(image_id, expression.ann_ids)
                assert mask.dtype == bool and mask.shape == expected.mask.shape
                assert np.array_equal(mask, expected.mask)


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_images_and_every_segmentation_form(tmp_path: Path, dataset: str) -> None:
    written = WRITERS[dataset](tmp_path)
    index = ReferIndex(tmp_path, dataset)
    annotations = json.loads(written.instances_file.read_text(encoding="utf-8"))["annotations"]
    sizes = set()
    for image_id, image_file in written.image_files.items():
        record = index.image(image_id)
        assert index.image_path(image_id) == image_file
        pixels = cv2.imread(str(image_file))
        assert pixels is not None and pixels.shape == (record.height, record.width, 3)
        sizes.add((record.height, record.width))
        object_ids = [annotation["id"] for annotation in annotations if annotation["image_id"] == image_id]
        assert index.annotation_ids(image_id) == sorted(set(object_ids) - set(written.crowd_ann_ids))
        for ann_id in object_ids:  # crowd regions hold the uncompressed RLE
            assert np.array_equal(index.target_mask(image_id, [ann_id]), written.object_masks[ann_id])
    assert len(sizes) == len(written.image_files)


def test_refclef_images_live_under_saiapr(tmp_path: Path) -> None:
    written = write_refclef(tmp_path)
    index = ReferIndex(tmp_path, "refclef")
    clef_folder = tmp_path / "refer_seg" / "images" / "saiapr_tc-12"
    assert images_dir(tmp_path, "refclef") == clef_folder
    for image_id in written.image_files:
        path = index.image_path(image_id)
        assert path.is_file() and path.is_relative_to(clef_folder)
    refs = load_pickle(written.refs_file)
    annotations = json.loads(written.instances_file.read_text(encoding="utf-8"))["annotations"]
    assert all(isinstance(ann["segmentation"], list) for ann in annotations)
    assert {len(ann["segmentation"]) for ann in annotations} == {1, 2}
    assert all(isinstance(ref["ann_id"], int) for ref in refs)


def test_refcocog_umd_splits(tmp_path: Path) -> None:
    write_refcocog(tmp_path)
    index = ReferIndex(tmp_path, "refcocog")
    assert index.split_by == "umd"
    assert index.refs_file == tmp_path / "refer_seg" / "refcocog" / "refs(umd).p"
    assert index.splits == ("test", "train", "val")
    google = tmp_path / "refer_seg" / "refcocog" / "refs(google).p"
    with pytest.raises(FileNotFoundError, match=literal(google)):
        ReferIndex(tmp_path, "refcocog", "google")


@pytest.mark.parametrize(("dataset", "raw_no_target"), [("grefcoco", [-1]), ("refzom", [])])
def test_no_target_conventions(tmp_path: Path, dataset: str, raw_no_target: list[int]) -> None:
    written = WRITERS[dataset](tmp_path)
    if dataset == "grefcoco":
        refs = json.loads(written.refs_file.read_text(encoding="utf-8"))
    else:
        refs = load_pickle(written.refs_file)
    no_target_ref_ids = {ref["ref_id"] for ref in refs if ref["ann_id"] == raw_no_target}
    assert no_target_ref_ids

    index = ReferIndex(tmp_path, dataset)
    seen = set()
    for split in index.splits:
        for image_id in index.image_ids(split):
            for expression in index.expressions(image_id, split):
                assert expression.no_target == (expression.ref_id in no_target_ref_ids)
                if expression.no_target:
                    seen.add(expression.ref_id)
                    assert expression.kind == "no-target"
                    assert not index.target_mask(image_id, expression.ann_ids).any()
    assert seen == no_target_ref_ids


@pytest.mark.parametrize("dataset", ["grefcoco", "refzom"])
def test_multi_target_mask_is_the_union(tmp_path: Path, dataset: str) -> None:
    written = WRITERS[dataset](tmp_path)
    index = ReferIndex(tmp_path, dataset)
    multi = [expected for expected in written.expressions if len(expected.ann_ids) > 1]
    assert multi
    for expected in multi:
        mask = index.target_mask(expected.image_id, expected.ann_ids)
        parts = [written.object_masks[ann_id] for ann_id in expected.ann_ids]
        assert np.array_equal(mask, np.logical_or.reduce(parts))
        assert all(mask.sum() > part.sum() for part in parts)
    summary = index.count_summary(multi[0].split)
    assert summary["multi"] >= 1 and summary["no-target"] >= 1
    assert summary["expressions"] == summary["single"] + summary["multi"] + summary["no-target"]


def test_classic_refs_are_python2_pickles(tmp_path: Path) -> None:
    written = write_refcoco(tmp_path)
    opcodes = {opcode.name for opcode, _, _ in pickletools.genops(written.refs_file.read_bytes())}
    assert "SHORT_BINSTRING" in opcodes and "BINUNICODE" not in opcodes
    index = ReferIndex(tmp_path, "refcoco")
    first = min(written.image_files)
    texts = [expression.text for expression in index.expressions(first, "train")]
    assert texts[0] == f"person {ACCENTED_PLACE}"


def test_safe_pickle_decodes_python2_strings_and_sets(tmp_path: Path) -> None:
    path = tmp_path / "refs.p"
    path.write_bytes(python2_pickle({"sent": "café", "raw": b"caf\xe9", "ids": [1, 70000, -5, 2**40]}))
    assert load_pickle(path) == {"sent": "café", "raw": "café", "ids": [1, 70000, -5, 2**40]}
    path.write_bytes(pickle.dumps({"ids": {1, 2}, "frozen": frozenset({3})}, protocol=2))
    assert b"c__builtin__\nset\n" in path.read_bytes()
    assert load_pickle(path) == {"ids": {1, 2}, "frozen": frozenset({3})}


@pytest.mark.parametrize(
    ("module", "function", "command"),
    [
        ("os", "system", "touch {marker}"),
        ("__builtin__", "eval", "open({marker!r}, 'w').close()"),
        ("builtins", "exec", "open({marker!r}, 'w').close()"),
    ],
)
def test_safe_pickle_refuses_code(tmp_path: Path, module: str, function: str, command: str) -> None:
    def payload(marker: Path) -> bytes:
        argument = command.format(marker=str(marker))
        return f"c{module}\n{function}\n(V{argument}\ntR.".encode()

    control = tmp_path / "control"
    pickle.loads(payload(control))  # the same payload through plain pickle runs its code
    assert control.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "refer_seg" / "refcoco" / "refs(unc).p"
    write_refcoco(tmp_path)
    path.write_bytes(payload(marker))
    expected = f"{path}: refused to load {module}.{function}: only plain containers and scalars"
    with pytest.raises(pickle.UnpicklingError, match=re.escape(expected)):
        load_pickle(path)
    with pytest.raises(pickle.UnpicklingError, match=re.escape(expected)):
        ReferIndex(tmp_path, "refcoco")
    assert not marker.exists()


@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_missing_files_name_the_expected_path(tmp_path: Path, dataset: str) -> None:
    with pytest.raises(FileNotFoundError, match=literal(refs_path(tmp_path, dataset))):
        ReferIndex(tmp_path, dataset)
    written = WRITERS[dataset](tmp_path)
    written.instances_file.unlink()
    with pytest.raises(FileNotFoundError, match=literal(instances_path(tmp_path, dataset))) as error:
        ReferIndex(tmp_path, dataset)
    assert str(written.refs_file) not in str(error.value)


def test_paths_of_the_layout(tmp_path: Path) -> None:
    refer_seg = tmp_path / "refer_seg"
    assert refs_path(tmp_path, "grefcoco", "unc") == refer_seg / "grefcoco" / "grefs(unc).json"
    assert refs_path(tmp_path, "refcoco+") == refer_seg / "refcoco+" / "refs(unc).p"
    assert refs_path(tmp_path, "refcoco", "google") == refer_seg / "refcoco" / "refs(google).p"
    assert refs_path(tmp_path, "refzom") == refer_seg / "refzom" / "Ref_ZOM.p"
    assert images_dir(tmp_path) == refer_seg / "images" / "mscoco" / "images" / "train2014"


def test_unknown_dataset_and_split_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known datasets: refcoco, refcoco\\+, refcocog, refclef, grefcoco, refzom"):
        ReferIndex(tmp_path, "refcoco++")
    with pytest.raises(ValueError, match="refzom has a single refs file.*got 'unc'"):
        ReferIndex(tmp_path, "refzom", "unc")


def rewrite_refs(written: WrittenRefer, edit: Callable[[list[dict]], None]) -> None:
    """Apply ``edit`` to the refs of a Python 2 pickle refs file and write them back."""
    refs = load_pickle(written.refs_file)
    edit(refs)
    written.refs_file.write_bytes(python2_pickle(refs))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda refs: refs[2].update(ann_id=[refs[0]["ann_id"], refs[1]["ann_id"]]), "exactly one annotation"),
        (lambda refs: refs[2]["sentences"][1].pop("sent"), "sentence #1: missing field 'sent'"),
        (lambda refs: refs[2].pop("split"), "missing field 'split'"),
    ],
)
def test_ref_errors_name_file_and_ref(tmp_path: Path, edit: Callable[[list[dict]], None], message: str) -> None:
    written = write_refcoco(tmp_path)
    rewrite_refs(written, edit)
    with pytest.raises(ValueError, match=literal(written.refs_file) + r" ref #2" + ".*" + message):
        ReferIndex(tmp_path, "refcoco")


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda refs: refs[2].update(ann_id=999999), "but ann id 999999 is not there"),
        (lambda refs: refs[2].update(ann_id=refs[-1]["ann_id"]), r"but ann id \d+ belongs to image id 1003"),
    ],
)
def test_ann_id_outside_the_image_is_a_bad_sample(tmp_path: Path, edit: Callable[[list[dict]], None], found: str) -> None:
    written = write_refcoco(tmp_path)
    rewrite_refs(written, edit)
    index = ReferIndex(tmp_path, "refcoco")  # loads: only the samples of that image are spoilt
    broken = next(e for e in index.expressions(1000, "train") if e.ref_id == 3)
    with pytest.raises(BadSampleError, match=literal(written.instances_file) + ".*" + found) as error:
        index.target_mask(1000, broken.ann_ids)
    assert error.value.source == f"{written.refs_file} image id 1000"
    assert f"'ann_id' names ann id {broken.ann_ids[0]}" in error.value.reason


def test_annotation_errors_name_file_and_id(tmp_path: Path) -> None:
    written = write_grefcoco(tmp_path)
    instances = json.loads(written.instances_file.read_text(encoding="utf-8"))
    broken = instances["annotations"][0]
    broken["segmentation"] = [[1.0, 1.0, 5.0, 5.0]]
    written.instances_file.write_text(json.dumps(instances), encoding="utf-8")
    index = ReferIndex(tmp_path, "grefcoco")
    with pytest.raises(ValueError, match=literal(written.instances_file) + f" ann id {broken['id']}: .*3 points"):
        index.target_mask(broken["image_id"], [broken["id"]])

    del instances["annotations"][1]["image_id"]
    written.instances_file.write_text(json.dumps(instances), encoding="utf-8")
    with pytest.raises(ValueError, match=literal(written.instances_file) + " annotation #1: missing field 'image_id'"):
        ReferIndex(tmp_path, "grefcoco")


def test_all_datasets_share_one_root(tmp_path: Path) -> None:
    written = write_all_refer(tmp_path)
    assert sorted(written) == sorted(WRITERS)
    for dataset, item in written.items():
        index = ReferIndex(tmp_path, dataset)
        assert sum(index.count_summary(split)["expressions"] for split in index.splits) == len(item.expressions)
