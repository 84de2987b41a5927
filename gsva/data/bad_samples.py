"""Bad training samples: the error a reader raises for one unusable sample, and the tally that
training keeps of what the streams skipped (``data.on_bad_sample: skip``).

A ``BadSampleError`` says what is broken (``source``: a file, with the field or ids within it),
why (``reason``: what was found and what was expected) and which kind of fault it is (``kind``,
what the end-of-training summary counts). Only this error is ever skipped: any other exception
is a bug or a dataset broken as a whole, and stops training.
"""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path
from typing import Any, Literal

BadSampleKind = Literal[
    "missing image",
    "unreadable image",
    "image size",
    "missing label",
    "unreadable label",
    "annotation id",
    "segmentation",
    "prompt length",
]

BAD_SAMPLE_POLICIES = ("error", "skip")
"""Values of ``data.on_bad_sample``: stop on the first bad sample, or replace it by another."""

RECENT_RECORDS = 5
"""Skip records that ``BadSampleTally.check`` quotes when the limit is passed."""


class BadSampleError(ValueError):
    """One training sample cannot be built from its files."""

    def __init__(self, source: str | Path, reason: str, kind: BadSampleKind) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = str(source)
        self.reason = reason
        self.kind = kind

    def record(self) -> dict[str, str]:
        """What a stream attaches to the sample that replaces this one (``metadata["skipped"]``)."""
        return {"source": self.source, "reason": self.reason, "kind": self.kind}


def check_policy(on_bad_sample: str) -> None:
    """``ValueError`` unless ``on_bad_sample`` is one of :data:`BAD_SAMPLE_POLICIES`."""
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"data.on_bad_sample: expected one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}")


class BadSampleTally:
    """What the streams skipped and the builder dropped over a training run, from the batches'
    conversation metadata (``"skipped"`` records and ``"dropped_expressions"`` counts)."""

    def __init__(self) -> None:
        self.count = 0
        """Bad samples skipped so far."""
        self.dropped_expressions = 0
        """Expressions left out of training prompts to fit ``data.model_max_length``."""
        self.by_kind: Counter[str] = Counter()
        self.recent: deque[dict[str, str]] = deque(maxlen=RECENT_RECORDS)

    def record(self, batch_metadata: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Count one batch (``GsvaBatch.metadata``); returns its skip records, each naming the
        file and the reason, for the caller to log."""
        skipped = [record for metadata in batch_metadata for record in metadata.get("skipped", [])]
        self.count += len(skipped)
        self.by_kind.update(record["kind"] for record in skipped)
        self.recent.extend(skipped)
        self.dropped_expressions += sum(metadata.get("dropped_expressions", 0) for metadata in batch_metadata)
        return skipped

    def check(self, limit: int) -> None:
        """``RuntimeError`` once more than ``limit`` (``data.max_bad_samples``) samples were skipped."""
        if self.count > limit:
            last = "; ".join(f"{record['source']}: {record['reason']}" for record in self.recent)
            raise RuntimeError(
                f"{self.count} bad samples skipped, more than data.max_bad_samples={limit}; the last ones: {last}; "
                "check the data with scripts/check_data.py"
            )

    def summary(self) -> str:
        """One line for the end of training: skipped samples per kind, dropped expressions."""
        kinds = ", ".join(f"{kind}: {number}" for kind, number in sorted(self.by_kind.items()))
        skipped = f"{self.count} bad samples skipped" + (f" ({kinds})" if kinds else "")
        return f"{skipped}; {self.dropped_expressions} expressions dropped to fit data.model_max_length"
