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

NO_TARGET_DATASETS = ("grefcoco", "refzom")
"""Referring datasets with no-target expressions, which the model answers with ``[REJ]``."""

BENCHMARK_FAMILIES = {
    "grefcoco": "gres",
    "refcoco": "res",
    "refcoco+": "res",
    "refcocog": "res",
    "refclef": "res",
    "refzom": "refzom",
    "reason_seg": "reason_seg",
    "ade20k": "ade20k",
}
"""Every dataset that can be evaluated, and the family of metrics of its benchmarks."""


def check_benchmark(spec: str) -> tuple[str, str]:
    """``"<dataset>:<split>"`` -> (dataset, split); ValueError naming what is expected."""
    dataset, _, split = spec.partition(":")
    if dataset not in BENCHMARK_FAMILIES or not split:
        raise ValueError(
            f"benchmark {spec!r}: expected <dataset>:<split> with a dataset among {sorted(BENCHMARK_FAMILIES)}, "
            "e.g. grefcoco:val, refcocog:test, reason_seg:val, refzom:test, ade20k:val"
        )
    return dataset, split
