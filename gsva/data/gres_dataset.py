"""Generalized referring segmentation samples (gRefCOCO format) with GSVA prompts.

Training: each item is one image with up to ``num_classes_per_sample`` of its expressions drawn at
random (at least one with a target: all-absent samples are never produced), one conversation,
random question/answer phrasing. Evaluation: one conversation per image naming ALL its
expressions with a fixed question, answered with the ground-truth slots (teacher forcing needs
them; the generate protocol cuts the answer off).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from gsva.data.conversation import ConversationTemplate
from gsva.data.refer import ReferIndex, ReferringExpression
from gsva.data.prompts import ANSWERS, format_slots, question_text, sample_train_phrasing
from gsva.data.samples import ConversationSample, ImageSample
from gsva.data.tokenize import tokenize_conversation
from gsva.data.transforms import clip_resize_crop, read_rgb, sam_resize
from gsva.special_tokens import IM_END_TOKEN, IM_START_TOKEN, IMAGE_PLACEHOLDER


@dataclass(frozen=True)
class PromptSettings:
    template: ConversationTemplate
    seg_tokens: list[str]
    """Token of each slot position: one shared ``[SEG]``, or the individual ones (slot i uses i mod N)."""
    use_im_start_end: bool
    eval_question: str = "Please segment {objs} in this image."

    @property
    def image_marker(self) -> str:
        if self.use_im_start_end:
            return IM_START_TOKEN + IMAGE_PLACEHOLDER + IM_END_TOKEN
        return IMAGE_PLACEHOLDER

    def slot_tokens(self, count: int) -> list[str]:
        return [self.seg_tokens[index % len(self.seg_tokens)] for index in range(count)]


class GresDataset(Dataset):
    """Items are ``ImageSample`` objects; ``set_epoch`` changes the training draw."""

    def __init__(
        self,
        index: ReferIndex,
        split: str,
        tokenizer: PreTrainedTokenizerBase,
        prompts: PromptSettings,
        sam_image_size: int,
        clip_image_size: int,
        train: bool,
        num_classes_per_sample: int,
        seed: int = 0,
    ) -> None:
        self.index = index
        self.split = split
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.sam_image_size = sam_image_size
        self.clip_image_size = clip_image_size
        self.train = train
        self.num_classes_per_sample = num_classes_per_sample
        self.seed = seed
        self.epoch = 0
        image_ids = index.image_ids(split)
        if train:
            image_ids = [i for i in image_ids if any(not e.no_target for e in index.expressions(i, split))]
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _choose_expressions(self, expressions: list[ReferringExpression], rng: random.Random) -> list[ReferringExpression]:
        count = min(self.num_classes_per_sample, len(expressions))
        chosen = rng.sample(expressions, count)
        if all(e.no_target for e in chosen):
            chosen[rng.randrange(count)] = rng.choice([e for e in expressions if not e.no_target])
        return chosen

    def __getitem__(self, item: int) -> ImageSample:
        image_id = self.image_ids[item]
        record = self.index.image(image_id)
        image_path = str(self.index.image_path(image_id))
        image = read_rgb(image_path)
        if image.shape[:2] != (record.height, record.width):
            raise ValueError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but instances.json says "
                f"{record.width}x{record.height} (image id {image_id})"
            )
        expressions = self.index.expressions(image_id, self.split)
        if self.train:
            rng = random.Random(f"{self.seed}-{self.epoch}-{item}")
            expressions = self._choose_expressions(expressions, rng)
            question, answer = sample_train_phrasing(rng)
        else:
            question, answer = self.prompts.eval_question, ANSWERS[0]
        texts = [e.text for e in expressions]
        exists = [not e.no_target for e in expressions]
        slots = format_slots(texts, exists, self.prompts.slot_tokens(len(texts)))
        rendered = self.prompts.template.render(
            [(question_text(texts, question, self.prompts.image_marker), answer.format(slots=slots))]
        )
        tokens = tokenize_conversation(rendered, self.tokenizer)
        masks = np.stack([self.index.target_mask(image_id, e.ann_ids) for e in expressions]).astype(np.uint8)
        sam_image = sam_resize(image, self.sam_image_size)
        conversation = ConversationSample(
            input_ids=tokens.input_ids,
            labels=tokens.labels,
            target_masks=masks,
            slot_exists=exists,
            metadata={
                "image_id": image_id,
                "image_path": image_path,
                "expressions": texts,
                "kinds": [e.kind for e in expressions],
                "ann_ids": [list(e.ann_ids) for e in expressions],
                "sent_ids": [e.sent_id for e in expressions],
            },
        )
        return ImageSample(
            sam_image=sam_image,
            clip_image=clip_resize_crop(image, self.clip_image_size),
            original_size=(record.height, record.width),
            resized_size=(sam_image.shape[1], sam_image.shape[2]),
            conversations=[conversation],
        )
