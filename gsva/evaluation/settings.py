"""One evaluation run: the options of the config's ``eval:`` section, and where its reports go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gsva.config import EvalConfig


@dataclass(frozen=True)
class EvalSettings:
    options: EvalConfig = field(default_factory=EvalConfig)
    """How the benchmark is asked and scored (``eval:``; ``eval.py``'s flags already applied)."""
    output_root: str | None = None
    """Reports (metrics.json, records.jsonl, ``options.visualize`` overlays) go to
    ``<output_root>/<report folder>``; none are written when None."""
    weights: str | None = None
    """The weights file being scored: with ``output_root``, an interrupted evaluation resumes."""

    def report_dir(self, dataset: str, split: str) -> Path | None:
        """``<output_root>/<dataset>_<split>_<protocol>_<prompt style>[_per_expression]``: one
        naming for every report, from training and from ``eval.py`` alike."""
        if self.output_root is None:
            return None
        options = self.options
        style = options.prompt_style + ("_per_expression" if options.one_expression_per_prompt else "")
        return Path(self.output_root) / f"{dataset}_{split}_{options.protocol}_{style}"
