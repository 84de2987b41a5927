"""The datasets this project reads, by task (names used in configs and on the command line).

Kept at the bottom layer, with no imports, so that the configuration can be validated before any
reader or model is built.
"""

from __future__ import annotations

TASKS = ("sem_seg", "refer_seg", "vqa", "reason_seg")
"""Task families of the training mixture (the paper's SemSeg : RES : VQA : ReasonSeg)."""

DATASET_TASKS = {
    "ade20k": "sem_seg",
    "cocostuff": "sem_seg",
    "mapillary": "sem_seg",
    "paco_lvis": "sem_seg",
    "pascal_part": "sem_seg",
    "refcoco": "refer_seg",
    "refcoco+": "refer_seg",
    "refcocog": "refer_seg",
    "refclef": "refer_seg",
    "grefcoco": "refer_seg",
    "refzom": "refer_seg",
    "llava_instruct_150k": "vqa",
    "reason_seg": "reason_seg",
}
"""Every readable dataset and its task."""
