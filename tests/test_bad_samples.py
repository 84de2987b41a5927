"""Bad samples: a fault injected into the files of one image of real-format datasets is a
``BadSampleError`` naming the file and field (``on_bad_sample="error"``) or is replaced by another
sample that lists it, the same one for the same key (``"skip"``); a training prompt over the
token limit drops whole expressions from its end; the tally a training run keeps."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gsva.data.bad_samples import BadSampleError, BadSampleTally
from gsva.data.masks import encode_rle
from gsva.data.mixture import FullPassStream, MixtureStream
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.catalog import dataset_entry
from gsva.data.sample_builder import SampleBuilder
from gsva.data.samples import Collator, ImageSample
from gsva.demo.synthetic import SyntheticSpec, write_synthetic_grefcoco
from tests.conftest import tiny_sample_builder
from tests.formats.refer_formats import WrittenRefer, write_all_refer
from tests.formats.semseg_formats import write_ade20k, write_gray_png
from tests.formats.vqa_reason_formats import LLAVA_RECORDS, write_llava_instruct

DATASETS = ("refcoco", "refcocog", "grefcoco", "refzom", "llava_instruct_150k", "ade20k")
"""The training datasets of a stream; each has a few images, the first one spoilt by a fault."""


def make_builder(tokenizer, max_tokens: int = 512) -> SampleBuilder:
    """A builder that asks every expression of an image (at most 10) in one prompt."""
    return tiny_sample_builder(tokenizer, max_tokens=max_tokens, num_classes_per_sample=10)


# --------------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    """A fault in the files of item 0 of ``dataset``, and what its ``BadSampleError`` says."""

    dataset: str
    image: Path
    """The spoilt sample's image file."""
    source: str
    """Held by the error's ``source``: the file, with the field or id."""
    reason: str
    """A regular expression that the error's ``reason`` matches."""
    kind: str


@dataclass(frozen=True)
class Written:
    """The dataset root and what the referring writers wrote under it."""

    root: Path
    refer: dict[str, WrittenRefer]


def edit_json(path: Path, edit: Callable[[Any], None]) -> None:
    """Apply ``edit`` to the JSON file at ``path`` in place."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    edit(payload)
    path.write_text(json.dumps(payload), encoding="utf-8")


def annotation(instances: dict[str, Any], ann_id: int) -> dict[str, Any]:
    """The annotation ``ann_id`` of an ``instances.json`` payload."""
    (found,) = [item for item in instances["annotations"] if item["id"] == ann_id]
    return found


def corrupt_jpeg(written: Written) -> Fault:
    image = written.refer["refcoco"].image_files[1000]
    image.write_bytes(image.read_bytes()[:64])  # a download cut off within the header
    return Fault("refcoco", image, str(image), "cannot decode the image file", "unreadable image")


def missing_image(written: Written) -> Fault:
    image = written.root / "coco" / "train2017" / LLAVA_RECORDS[0]["image"]
    image.unlink()
    return Fault("llava_instruct_150k", image, str(image), "image file not found", "missing image")


def image_size_differs(written: Written) -> Fault:
    refcocog = written.refer["refcocog"]
    edit_json(refcocog.instances_file, lambda instances: instances["images"][0].update(height=33))
    reason = rf"is 40x32 \(width x height\) but {re.escape(str(refcocog.instances_file))} image id 3000 .* say 40x33"
    return Fault("refcocog", refcocog.image_files[3000], str(refcocog.image_files[3000]), reason, "image size")


def label_size_differs(written: Written) -> Fault:
    label = written.root / "ade20k" / "annotations" / "training" / "ADE_train_00000001.png"
    write_gray_png(label, np.ones((10, 12), dtype=np.uint8))
    image = written.root / "ade20k" / "images" / "training" / "ADE_train_00000001.jpg"
    reason = rf"label {re.escape(str(label))} is 10x12 .* decodes to 40x48"
    return Fault("ade20k", image, str(image), reason, "image size")


def ann_id_missing(written: Written) -> Fault:
    grefcoco = written.refer["grefcoco"]
    edit_json(grefcoco.refs_file, lambda refs: refs[0].update(ann_id=[999999]))
    reason = (
        "'ann_id' names ann id 999999: expected an annotation of image id 5000 in "
        f"{re.escape(str(grefcoco.instances_file))}, but ann id 999999 is not there"
    )
    source = f"{grefcoco.refs_file} image id 5000"
    return Fault("grefcoco", grefcoco.image_files[5000], source, reason, "annotation id")


def spoil_segmentation(
    written: Written, dataset: str, ann_id: int, segmentation: Callable[[dict[str, Any]], Any], reason: str
) -> Fault:
    """Replace the segmentation of annotation ``ann_id`` (of item 0) by ``segmentation(image record)``."""
    refer = written.refer[dataset]

    def edit(instances: dict[str, Any]) -> None:
        record = instances["images"][0]
        annotation(instances, ann_id)["segmentation"] = segmentation(record)

    edit_json(refer.instances_file, edit)
    image = next(iter(refer.image_files.values()))
    return Fault(dataset, image, f"{refer.instances_file} ann id {ann_id}", reason, "segmentation")


def polygon_of_two_points(written: Written) -> Fault:
    reason = r"segmentation\[0\]: a polygon needs at least 3 points, got 2"
    return spoil_segmentation(written, "refcoco", 10000, lambda _: [[2.0, 3.0, 10.0, 9.0]], reason)


def empty_compressed_rle(written: Written) -> Fault:
    return spoil_segmentation(
        written, "refzom", 60002, lambda image: {"size": [image["height"], image["width"]], "counts": ""},
        r"the compressed RLE is empty \(its 'counts' sum to 0\); expected run lengths summing to height \* width = 1280",
    )


def empty_uncompressed_rle(written: Written) -> Fault:
    return spoil_segmentation(
        written, "refzom", 60002, lambda image: {"size": [image["height"], image["width"]], "counts": []},
        r"the uncompressed RLE is empty",
    )


def rle_of_another_size(written: Written) -> Fault:
    def segmentation(image: dict[str, Any]) -> dict[str, Any]:
        return encode_rle(np.ones((image["height"] + 1, image["width"]), dtype=bool))

    return spoil_segmentation(
        written, "refzom", 60002, segmentation, r"RLE size \[33, 40\] does not match the image size \[32, 40\]"
    )


def rle_counts_of_another_size(written: Written) -> Fault:
    def segmentation(image: dict[str, Any]) -> dict[str, Any]:
        other = encode_rle(np.eye(image["height"], image["width"] + 3, dtype=bool))
        return {"size": [image["height"], image["width"]], "counts": other["counts"]}

    return spoil_segmentation(
        written, "refzom", 60002, segmentation,
        r"the compressed RLE 'counts' sum to 1376; expected run lengths summing to height \* width = 1280",
    )


def expressions_too_long(written: Written) -> Fault:
    grefcoco = written.refer["grefcoco"]

    def lengthen(refs: list[dict[str, Any]]) -> None:
        for ref in refs:
            for sentence in ref["sentences"]:
                sentence["sent"] = "the red one beside the blue one " * 40

    edit_json(grefcoco.refs_file, lengthen)
    image = grefcoco.image_files[5000]
    reason = r"tokens with a single target, more than data.model_max_length=512"
    return Fault("grefcoco", image, str(image), reason, "prompt length")


FAULTS: dict[str, Callable[[Written], Fault]] = {
    "corrupt_jpeg": corrupt_jpeg,
    "missing_image": missing_image,
    "image_size_differs": image_size_differs,
    "label_size_differs": label_size_differs,
    "ann_id_missing": ann_id_missing,
    "polygon_of_two_points": polygon_of_two_points,
    "empty_compressed_rle": empty_compressed_rle,
    "empty_uncompressed_rle": empty_uncompressed_rle,
    "rle_of_another_size": rle_of_another_size,
    "rle_counts_of_another_size": rle_counts_of_another_size,
    "expressions_too_long": expressions_too_long,
}


def write_with_fault(root: Path, fault: str) -> Fault:
    """Write the datasets of :data:`DATASETS` under ``root`` and inject ``fault`` into them."""
    written = Written(root, write_all_refer(root))
    write_llava_instruct(root)
    write_ade20k(root)
    return FAULTS[fault](written)


def open_datasets(root: Path, builder: SampleBuilder) -> list:
    """The training splits of :data:`DATASETS`, in that order, as training opens them."""
    return [dataset_entry(name).open_training(root, "train", builder) for name in DATASETS]


def streams(root: Path, builder: SampleBuilder, policy: str) -> dict[str, FullPassStream | MixtureStream]:
    """A full-pass stream and an evenly weighted mixture over :data:`DATASETS` with ``policy``."""
    datasets = open_datasets(root, builder)
    tasks: dict[str, list] = {}
    for dataset in datasets:
        tasks.setdefault(dataset.task, []).append(dataset)
    return {
        "full_pass": FullPassStream(datasets, seed=0, on_bad_sample=policy),
        "mixture": MixtureStream(tasks, {task: 1.0 for task in tasks}, seed=0, on_bad_sample=policy),
    }


def key_of_item_0(stream: FullPassStream | MixtureStream, dataset: str) -> Any:
    """A key of ``stream`` whose sample is item 0 of ``dataset``."""
    if isinstance(stream, FullPassStream):
        return (0, stream.offsets[DATASETS.index(dataset)])
    return next(draw for draw in range(5000) if (stream.choose(draw)[0].name, stream.choose(draw)[1]) == (dataset, 0))


def assert_same_sample(first: ImageSample, second: ImageSample) -> None:
    """The two samples hold the same image, tokens, masks and metadata."""
    assert len(first.conversations) == len(second.conversations)
    for one, other in zip(first.conversations, second.conversations):
        assert one.metadata == other.metadata and one.input_ids == other.input_ids
        assert np.array_equal(one.target_masks, other.target_masks)
    assert first.sam_image.equal(second.sam_image)


# ---------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("stream_kind", ["full_pass", "mixture"])
@pytest.mark.parametrize("fault_name", sorted(FAULTS))
def test_error_policy_raises_naming_the_file_and_field(tmp_path, tokenizer, fault_name, stream_kind):
    fault = write_with_fault(tmp_path, fault_name)
    stream = streams(tmp_path, make_builder(tokenizer), "error")[stream_kind]
    with pytest.raises(BadSampleError) as error:
        stream[key_of_item_0(stream, fault.dataset)]
    assert fault.source in error.value.source and fault.source in str(error.value)
    assert re.search(fault.reason, error.value.reason), error.value.reason
    assert error.value.kind == fault.kind


@pytest.mark.parametrize("stream_kind", ["full_pass", "mixture"])
@pytest.mark.parametrize("fault_name", sorted(FAULTS))
def test_skip_policy_replaces_the_sample_and_lists_the_skipped_one(tmp_path, tokenizer, fault_name, stream_kind):
    fault = write_with_fault(tmp_path, fault_name)
    stream = streams(tmp_path, make_builder(tokenizer), "skip")[stream_kind]
    key = key_of_item_0(stream, fault.dataset)
    sample = stream[key]
    metadata = sample.conversations[0].metadata
    assert metadata["image_path"] != str(fault.image)
    assert metadata["skipped"], "the spoilt sample must be listed"
    for record in metadata["skipped"]:  # a replacement may draw the spoilt image again
        assert fault.source in record["source"] and re.search(fault.reason, record["reason"]), record
        assert record["kind"] == fault.kind
    assert_same_sample(sample, stream[key])


def test_a_prompt_over_the_limit_drops_expressions_from_its_end(tmp_path, tokenizer):
    write_synthetic_grefcoco(tmp_path, SyntheticSpec(num_images={"train": 8}))
    index = ReferIndex(tmp_path)

    def stream(max_tokens: int) -> FullPassStream:
        dataset = ReferSegDataset(index, "train", make_builder(tokenizer, max_tokens), train=True)
        return FullPassStream([dataset], seed=0)

    unlimited = stream(4096)
    key = next((0, p) for p in range(len(unlimited)) if len(unlimited[(0, p)].conversations[0].slot_exists) >= 3)
    (full,) = unlimited[key].conversations
    assert full.metadata["dropped_expressions"] == 0
    (cut,) = stream(len(full.input_ids) - 1)[key].conversations
    asked = len(cut.slot_exists)
    assert 1 <= asked < len(full.slot_exists) and len(cut.input_ids) < len(full.input_ids)
    assert cut.metadata["dropped_expressions"] == len(full.slot_exists) - asked
    assert cut.metadata["expressions"] == full.metadata["expressions"][:asked]
    for key_name in ("kinds", "keys", "ann_ids"):
        assert cut.metadata[key_name] == full.metadata[key_name][:asked]
    assert cut.slot_exists == full.slot_exists[:asked]
    assert np.array_equal(cut.target_masks, full.target_masks[:asked])
    assert len(cut.slot_positions) == asked  # every asked target kept its slot token
    assert cut.input_ids[: cut.slot_positions[0]] != full.input_ids[: full.slot_positions[0]]  # fewer names asked


@dataclass
class FakeDataset:
    """Item ``bad`` raises ``error``; the others give (name, item) instead of an image."""

    name: str
    size: int
    bad: int
    error: Exception
    task: str = "refer_seg"

    def __len__(self) -> int:
        return self.size

    def sample(self, item: int, rng: random.Random):
        if item == self.bad:
            raise self.error
        return (self.name, item)


def test_only_bad_samples_are_skipped_and_a_run_of_them_stops():
    bug = FullPassStream([FakeDataset("a", 4, bad=0, error=KeyError("image_id"))], seed=0, on_bad_sample="skip")
    with pytest.raises(KeyError):
        bug[(0, 0)]
    broken = BadSampleError("/data/a.jpg", "cannot decode the image file", "unreadable image")
    all_bad = FullPassStream([FakeDataset("a", 1, bad=0, error=broken)], seed=0, on_bad_sample="skip")
    with pytest.raises(RuntimeError, match=r"/data/a\.jpg"):
        all_bad[(0, 0)]
    with pytest.raises(ValueError, match=r"data\.on_bad_sample"):
        MixtureStream({"refer_seg": [FakeDataset("a", 1, 0, broken)]}, {"refer_seg": 1.0}, 0, on_bad_sample="ignore")


def skip_record(number: int) -> dict[str, str]:
    """A skip record as a stream writes it, numbered ``number``."""
    kind = "unreadable image" if number % 2 else "segmentation"
    return {"source": f"/data/{number}.jpg", "reason": f"reason {number}", "kind": kind}


def test_tally_counts_skips_and_drops_and_stops_past_the_limit():
    tally = BadSampleTally()
    batch = [{"skipped": [skip_record(1)]}, {"dropped_expressions": 2}, {"skipped": [skip_record(2), skip_record(3)]}]
    assert tally.record(batch) == [skip_record(1), skip_record(2), skip_record(3)]
    assert tally.record([{"dropped_expressions": 0}]) == []
    assert tally.count == 3 and tally.dropped_expressions == 2
    tally.check(3)
    assert tally.summary() == (
        "3 bad samples skipped (segmentation: 1, unreadable image: 2); 2 expressions dropped to fit data.model_max_length"
    )
    tally.record([{"skipped": [skip_record(number) for number in range(4, 10)]}])
    with pytest.raises(RuntimeError, match=r"data\.max_bad_samples=3") as error:
        tally.check(3)
    assert all(f"/data/{number}.jpg" in str(error.value) for number in range(5, 10))  # the last ones
    assert "/data/4.jpg" not in str(error.value) and "scripts/check_data.py" in str(error.value)
    assert BadSampleTally().summary() == "0 bad samples skipped; 0 expressions dropped to fit data.model_max_length"


def test_tally_reads_the_skips_of_collated_batches(tmp_path, tokenizer):
    fault = write_with_fault(tmp_path, "corrupt_jpeg")
    builder = make_builder(tokenizer)
    stream = streams(tmp_path, builder, "skip")["full_pass"]
    batch = Collator(builder.pad_token_id, 32)([stream[(0, position)] for position in range(len(stream))])
    tally = BadSampleTally()
    records = tally.record(batch.metadata)
    assert [record["source"] for record in records] == [str(fault.image)] * tally.count and tally.count >= 1
    assert "unreadable image" in tally.summary()
