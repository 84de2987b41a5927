"""The query projector: LLM hidden state of a ``[SEG]`` slot -> SAM sparse prompt embedding."""

from __future__ import annotations

from torch import nn


class QueryProjector(nn.Sequential):
    """Linear(D, D) -> ReLU -> Linear(D, C) -> Dropout(0), as in GSVA/LISA (``text_hidden_fcs.0``).

    Input (Q, D) hidden states, output (Q, C) prompt embeddings.
    """

    def __init__(self, hidden_size: int, prompt_dim: int) -> None:
        super().__init__(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, prompt_dim),
            nn.Dropout(0.0),
        )
