"""Synthetic dataset writer, gRefCOCO reader and COCO mask decoding."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gsva.data.refer_seg.reader import ReferIndex, expression_kind, images_dir, refs_path
from gsva.data.masks import decode_segmentation, encode_rle, encode_uncompressed_rle
from gsva.demo.synthetic import (
    COLOURS,
    SPLITS,
    SyntheticSpec,
    generate_dataset,
    synthetic_dataset_exists,
    write_synthetic_grefcoco,
)

SMALL_COUNTS = {"train": 20, "val": 20, "testA": 20, "testB": 20}


def small_spec(**overrides: object) -> SyntheticSpec:
    return SyntheticSpec(num_images=dict(SMALL_COUNTS), **overrides)


def refs_text(root: Path) -> str:
    return refs_path(root, "grefcoco", "unc").read_text(encoding="utf-8")


def image_bytes(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(images_dir(root).glob("*.jpg"))}


def test_writer_is_deterministic(tmp_path: Path) -> None:
    write_synthetic_grefcoco(tmp_path / "a", small_spec())
    write_synthetic_grefcoco(tmp_path / "b", small_spec())
    write_synthetic_grefcoco(tmp_path / "c", small_spec(seed=1))

    assert refs_text(tmp_path / "a") == refs_text(tmp_path / "b")
    assert image_bytes(tmp_path / "a") == image_bytes(tmp_path / "b")
    assert len(image_bytes(tmp_path / "a")) == sum(SMALL_COUNTS.values())
    assert refs_text(tmp_path / "a") != refs_text(tmp_path / "c")
    assert image_bytes(tmp_path / "a") != image_bytes(tmp_path / "c")


@pytest.mark.parametrize("segmentation_format", ["polygon", "mixed"])
def test_reader_masks_match_drawn_objects(tmp_path: Path, segmentation_format: str) -> None:
    spec = small_spec(segmentation_format=segmentation_format)
    write_synthetic_grefcoco(tmp_path, spec)
    index = ReferIndex(tmp_path)
    assert index.splits == tuple(sorted(SPLITS))

    checked = 0
    for item in generate_dataset(spec):
        masks_by_ann_id = {obj.ann_id: obj.mask for obj in item.objects}
        expressions = index.expressions(item.image_id, item.split)
        assert [expression.text for expression in expressions] == [ref.sentence for ref in item.refs]
        for expression, ref in zip(expressions, item.refs):
            assert expression.ann_ids == ref.ann_ids
            expected = np.zeros((spec.image_size, spec.image_size), dtype=bool)
            for ann_id in ref.ann_ids:
                expected |= masks_by_ann_id[ann_id]
            mask = index.target_mask(item.image_id, expression.ann_ids)
            assert mask.dtype == bool
            assert np.array_equal(mask, expected)
            checked += 1
    assert checked > 0


def test_painted_pixels_are_the_object_masks() -> None:
    spec = small_spec()
    for item in generate_dataset(spec):
        union = np.zeros((spec.image_size, spec.image_size), dtype=int)
        for obj in item.objects:
            union += obj.mask
            pixels = item.image[obj.mask].astype(int)
            palette = np.array(COLOURS[obj.colour])
            assert np.all(pixels == pixels[0])
            assert np.all(np.abs(pixels[0] - palette) <= 15)
        assert union.max() <= 1, "objects must not overlap"


def test_expression_kinds_and_proportions() -> None:
    spec = SyntheticSpec(num_images={"train": 200})
    kinds: Counter[str] = Counter()
    for item in generate_dataset(spec):
        for ref in item.refs:
            kinds[expression_kind(len(ref.ann_ids))] += 1
    total = sum(kinds.values())
    shares = {kind: kinds[kind] / total for kind in ("single", "multi", "no-target")}
    assert all(kinds[kind] > 0 for kind in shares), shares
    assert 0.05 <= shares["no-target"] <= 0.35, shares
    assert 0.10 <= shares["multi"] <= 0.50, shares


def test_no_target_and_target_expressions_share_templates() -> None:
    spec = SyntheticSpec(num_images={"train": 200})
    templates: dict[bool, set[str]] = {True: set(), False: set()}
    for item in generate_dataset(spec):
        for ref in item.refs:
            template = " ".join("<colour>" if word in COLOURS else word for word in ref.sentence.split())
            templates[len(ref.ann_ids) == 0].add(template)
    assert templates[True] == templates[False]
    assert len(templates[True]) == 6


def test_reader_reports_missing_files(tmp_path: Path) -> None:
    expected = refs_path(tmp_path, "grefcoco", "unc")
    with pytest.raises(FileNotFoundError, match=str(expected).replace("(", r"\(").replace(")", r"\)")):
        ReferIndex(tmp_path)


def test_reader_rejects_unknown_split_and_ann_id(tmp_path: Path) -> None:
    write_synthetic_grefcoco(tmp_path, small_spec())
    index = ReferIndex(tmp_path)
    with pytest.raises(ValueError, match="'test'.*testA, testB, train, val"):
        index.image_ids("test")
    image_id = index.image_ids("val")[0]
    with pytest.raises(ValueError, match="'ann_id'.*999999"):
        index.target_mask(image_id, [999999])
    train_image_id = index.image_ids("train")[0]
    other_ann_id = next(
        expression.ann_ids[0]
        for expression in index.expressions(train_image_id, "train")
        if not expression.no_target
    )
    with pytest.raises(ValueError, match=rf"'ann_id'.*\b{other_ann_id}\b.*\b{train_image_id}\b"):
        index.target_mask(image_id, [other_ann_id])


def test_reader_accepts_bare_int_and_empty_ann_ids(tmp_path: Path) -> None:
    write_synthetic_grefcoco(tmp_path, small_spec())
    path = refs_path(tmp_path, "grefcoco", "unc")
    refs = json.loads(path.read_text(encoding="utf-8"))
    single = next(ref for ref in refs if len(ref["ann_id"]) == 1 and ref["ann_id"] != [-1])
    no_target = next(ref for ref in refs if ref["ann_id"] == [-1])
    single["ann_id"] = single["ann_id"][0]
    no_target["ann_id"] = []
    path.write_text(json.dumps(refs), encoding="utf-8")

    index = ReferIndex(tmp_path)
    by_ref_id = {
        expression.ref_id: expression
        for split in index.splits
        for image_id in index.image_ids(split)
        for expression in index.expressions(image_id, split)
    }
    assert by_ref_id[single["ref_id"]].ann_ids == (single["ann_id"],)
    assert by_ref_id[single["ref_id"]].kind == "single"
    assert by_ref_id[no_target["ref_id"]].kind == "no-target"
    record = index.image(no_target["image_id"])
    assert not index.target_mask(record.image_id, ()).any()
    assert index.image_path(record.image_id).is_file()


def test_decode_segmentation_forms_agree() -> None:
    polygons = [[2.0, 2.0, 12.0, 2.0, 12.0, 9.0, 2.0, 9.0], [15.0, 15.0, 19.0, 15.0, 17.0, 19.0]]
    from_polygons = decode_segmentation(polygons, 20, 24)
    assert from_polygons.shape == (20, 24) and from_polygons.dtype == bool
    assert from_polygons[5, 5] and from_polygons[16, 17] and not from_polygons[0, 0]

    compressed = encode_rle(from_polygons)
    assert isinstance(compressed["counts"], str)
    compressed_bytes = {"size": compressed["size"], "counts": compressed["counts"].encode("ascii")}
    uncompressed = encode_uncompressed_rle(from_polygons)
    for segmentation in (compressed, compressed_bytes, uncompressed):
        assert np.array_equal(decode_segmentation(segmentation, 20, 24), from_polygons)


def test_uncompressed_rle_starting_with_foreground() -> None:
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = True
    mask[:, 3] = True
    rle = encode_uncompressed_rle(mask)
    assert rle["counts"][0] == 0
    assert np.array_equal(decode_segmentation(rle, 4, 5), mask)


def test_decode_segmentation_validates_input() -> None:
    with pytest.raises(ValueError, match=r"segmentation\[0\]"):
        decode_segmentation([[1.0, 1.0, 5.0, 5.0]], 10, 10)
    rle = encode_rle(np.ones((10, 12), dtype=bool))
    with pytest.raises(ValueError, match=r"\[10, 12\].*\[12, 10\]"):
        decode_segmentation(rle, 12, 10)


def test_synthetic_dataset_exists(tmp_path: Path) -> None:
    spec = small_spec()
    assert not synthetic_dataset_exists(tmp_path, spec)
    write_synthetic_grefcoco(tmp_path, spec)
    assert synthetic_dataset_exists(tmp_path, spec)
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*'seed'"):
        synthetic_dataset_exists(tmp_path, small_spec(seed=7))
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))}.*'seed'"):
        write_synthetic_grefcoco(tmp_path, small_spec(seed=7))
