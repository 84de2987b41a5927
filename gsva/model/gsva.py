"""GSVA: LLaVA + query projector + SAM (or SAM2) mask decoder, with ``[SEG]``/``[REJ]`` answer slots.

The mask query of a slot is the decoder's last hidden state at the position just BEFORE the slot
token (the state whose next-token prediction is the slot), after the image placeholder has been
expanded to its patch features. Three uses share one mask path:

- ``forward``: training losses (CE on the answer, BCE + DICE on the masks of ``[SEG]`` slots);
- ``predict_teacher_forced``: the paper's GRES protocol (decisions read off the ground-truth
  answer, masks from a second pass where every ``[REJ]`` is replaced by ``[SEG]``);
- ``generate``: free greedy decoding with KV cache, one mask per generated ``[SEG]``.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn
from transformers import Sam2Model

from gsva.batch import GsvaBatch
from gsva.config import EvalProtocol, ModelConfig
from gsva.model.losses import bce_per_mask, dice_per_mask, rejected_row_losses
from gsva.model.mask_head import ImageFeatures, MaskHead, mask_head_of
from gsva.model.mllm import LlavaModel
from gsva.model.query_projector import QueryProjector
from gsva.text.special_tokens import IGNORE_INDEX
from gsva.text.vocabulary import SlotTokenIds


PROTOCOLS: tuple[str, ...] = typing.get_args(EvalProtocol)
"""How a prediction is made (``GsvaModel.predict``): teacher-forced, the paper's protocol
(decisions read off the ground-truth answer, masks from a second pass with every ``[REJ]``
replaced by ``[SEG]``); generate, free greedy decoding."""


@dataclass
class GsvaLosses:
    total: torch.Tensor
    ce: torch.Tensor
    bce: torch.Tensor
    dice: torch.Tensor


@dataclass
class SlotPredictions:
    """Prediction for the answer slots of one conversation."""

    rejected: list[bool]
    masks: torch.Tensor
    """(T, H, W) bool at the original image size (a mask for every slot, rejected or not)."""
    text: str = ""
    parse_failures: int = 0


class GsvaModel(nn.Module):
    def __init__(
        self,
        mllm: LlavaModel,
        sam: Sam | Sam2Model,
        token_ids: SlotTokenIds,
        cfg: ModelConfig,
        sam_image_size: int,
    ) -> None:
        super().__init__()
        self.mllm = mllm
        self.visual_model = sam
        self.query_projector = QueryProjector(mllm.hidden_size, mask_head_of(sam, sam_image_size).prompt_dim)
        self.token_ids = token_ids
        self.cfg = cfg
        self.sam_image_size = sam_image_size
        self.register_buffer("seg_id_tensor", torch.tensor(token_ids.seg_ids), persistent=False)
        self.frozen_in_weights: set[str] = set()
        """Frozen parameters that no checkpoint of the config holds (a random projector, or frozen
        weights read from a GSVA weights file): saved with the trainable weights, and required of
        a weights file loaded into this model."""

    # ----------------------------------------------------------------- shared pieces
    @property
    def mask_head(self) -> MaskHead:
        """The mask decoder of ``visual_model`` (``model.mask_decoder``) behind ``MaskHead``."""
        return mask_head_of(self.visual_model, self.sam_image_size)

    def encode_sam_images(self, batch: GsvaBatch) -> ImageFeatures:
        """(B, 3, S, S) uint8 -> the frozen mask-decoder image encoder's features: for SAM, (B, C,
        S/16, S/16) embeddings; for SAM2, ``Sam2Features`` (``MaskHead.encode``)."""
        return self.mask_head.encode(batch.sam_images, batch.resized_sizes)

    def _image_inputs(self, batch: GsvaBatch) -> tuple[ImageFeatures, torch.Tensor]:
        """Mask-decoder image features (SAM: (B, C, h, w) embeddings) and projected CLIP features
        (B, P, D): the frozen encoders run only when the batch carries no cached features."""
        sam = batch.sam_features if batch.sam_features is not None else self.encode_sam_images(batch)
        clip = batch.clip_features if batch.clip_features is not None else self.mllm.vision_features(batch.clip_images)
        return sam, self.mllm.mm_projector(clip)

    def _hidden_states(self, batch: GsvaBatch, input_ids: torch.Tensor, conv_to_image: torch.Tensor, image_features: torch.Tensor):
        """Decoder states of right-padded rows. Padding only ever FOLLOWS a row's real tokens, so the
        causal mask alone keeps every real token from seeing it: no padding mask is passed, SDPA
        runs its causal kernel and the mask builder never reads the mask back from the device. The
        states at padding positions are meaningless and never used."""
        attention_mask = batch.attention_mask.repeat(input_ids.shape[0] // batch.attention_mask.shape[0], 1)
        spliced = self.mllm.splice(input_ids, attention_mask, image_features, conv_to_image)
        hidden = self.mllm.last_hidden_states(spliced.inputs_embeds, None, spliced.token_ids)
        return spliced, hidden

    def _is_seg(self, token_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(token_ids, self.seg_id_tensor)

    def _is_slot(self, token_ids: torch.Tensor) -> torch.Tensor:
        slot = self._is_seg(token_ids)
        if self.token_ids.rej_id is not None:
            slot = slot | (token_ids == self.token_ids.rej_id)
        return slot

    def _masks_from_states(
        self,
        states: torch.Tensor,
        query_to_image: torch.Tensor,
        counts: list[int],
        image_embeddings: ImageFeatures,
        batch: GsvaBatch,
    ) -> list[torch.Tensor]:
        """states: (Q, D) ordered by image, ``counts[b]`` of them for image b -> per image with
        queries, (Q_b, H_b, W_b) mask logits at the original image size."""
        head = self.mask_head
        queries = self.query_projector(states)
        low_res = decode_masks(head, image_embeddings, queries, query_to_image)
        return [
            postprocess_masks(head, group, batch.resized_sizes[image], batch.original_sizes[image])
            for image, group in enumerate(torch.split(low_res, counts))
            if counts[image] > 0
        ]

    # ----------------------------------------------------------------- training
    def forward(self, batch: GsvaBatch) -> GsvaLosses:
        """Losses of one batch: ``ce_w·CE + bce_w·BCE + dice_w·DICE``.

        Every position and count comes from the batch's host-computed index fields, so the
        forward never reads a device tensor back (no host synchronisation).
        """
        image_embeddings, image_features = self._image_inputs(batch)
        _, hidden = self._hidden_states(batch, batch.input_ids, batch.conv_to_image, image_features)
        patches = image_features.shape[1]
        answer_cols = self.mllm.spliced_positions(batch.input_ids, batch.answer_rows, batch.answer_cols, patches)
        logits = self.mllm.lm_logits(hidden[batch.answer_rows, answer_cols])
        ce = F.cross_entropy(logits.float(), batch.answer_targets)

        seg_cols = self.mllm.spliced_positions(batch.input_ids, batch.seg_rows, batch.seg_cols, patches)
        counts = [masks.shape[0] for masks in batch.seg_masks]
        mask_logits = self._masks_from_states(
            hidden[batch.seg_rows, seg_cols], batch.conv_to_image[batch.seg_rows], counts, image_embeddings, batch
        )
        bce, dice = self._mask_losses(mask_logits, batch, hidden.new_zeros((), dtype=torch.float32))
        total = self.cfg.ce_loss_weight * ce + self.cfg.bce_loss_weight * bce + self.cfg.dice_loss_weight * dice
        return GsvaLosses(total=total, ce=ce.detach(), bce=bce.detach(), dice=dice.detach())

    def _mask_losses(
        self, mask_logits: list[torch.Tensor], batch: GsvaBatch, zero: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mask_logits: per image with [SEG] targets, (Q_b, H_b, W_b) logits in query order.

        ``authors``: [REJ] rows count as all-zero logits against empty masks (constant terms) and
        the sums are divided by all slots. ``seg_only``: divided by the [SEG] targets only.
        """
        wanted = [masks for masks in batch.seg_masks if masks.shape[0] > 0]
        bce_sum = sum((bce_per_mask(p.float(), w.float()).sum() for p, w in zip(mask_logits, wanted)), zero)
        dice_sum = sum((dice_per_mask(p.float(), w.float()).sum() for p, w in zip(mask_logits, wanted)), zero)
        num_seg = sum(masks.shape[0] for masks in wanted)
        if self.cfg.mask_loss_normalization == "seg_only":
            return bce_sum / max(num_seg, 1), dice_sum / max(num_seg, 1)
        for rejected, (height, width) in zip(batch.rejected_per_image, batch.original_sizes):
            if rejected:
                bce_row, dice_row = rejected_row_losses(height, width)
                bce_sum = bce_sum + rejected * bce_row
                dice_sum = dice_sum + rejected * dice_row
        num_slots = num_seg + sum(batch.rejected_per_image)
        return bce_sum / max(num_slots, 1), dice_sum / max(num_slots, 1)

    # ----------------------------------------------------------------- inference
    def _all_seg_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Replace every [REJ] slot by the [SEG] token of its slot position."""
        if self.token_ids.rej_id is None:
            return input_ids
        slot = self._is_slot(input_ids)
        slot_rank = (slot.long().cumsum(1) - 1).clamp(min=0) % len(self.token_ids.seg_ids)
        seg_for_slot = self.seg_id_tensor[slot_rank]
        return torch.where(input_ids == self.token_ids.rej_id, seg_for_slot, input_ids)

    @torch.no_grad()
    def predict(
        self, batch: GsvaBatch, protocol: str, max_new_tokens: int = 128, tokenizer=None
    ) -> list[SlotPredictions]:
        """One ``SlotPredictions`` per conversation of ``batch`` under ``protocol`` (``PROTOCOLS``):
        the one dispatch that evaluation, inference and the benchmarks share. ``max_new_tokens``
        and ``tokenizer`` (to decode the answer text) apply to ``generate``."""
        if protocol == "teacher-forced":
            return self.predict_teacher_forced(batch)
        if protocol == "generate":
            return self.generate(batch, max_new_tokens, tokenizer)
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")

    def predict_teacher_forced(self, batch: GsvaBatch) -> list[SlotPredictions]:
        """The paper's protocol, both passes stacked into one forward of 2N conversations."""
        rows = batch.input_ids.shape[0]
        image_embeddings, image_features = self._image_inputs(batch)
        stacked = torch.cat([batch.input_ids, self._all_seg_inputs(batch.input_ids)])
        spliced, hidden = self._hidden_states(batch, stacked, batch.conv_to_image.repeat(2), image_features)
        before_slot = self._is_slot(spliced.token_ids[:, 1:])
        first, second = before_slot[:rows], before_slot[rows:]
        truth = spliced.token_ids[:rows, 1:][first]
        argmax = self.mllm.lm_logits(hidden[:rows, :-1][first]).argmax(-1)
        if self.token_ids.rej_id is None:
            rejected = torch.zeros_like(truth, dtype=torch.bool)  # no [REJ]: every slot gets its mask
        else:
            truth_is_rej = truth == self.token_ids.rej_id
            rejected = torch.where(argmax == truth, truth_is_rej, ~truth_is_rej)
        query_conv = second.nonzero()[:, 0]
        query_to_image = batch.conv_to_image[query_conv]
        mask_groups = self._masks_from_states(
            hidden[rows:, :-1][second], query_to_image, _per_image(query_to_image, batch), image_embeddings, batch
        )
        return self._split_by_conversation(query_conv, rejected.tolist(), mask_groups, batch)

    def _split_by_conversation(
        self, query_conv: torch.Tensor, rejected: list[bool], mask_groups: list[torch.Tensor], batch: GsvaBatch
    ) -> list[SlotPredictions]:
        per_query = [mask > 0 for group in mask_groups for mask in group]
        counts = torch.bincount(query_conv, minlength=batch.input_ids.shape[0]).tolist()
        predictions, start = [], 0
        for conv, count in enumerate(counts):
            height, width = batch.original_sizes[int(batch.conv_to_image[conv])]
            masks = torch.stack(per_query[start : start + count]) if count else torch.zeros((0, height, width), dtype=torch.bool)
            predictions.append(SlotPredictions(rejected=rejected[start : start + count], masks=masks.cpu()))
            start += count
        return predictions

    @torch.no_grad()
    def generate(self, batch: GsvaBatch, max_new_tokens: int, tokenizer=None) -> list[SlotPredictions]:
        """Free greedy generation from the prompt (the answer in ``batch`` is cut off).

        The backbone decodes greedily with a KV cache (``generate_from_embeds``). Each
        generated slot token gets a mask from the hidden state that produced it; slots are
        matched to expressions in order, and missing slots count as rejected parse failures.
        """
        image_embeddings, image_features = self._image_inputs(batch)
        answer_start = (batch.labels != IGNORE_INDEX).long().argmax(1)
        prompt_mask = batch.attention_mask & (torch.arange(batch.input_ids.shape[1], device=answer_start.device) < answer_start.unsqueeze(1))
        spliced = self.mllm.splice(batch.input_ids, prompt_mask, image_features, batch.conv_to_image)
        generation = self.mllm.generate_from_embeds(
            spliced.inputs_embeds, spliced.attention_mask, spliced.token_ids, max_new_tokens, self.token_ids.eos_id, self.token_ids.pad_id
        )
        sequences, producing = generation.tokens, generation.states
        finished = (sequences == self.token_ids.eos_id).long().cumsum(1) > 0
        generated_slot = self._is_slot(sequences) & ~finished
        generated_seg = self._is_seg(sequences) & ~finished
        query_conv = generated_seg.nonzero()[:, 0]
        query_to_image = batch.conv_to_image[query_conv]
        mask_groups = self._masks_from_states(
            producing[generated_seg], query_to_image, _per_image(query_to_image, batch), image_embeddings, batch
        )
        per_query = iter([mask > 0 for group in mask_groups for mask in group])
        predictions = []
        for conv in range(sequences.shape[0]):
            height, width = batch.original_sizes[int(batch.conv_to_image[conv])]
            empty = torch.zeros((height, width), dtype=torch.bool, device=producing.device)
            generated = [token in self.token_ids.seg_ids for token in sequences[conv][generated_slot[conv]].tolist()]
            generated_masks = [next(per_query) for is_seg in generated if is_seg]
            slots = align_slots(generated, int(batch.slot_exists[conv].numel()))
            masks = [generated_masks[index] if index is not None else empty for index in slots.mask_index]
            predictions.append(
                SlotPredictions(
                    rejected=slots.rejected,
                    masks=torch.stack(masks).cpu() if masks else torch.zeros((0, height, width), dtype=torch.bool),
                    text=tokenizer.decode(sequences[conv][~finished[conv]]) if tokenizer is not None else "",
                    parse_failures=slots.parse_failures,
                )
            )
        return predictions


@dataclass(frozen=True)
class SlotAlignment:
    """A generated answer's slot tokens matched to the expected slots, in order."""

    rejected: list[bool]
    """Per expected slot: answered ``[REJ]``, or not answered at all."""
    mask_index: list[int | None]
    """Per expected slot: the index of its mask among the answer's generated ``[SEG]`` masks; None
    when it has none (rejected or missing)."""
    parse_failures: int
    """How many slots are missing or extra."""


def align_slots(generated: list[bool], expected: int) -> SlotAlignment:
    """Match the slot tokens of a generated answer (True = a ``[SEG]``, False = ``[REJ]``, in the
    order generated) to ``expected`` slots: the first ``expected`` answer them in order, extra
    ones are dropped, missing slots count as rejected; each missing or extra slot is a parse
    failure."""
    seg_index = [sum(generated[:position]) if is_seg else None for position, is_seg in enumerate(generated)]
    kept = list(zip(generated, seg_index))[:expected]
    missing = expected - len(kept)
    return SlotAlignment(
        rejected=[not is_seg for is_seg, _ in kept] + [True] * missing,
        mask_index=[index for _, index in kept] + [None] * missing,
        parse_failures=abs(expected - len(generated)),
    )


def decode_masks(
    head: MaskHead, features: ImageFeatures, queries: torch.Tensor, query_to_image: torch.Tensor
) -> torch.Tensor:
    """The decoding stage of every mask GSVA predicts (a module-level function, so that a trace of
    the stages can wrap it): (Q, C) queries, (Q,) image indices -> (Q, h', w') low-resolution logits."""
    return head.decode(features, queries, query_to_image)


def postprocess_masks(
    head: MaskHead, low_res: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """The postprocessing stage of every mask GSVA predicts (module-level, as ``decode_masks``):
    (Q, h', w') logits of one image -> (Q, H, W) at its original size."""
    return head.postprocess(low_res, resized_size, original_size)


def _per_image(query_to_image: torch.Tensor, batch: GsvaBatch) -> list[int]:
    """Queries per image (reads the device tensor back: inference only)."""
    return torch.bincount(query_to_image, minlength=batch.num_images).tolist()

