"""Token strings and ids shared by the data pipeline and the model.

The answer of a GSVA conversation has one slot per referring expression: ``[SEG]`` when the
target exists (its mask query is read from the LLM), ``[REJ]`` when it does not. All ``[SEG]``
slots share one embedding; the ablation of the paper (Table A6) uses ``[SEG000]`` … ``[SEG007]``
instead, dispatched by slot index modulo their number.
"""

SEG_TOKEN = "[SEG]"
REJ_TOKEN = "[REJ]"
IMAGE_PLACEHOLDER = "<image>"
IM_START_TOKEN = "<im_start>"
IM_END_TOKEN = "<im_end>"

IGNORE_INDEX = -100
"""Label value for tokens that carry no language-model loss (prompt, image, padding)."""

IMAGE_TOKEN_INDEX = -200
"""Input id that stands for the image placeholder; the model splices the projected patch
features there. It is not a vocabulary entry, so the embedding table keeps the size of the
original checkpoints."""


def individual_seg_tokens(count: int) -> list[str]:
    """Names of the per-slot ``[SEGnnn]`` tokens of the individual-embedding ablation."""
    return [f"[SEG{index:03d}]" for index in range(count)]
