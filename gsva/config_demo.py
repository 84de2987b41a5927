"""The demo's sections of the configuration: the synthetic dataset's spec (``data.synthetic``) and
the pretraining of the tiny components (``components``). Plain dataclasses, so that the
configuration can be read before anything else is imported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 50),
    "purple": (150, 60, 200),
    "cyan": (50, 210, 220),
}
SPLITS = ("train", "val", "testA", "testB")
SEGMENTATION_FORMATS = ("polygon", "mixed")


def _default_num_images() -> dict[str, int]:
    return {"train": 3000, "val": 300, "testA": 150, "testB": 150}


@dataclass
class SyntheticSpec:
    """Everything that determines the generated dataset."""

    seed: int = 0
    image_size: int = 64
    num_images: dict[str, int] = field(default_factory=_default_num_images)
    colours: tuple[str, ...] = tuple(COLOURS)
    min_objects: int = 2
    max_objects: int = 4
    min_object_size: int = 16
    max_object_size: int = 26
    repeat_colour_prob: float = 0.35
    absent_expression_prob: float = 0.6
    pair_expression_prob: float = 0.15
    segmentation_format: Literal["polygon", "mixed"] = "polygon"

    def __post_init__(self) -> None:
        self.colours = tuple(self.colours)
        unknown_splits = sorted(set(self.num_images) - set(SPLITS))
        if unknown_splits:
            raise ValueError(f"num_images: unknown splits {unknown_splits}, expected keys among {SPLITS}")
        if any(count < 0 for count in self.num_images.values()):
            raise ValueError(f"num_images: counts must be >= 0, got {self.num_images}")
        unknown_colours = [name for name in self.colours if name not in COLOURS]
        if unknown_colours:
            raise ValueError(f"colours: unknown names {unknown_colours}, expected names from {tuple(COLOURS)}")
        if len(set(self.colours)) < 2:
            raise ValueError(f"colours: expected at least 2 distinct colours, got {self.colours}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"min_objects/max_objects: expected 1 <= min <= max, got {self.min_objects}, {self.max_objects}"
            )
        if not 1 <= self.min_object_size <= self.max_object_size <= self.image_size:
            raise ValueError(
                "min_object_size/max_object_size: expected 1 <= min <= max <= image_size, got "
                f"{self.min_object_size}, {self.max_object_size} (image_size {self.image_size})"
            )
        for name in ("repeat_colour_prob", "absent_expression_prob", "pair_expression_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
        if self.segmentation_format not in SEGMENTATION_FORMATS:
            raise ValueError(
                f"segmentation_format: expected one of {SEGMENTATION_FORMATS}, got {self.segmentation_format!r}"
            )


@dataclass
class ComponentPretrainConfig:
    """Short pretraining of the tiny components (stand-ins for SAM's and LLaVA's own pretraining)."""

    enabled: bool = False
    output_dir: str = "runs/tiny_components"
    sam_steps: int = 400
    sam_lr: float = 3e-3
    clip_steps: int = 1200
    clip_lr: float = 3e-3
    llava_steps: int = 400
    llava_lr: float = 2e-3
    batch_size: int = 16
    held_out_split: str = "val"
    """The split of the synthetic set each stage measures itself on."""
    min_sam_iou: float = 0.0
    """Held-out floors each stage must reach, or the run stops (0 = report only)."""
    min_clip_patch_accuracy: float = 0.0
    min_clip_image_accuracy: float = 0.0
    min_checklist_accuracy: float = 0.0
