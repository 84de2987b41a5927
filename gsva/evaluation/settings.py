"""How a benchmark is evaluated: the protocol, how its prompts are asked, the metric variant shown,
batching, overlays, and where its report goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gsva.evaluation.scores import VARIANTS
from gsva.model.gsva import PROTOCOLS


PROMPT_STYLES = ("gsva", "gsva_release", "lisa")
"""gsva: one prompt per image naming all its expressions (the paper); gsva_release: the same with
the exact prompt of the authors' released evaluation; lisa: one single-target prompt per
expression."""


@dataclass
class EvalSettings:
    protocol: str = "teacher-forced"
    prompt_style: str = "gsva"
    one_expression_per_prompt: bool = False
    """Referring benchmarks: ask the gsva question once per expression instead of once per image."""
    metric_variant: str = "gres"
    """GRES: which variant the table shows (both are in metrics.json)."""
    batch_size: int = 4
    max_new_tokens: int = 128
    num_workers: int = 0
    visualize: int = 0
    """Overlay PNGs written per benchmark."""
    output_root: str | None = None
    """Reports go to ``<output_root>/<report folder>`` (none written when None)."""
    weights: str | None = None
    """The weights file being scored: with ``output_root``, an interrupted evaluation resumes."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.prompt_style!r}; expected one of {PROMPT_STYLES}")
        if self.metric_variant not in VARIANTS:
            raise ValueError(f"unknown metric variant {self.metric_variant!r}; expected one of {VARIANTS}")

    def report_dir(self, dataset: str, split: str) -> Path | None:
        """``<output_root>/<dataset>_<split>_<protocol>_<prompt style>[_per_expression]``: one
        naming for every report, from training and from ``eval.py`` alike."""
        if self.output_root is None:
            return None
        style = self.prompt_style + ("_per_expression" if self.one_expression_per_prompt else "")
        return Path(self.output_root) / f"{dataset}_{split}_{self.protocol}_{style}"
