"""Reader for the LLaVA-Instruct-150K visual-question-answering conversations.

Layout under a dataset root (the LISA/GSVA layout)::

    <root>/llava_dataset/llava_instruct_150k.json   # JSON list of records
    <root>/coco/train2017/<image>                   # COCO 2017 train images

A record is ``{"id": "000000033471", "image": "000000033471.jpg", "conversations": [...]}``
where each message is ``{"from": "human" | "gpt", "value": str}``. One message, the first
human one in the released file, holds the ``<image>`` placeholder, either before the question
(``"<image>\\nWhat is ...?"``) or after it (``"What is ...?\\n<image>"``).

Normalisation, so that every record reaches the prompt builder in one shape:

* the placeholder is removed from the message that holds it, and the text either side of it is
  joined by a newline when the whitespace around it held one, by a space otherwise, then that
  message is stripped; other messages are left untouched;
* the first human message then becomes ``"<image>\\n" + its text`` (``"<image>\\n"`` alone when
  it held nothing but the placeholder).

Validation happens once, at load; every error names the file, the record position and id, and
what was expected:

* messages alternate human/gpt starting with human, and the last one is a gpt answer: a trailing
  question without an answer is an error (it carries no supervision and marks a truncated record);
* a record holds exactly one placeholder (zero means a text-only record, two or more a
  multi-image record: neither is a record of this dataset);
* ``"id"`` is a string or an integer (kept as its string form), ``"image"`` a non-empty string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsva.data.doctor import OpenedDataset, check_image
from gsva.text.special_tokens import IMAGE_PLACEHOLDER

DEFAULT_FILE_NAME = "llava_instruct_150k.json"
ROLES = ("human", "gpt")

Turn = tuple[str, str]
"""A (human, gpt) message pair."""

_PLACEHOLDER_AND_SPACE = re.compile(rf"\s*{re.escape(IMAGE_PLACEHOLDER)}\s*")


@dataclass(frozen=True)
class VqaRecord:
    """One image and its conversation.

    ``turns`` are the (human, gpt) message pairs in order. The first human message starts with
    ``"<image>\\n"``; no other place in the record holds the placeholder.
    """

    record_id: str
    image_path: Path
    turns: list[Turn]


def instruct_path(dataset_root: Path | str, file_name: str = DEFAULT_FILE_NAME) -> Path:
    """Path of the conversations file under ``<root>/llava_dataset``."""
    return Path(dataset_root) / "llava_dataset" / file_name


def images_dir(dataset_root: Path | str) -> Path:
    """Folder holding the COCO 2017 train images the records name."""
    return Path(dataset_root) / "coco" / "train2017"


def remove_placeholder(text: str) -> str:
    """``text`` without its ``<image>`` placeholder(s), whitespace tidied as the module notes say.

    A text without a placeholder is returned unchanged (not stripped).
    """
    if IMAGE_PLACEHOLDER not in text:
        return text
    return _PLACEHOLDER_AND_SPACE.sub(_joiner, text).strip()


def _joiner(match: re.Match[str]) -> str:
    return "\n" if "\n" in match.group(0) else " "


class LlavaInstruct:
    """In-memory list of validated, normalised LLaVA-Instruct records (JSON loaded once)."""

    def __init__(self, dataset_root: Path | str, file_name: str = DEFAULT_FILE_NAME) -> None:
        self.path = instruct_path(dataset_root, file_name)
        self.images_dir = images_dir(dataset_root)
        if not self.path.is_file():
            raise FileNotFoundError(f"LLaVA-Instruct conversations not found, expected: {self.path}")
        with self.path.open("r", encoding="utf-8") as handle:
            records = json.load(handle)
        if not isinstance(records, list):
            raise ValueError(f"{self.path}: expected a JSON list of records, got {type(records).__name__}")
        # Compact (id, image file name, turns) triples; VqaRecord objects are built on access.
        self._records = [self._parse_record(record, position) for position, record in enumerate(records)]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> VqaRecord:
        record_id, image_name, turns = self._records[index]
        return VqaRecord(record_id=record_id, image_path=self.images_dir / image_name, turns=list(turns))

    def _parse_record(self, record: Any, position: int) -> tuple[str, str, tuple[Turn, ...]]:
        where = f"{self.path} record #{position}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        record_id = record.get("id")
        if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
            raise ValueError(f"{where}: 'id' must be a string or an integer, got {record_id!r}")
        where = f"{where} (id {str(record_id)!r})"
        for key in ("image", "conversations"):
            if key not in record:
                raise ValueError(f"{where}: missing field {key!r}")
        image_name = record["image"]
        if not isinstance(image_name, str) or not image_name:
            raise ValueError(f"{where}: 'image' must be a non-empty file name, got {image_name!r}")
        turns = _pair_messages(record["conversations"], where)
        return str(record_id), image_name, tuple(_image_first(turns, where))


def _pair_messages(conversation: Any, where: str) -> list[Turn]:
    """Check that messages alternate human/gpt from a human one to a gpt one; pair them."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of messages")
    for index, message in enumerate(conversation):
        expected = ROLES[index % 2]
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise ValueError(f"{where}: message {index} must be an object with a string 'value'")
        if message.get("from") != expected:
            raise ValueError(
                f"{where}: message {index} is from {message.get('from')!r}, expected {expected!r} "
                "(messages alternate human/gpt, starting with human)"
            )
    if len(conversation) % 2:
        raise ValueError(
            f"{where}: the last message (#{len(conversation) - 1}) is a human question without a gpt answer"
        )
    values = [message["value"] for message in conversation]
    return list(zip(values[0::2], values[1::2]))


def _image_first(turns: list[Turn], where: str) -> list[Turn]:
    """Move the record's single placeholder to the front of the first human message."""
    count = sum(human.count(IMAGE_PLACEHOLDER) + gpt.count(IMAGE_PLACEHOLDER) for human, gpt in turns)
    if count != 1:
        raise ValueError(f"{where}: expected exactly one {IMAGE_PLACEHOLDER!r} placeholder, found {count}")
    tidied = [(remove_placeholder(human), remove_placeholder(gpt)) for human, gpt in turns]
    first_human, first_gpt = tidied[0]
    return [(f"{IMAGE_PLACEHOLDER}\n{first_human}", first_gpt), *tidied[1:]]


def check_vqa(name: str, root: Path) -> OpenedDataset:
    """The dataset opened for the data doctor: its counts and every file training would read, each
    with the function that reads it as training would."""
    records = LlavaInstruct(root)
    paths = sorted({records[i].image_path for i in range(len(records))})
    counts = {
        "train/conversations": len(records),
        "train/turns": sum(len(records[i].turns) for i in range(len(records))),
        "train/images": len(paths),
    }
    return OpenedDataset(counts, [(path, lambda path=path: check_image(path)) for path in paths])
