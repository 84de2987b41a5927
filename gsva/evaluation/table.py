"""Metrics as a fixed-width text table (percentages; counts as integers; None as "-")."""

from __future__ import annotations

from collections.abc import Sequence

COLUMN_NAMES = {
    "giou": "gIoU",
    "ciou": "cIoU",
    "n_acc": "N-acc",
    "t_acc": "T-acc",
    "oiou": "oIoU",
    "miou": "mIoU",
    "acc": "Acc",
    "rec_acc@0.5": "REC Acc@0.5",
    "num_classes": "classes",
    **{f"pr@{t}": f"Pr@{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
}


def _format_value(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{100.0 * value:.2f}"


def format_metrics_table(
    rows: dict[str, dict],
    columns: Sequence[str] = ("giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"),
) -> str:
    """One row per label, one column per metric key (named as in the paper's tables)."""
    header = [""] + [COLUMN_NAMES.get(c, c) for c in columns]
    body = [[label] + [_format_value(metrics.get(c)) for c in columns] for label, metrics in rows.items()]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(render(line) for line in [header, *body])
