"""Writers of small datasets in the exact on-disk formats users have (the LISA/GSVA layout)."""

from pathlib import Path

from tests.formats.refer_formats import write_all_refer
from tests.formats.semseg_formats import write_all_semseg
from tests.formats.vqa_reason_formats import write_llava_instruct, write_reason_seg


def write_every_dataset(root: Path) -> None:
    """Every dataset of the paper under one ``<dataset_dir>``, as a user's would be."""
    write_all_refer(root)
    write_all_semseg(root)
    write_llava_instruct(root)
    write_reason_seg(root)
