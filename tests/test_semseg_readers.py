"""Readers of the semantic segmentation datasets, on tiny datasets written in their real formats."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gsva.data.sem_seg.class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES, COCO_STUFF_UNUSED_IDS
from gsva.data.registry import SemSegFormat, datasets_stored_as
from gsva.data.sem_seg.reader import (
    decoded_image_size,
    open_semseg_source,
    parse_category_name,
    phrase_class,
    read_label_png,
)
from tests.formats.semseg_formats import (
    MAPILLARY_UNLABELED,
    write_ade20k,
    write_all_semseg,
    write_cocostuff,
    write_gray_png,
    write_mapillary,
    write_paco_lvis,
)

DATASET_SPLITS = [(name, "train") for name in datasets_stored_as(SemSegFormat)] + [("ade20k", "val")]


@pytest.fixture(scope="module")
def semseg_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("semseg")
    return root, write_all_semseg(root)


def test_class_name_tables():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[149] == "flag"
    assert len(COCO_STUFF_CLASSES) == 182 and len(set(COCO_STUFF_CLASSES)) == 182
    assert COCO_STUFF_CLASSES[0] == "person" and COCO_STUFF_CLASSES[90] == "hair brush"
    assert COCO_STUFF_CLASSES[91] == "banner" and COCO_STUFF_CLASSES[156] == "sky"
    assert COCO_STUFF_CLASSES[181] == "wood"
    assert sorted(COCO_STUFF_UNUSED_IDS) == [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    assert {COCO_STUFF_CLASSES[i] for i in COCO_STUFF_UNUSED_IDS} == {
        "street sign", "hat", "shoe", "eye glasses", "plate", "mirror",
        "window", "desk", "door", "blender", "hair brush",
    }


@pytest.mark.parametrize(("name", "split"), DATASET_SPLITS)
def test_targets_equal_what_was_drawn(semseg_root, name, split):
    root, expected_all = semseg_root
    expected = expected_all[name][split]
    source = open_semseg_source(name, root, split)
    assert source.name == name
    assert source.class_names == expected.class_names
    assert len(source) == len(expected.images)
    for index, image in enumerate(expected.images):
        targets = source.read_targets(index)
        assert source.image_path(index) == image.image_path
        assert (targets.height, targets.width) == (image.height, image.width)
        assert targets.class_ids == sorted(image.masks)
        assert not set(targets.class_ids) & source.ignored_class_ids
        assert targets.unsure_class_ids == image.unsure_class_ids
        for class_id, mask in image.masks.items():
            got = targets.mask(class_id)
            assert got.dtype == bool and got.shape == (image.height, image.width)
            np.testing.assert_array_equal(got, mask)


def test_ade20k_label_value_is_class_id_plus_one_and_zero_is_ignored(semseg_root):
    root, expected_all = semseg_root
    source = open_semseg_source("ade20k", root)
    image = expected_all["ade20k"]["train"].images[0]
    raw = cv2.imread(str(source.label_paths[0]), cv2.IMREAD_UNCHANGED)
    assert 0 in raw  # unlabelled pixels exist
    names = {ADE20K_CLASSES[class_id] for class_id in source.read_targets(0).class_ids}
    assert names == {"wall", "sky", "flag"}
    for class_id, value in image.label_values.items():
        assert value == class_id + 1
        assert np.all(raw[image.masks[class_id]] == value)
    assert source.ignored_class_ids == frozenset()


def test_cocostuff_ignores_unlabeled_hyphen_and_unused_classes(semseg_root):
    root, _ = semseg_root
    source = open_semseg_source("cocostuff", root)
    hyphen_ids = {index for index, name in enumerate(COCO_STUFF_CLASSES) if "-" in name}
    assert len(hyphen_ids) == 28
    assert source.ignored_class_ids == hyphen_ids | COCO_STUFF_UNUSED_IDS
    raw = cv2.imread(str(source.label_paths[0]), cv2.IMREAD_UNCHANGED)
    wall_other = COCO_STUFF_CLASSES.index("wall-other")
    assert {255, wall_other} <= set(np.unique(raw).tolist())
    assert [COCO_STUFF_CLASSES[i] for i in source.read_targets(0).class_ids] == ["person", "sky"]
    assert source.read_targets(2).class_ids == []  # only unlabelled and "wall-other" pixels
    with pytest.raises(ValueError, match="not a target"):
        source.read_targets(0).mask(wall_other)


def test_mapillary_palette_png_is_read_as_indices(semseg_root):
    root, expected_all = semseg_root
    source = open_semseg_source("mapillary", root)
    label_path = source.label_paths[1]
    with Image.open(label_path) as image:
        assert image.mode == "P"
    # OpenCV expands the palette into colours: the class index cannot be read from it.
    assert cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED).shape[2:] == (3,)
    indices = read_label_png(label_path)
    assert indices.dtype == np.uint8 and indices.shape == (40, 44)
    image = expected_all["mapillary"]["train"].images[1]
    assert set(np.unique(indices).tolist()) == set(image.label_values.values()) | {MAPILLARY_UNLABELED}
    assert source.class_names[3] == "traffic sign (front)"
    assert source.class_names[MAPILLARY_UNLABELED] == "unlabeled"
    assert source.ignored_class_ids == frozenset({MAPILLARY_UNLABELED})


def test_coco_json_one_class_is_the_union_of_its_annotations_without_crowd(semseg_root):
    root, expected_all = semseg_root
    source = open_semseg_source("paco_lvis", root)
    expected = expected_all["paco_lvis"]["train"]
    assert [path.name for path in (source.image_path(0), source.image_path(1))] == [
        "000000000139.jpg",
        "000000000285.jpg",
    ]  # crowd-only and unannotated images dropped
    assert source.class_names == [("mug", "handle"), ("trash_can", "inner_body"), "mug", "glass", ("pan", "base")]
    targets = source.read_targets(0)
    mug = targets.mask(2)
    assert mug[2:18, 2:20].all() and mug[22:38, 26:46].all()  # both mugs in one mask
    np.testing.assert_array_equal(mug, expected.images[0].masks[2])
    glass = source.class_names.index("glass")
    assert glass in targets.unsure_class_ids and glass not in targets.class_ids
    with pytest.raises(ValueError, match="not a target"):
        targets.mask(glass)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("mug", "mug"),
        ("mug:handle", ("mug", "handle")),
        ("obj_(x):part", ("obj", "part")),
        ("pan_(for_cooking):base", ("pan", "base")),
        ("glass_(drink_container)", "glass"),
        ("car:wheel_(left)", ("car", "wheel")),
        ("trash_can:inner_body", ("trash_can", "inner_body")),
        ("potted plant:pot", ("potted plant", "pot")),
    ],
)
def test_parse_category_name(name, parsed):
    assert parse_category_name(name) == parsed


@pytest.mark.parametrize("name", ["a:b:c", "a:", ":b", ""])
def test_parse_category_name_rejects_malformed(name):
    with pytest.raises(ValueError, match="object:part"):
        parse_category_name(name)


def test_phrase_class():
    rng = random.Random(0)
    assert phrase_class("traffic light", rng) == "traffic light"
    assert phrase_class("trash_can", rng) == "trash can"
    phrases = {phrase_class(("trash_can", "inner_body"), rng) for _ in range(40)}
    assert phrases == {"trash can inner body", "the inner body of the trash can"}
    assert phrase_class(("mug", "handle"), random.Random(3)) == phrase_class(("mug", "handle"), random.Random(3))


@pytest.mark.parametrize(
    ("name", "expected_path"),
    [
        ("ade20k", "ade20k/annotations/training"),
        ("cocostuff", "cocostuff/train2017"),
        ("mapillary", "mapillary/config_v2.0.json"),
        ("paco_lvis", "vlpart/paco/annotations/paco_lvis_v1_train.json"),
        ("pascal_part", "vlpart/pascal_part/train.json"),
    ],
)
def test_missing_dataset_names_the_expected_path(tmp_path, name, expected_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / expected_path))):
        open_semseg_source(name, tmp_path)


def test_missing_image_of_a_label_is_named(tmp_path):
    write_cocostuff(tmp_path)
    missing = tmp_path / "coco" / "train2017" / "000000000025.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        open_semseg_source("cocostuff", tmp_path)


def test_missing_image_of_a_coco_json_is_named(tmp_path):
    write_paco_lvis(tmp_path)
    missing = tmp_path / "coco" / "train2017" / "000000000285.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        open_semseg_source("paco_lvis", tmp_path)


def test_splits_and_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="no split 'val'"):
        open_semseg_source("cocostuff", tmp_path, "val")
    with pytest.raises(ValueError, match="unknown semantic segmentation dataset 'cityscapes'"):
        open_semseg_source("cityscapes", tmp_path)


def test_label_size_differing_from_its_image_is_an_error(tmp_path):
    write_ade20k(tmp_path)
    source = open_semseg_source("ade20k", tmp_path)
    write_gray_png(source.label_paths[1], np.ones((10, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="10x12") as error:
        source.read_targets(1)
    assert str(source.label_paths[1]) in str(error.value) and str(source.image_path(1)) in str(error.value)


def test_size_check_applies_exif_orientation_like_cv2(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    image.save(path, exif=exif.tobytes())
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape[:2] == (48, 40)
    assert decoded_image_size(path) == (48, 40)


@pytest.mark.parametrize(("name", "value"), [("ade20k", 151), ("ade20k", 255), ("cocostuff", 182), ("mapillary", 6)])
def test_label_value_outside_the_class_list_is_an_error(tmp_path, name, value):
    write_all = {"ade20k": write_ade20k, "cocostuff": write_cocostuff, "mapillary": write_mapillary}[name]
    write_all(tmp_path)
    source = open_semseg_source(name, tmp_path)
    label = read_label_png(source.label_paths[0]).copy()
    label[0, 0] = value
    if name == "mapillary":
        with Image.open(source.label_paths[0]) as image:
            palette = image.getpalette()
        rewritten = Image.fromarray(label)
        rewritten.putpalette(palette)
        rewritten.save(source.label_paths[0])
    else:
        write_gray_png(source.label_paths[0], label)
    with pytest.raises(ValueError, match=rf"values \[{value}\]") as error:
        source.read_targets(0)
    assert str(source.label_paths[0]) in str(error.value)


def test_unreadable_or_colour_label_is_an_error(tmp_path):
    write_ade20k(tmp_path)
    source = open_semseg_source("ade20k", tmp_path)
    source.label_paths[0].write_bytes(b"not a png")
    with pytest.raises(ValueError, match=re.escape(str(source.label_paths[0]))):
        source.read_targets(0)
    cv2.imwrite(str(source.label_paths[1]), np.zeros((36, 52, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="single-channel or palette"):
        source.read_targets(1)


def test_unreadable_image_is_named(tmp_path):
    write_ade20k(tmp_path)
    source = open_semseg_source("ade20k", tmp_path)
    source.image_path(0).write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=re.escape(str(source.image_path(0)))):
        source.read_targets(0)


def test_coco_json_errors_name_the_file(tmp_path):
    write_paco_lvis(tmp_path)
    json_path = tmp_path / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    data = json.loads(json_path.read_text())
    data["annotations"][0]["category_id"] = 999
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 999") as error:
        open_semseg_source("paco_lvis", tmp_path)
    assert str(json_path) in str(error.value)

    data["annotations"][0]["category_id"] = 23
    data["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0]]  # odd number of coordinates
    json_path.write_text(json.dumps(data))
    source = open_semseg_source("paco_lvis", tmp_path)
    with pytest.raises(ValueError, match="annotation id 1") as error:
        source.read_targets(0).mask(source.class_names.index("mug"))
    assert str(json_path) in str(error.value)
