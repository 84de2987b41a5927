"""Short pretraining of the tiny components, standing in for the pretrained checkpoints of the
real recipe (SAM trained on SA-1B, LLaVA trained on image-text data).

GSVA starts from a segmentation model that already segments and an MLLM that already sees. The
tiny demo has no downloads, so it first makes both, from the synthetic set's per-object labels
(not from its referring expressions):

- SAM: image encoder + decoder trained to segment "all objects of colour c" from a learned
  prompt embedding per colour (and the union of two colours from the sum of their prompts);
  saved as a segment_anything ``.pth`` state dict.
- The MLLM (``model.backbone``: a LLaVA, or a Qwen2.5-VL): a BPE tokenizer trained on the prompt
  vocabulary; the vision tower trained so that each image feature tells which colours cover its
  patch and which the image holds; then, the tower frozen, the LLM (+ LLaVA's projector) trained on
  "What colours are in this image?" and "Which of these colours are in this image: …?" (answered
  name by name, "red: [YES], blue: [NO]."); saved as the checkpoint of its kind (the original
  LLaVA layout with its CLIP tower, or a Qwen2.5-VL directory with a ChatML tokenizer).

GSVA training then loads both through the same loaders that read real checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gsva.atomic import write_torch_atomic
from gsva.config import Config, ConfigError
from gsva.text.conversation import CHAT_TEMPLATE, ConversationFormat, get_template
from gsva.data.refer_seg.reader import ReferIndex
from gsva.text.prompts import ANSWERS, EVAL_QUESTIONS, TRAIN_QUESTIONS, format_slots, question_text
from gsva.data.samples import pad_sam_images, pad_sequences
from gsva.config_demo import SyntheticSpec
from gsva.demo.synthetic import DATASET_NAME, attributes_path, render_image
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.tokenizer import train_tiny_bpe
from gsva.data.transforms import clip_resize_crop, read_rgb, sam_resize
from gsva.model.losses import bce_per_mask, dice_per_mask
from gsva.model.mask_head import build_visual_model, mask_head_of
from gsva.model.backbones import IMAGE_MARKERS, Backbone
from gsva.model.backbones.qwen2_5_vl import QWEN_SPECIAL_TOKENS, build_tiny_qwen2_5_vl, make_chat_tokenizer
from gsva.model.mllm import LlavaModel, build_tiny_llava, save_llava_checkpoint
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER

LOGGER = logging.getLogger(__name__)
COLOUR_QUESTION = "What colours are in this image?"
CHECKLIST_QUESTION = "Which of these colours are in this image: {names}?"
YES_TOKEN, NO_TOKEN = "[YES]", "[NO]"
"""Checklist answers are "red: [YES], blue: [NO]." with atomic answer tokens."""
MAX_CHECKLIST = 5


@dataclass
class ComponentPaths:
    sam_checkpoint: Path
    sam2_dir: Path
    llava_dir: Path
    clip_dir: Path

    @classmethod
    def under(cls, root: str | Path) -> "ComponentPaths":
        root = Path(root)
        return cls(root / "sam_tiny.pth", root / "sam2_tiny", root / "llava_tiny", root / "clip_tiny")

    def mask_model(self, mask_decoder: str) -> Path:
        """Where the mask model of ``model.mask_decoder`` is saved (written last: it marks the
        components complete)."""
        return self.sam2_dir / "config.json" if mask_decoder == "sam2" else self.sam_checkpoint

    def complete(self, mask_decoder: str) -> bool:
        return self.mask_model(mask_decoder).is_file() and (self.llava_dir / "config.json").is_file()


@dataclass
class ColourData:
    """The training split held in memory for component pretraining."""

    sam_images: torch.Tensor  # (N, 3, S, S) uint8, zero-padded
    clip_images: torch.Tensor  # (N, 3, C, C) uint8
    colour_masks: torch.Tensor  # (N, K, H, W) uint8: union of the objects of each colour
    present: torch.Tensor  # (N, K) bool
    resized_size: tuple[int, int]
    original_size: tuple[int, int]
    spec: SyntheticSpec
    """The spec the split was drawn from (fresh images of the same distribution are drawn from it)."""

    @property
    def colours(self) -> list[str]:
        """The palette, in the order of ``present`` and ``colour_masks``."""
        return list(self.spec.colours)


def load_colour_data(cfg: Config, split: str) -> ColourData:
    """Read a split of the synthetic set and its per-object colour labels."""
    root = Path(cfg.data.dataset_dir)
    attributes = json.loads(attributes_path(root).read_text())
    spec = SyntheticSpec(**attributes["spec"])
    index = ReferIndex(root, DATASET_NAME)
    sam_images, clip_images, masks, present = [], [], [], []
    resized_size = original_size = (0, 0)
    for image_id in tqdm(index.image_ids(split), desc=f"load {split} images", leave=False):
        image = read_rgb(str(index.image_path(image_id)))
        sam_image = sam_resize(image, cfg.data.sam_image_size)
        resized_size = tuple(sam_image.shape[1:])
        sam_images.append(sam_image)
        clip_images.append(clip_resize_crop(image, cfg.data.clip_image_size))
        original_size = image.shape[:2]
        objects = attributes["images"][str(image_id)]
        per_colour = []
        for colour in spec.colours:
            ann_ids = [obj["ann_id"] for obj in objects if obj["colour"] == colour]
            per_colour.append(index.target_mask(image_id, ann_ids))
        masks.append(np.stack(per_colour))
        present.append([any(obj["colour"] == colour for obj in objects) for colour in spec.colours])
    return ColourData(
        sam_images=pad_sam_images(sam_images, cfg.data.sam_image_size),
        clip_images=torch.stack(clip_images),
        colour_masks=torch.from_numpy(np.stack(masks).astype(np.uint8)),
        present=torch.tensor(present),
        resized_size=resized_size,
        original_size=tuple(original_size),
        spec=spec,
    )


class ComponentQualityError(RuntimeError):
    """A component stage measured a held-out quality below its floor: GSVA would not learn on it."""


def check_quality(stage: str, measure: str, value: float, floor: float, floor_key: str, steps_key: str) -> None:
    """Log a stage's held-out measurement; ``ComponentQualityError`` when it is below ``floor``."""
    LOGGER.info("%s: held-out %s %.3f (floor %.2f, %s)", stage, measure, value, floor, floor_key)
    if value < floor:
        raise ComponentQualityError(
            f"{stage} did not learn enough: held-out {measure} {value:.3f} is below the floor {floor:.2f} "
            f"({floor_key}). GSVA cannot learn on this component. Give the stage more steps ({steps_key}) "
            "and run again: no component was saved, so every stage runs afresh."
        )


class OneCycleUpdater:
    """AdamW with a one-cycle learning rate over ``steps``; ``update(loss)`` does one step."""

    def __init__(self, parameters: list[torch.nn.Parameter], lr: float, steps: int) -> None:
        self.optimizer = torch.optim.AdamW(parameters, lr=lr)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, lr, total_steps=steps, pct_start=0.1)

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()


def _sam_queries(present: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries for a batch: every present colour alone, plus per image one pair (a present colour
    and any other colour) whose target is the union. present: (B, K) bool.
    Returns (query_to_image, first colour, second colour or -1), each (Q,), ordered by image."""
    singles = present.nonzero()
    images = torch.arange(present.shape[0])
    pair_first = torch.multinomial(present.float(), 1, generator=generator).squeeze(1)
    offset = torch.randint(1, present.shape[1], (present.shape[0],), generator=generator)
    pair_second = (pair_first + offset) % present.shape[1]
    query_to_image = torch.cat([singles[:, 0], images])
    first = torch.cat([singles[:, 1], pair_first])
    second = torch.cat([torch.full((len(singles),), -1), pair_second])
    order = torch.argsort(query_to_image, stable=True)
    return query_to_image[order], first[order], second[order]


def pretrain_sam(cfg: Config, data: ColourData, held_out: ColourData, generator: torch.Generator) -> torch.nn.Module:
    """Train a tiny mask model of ``model.mask_decoder`` (SAM, or SAM2) to segment every object of
    a prompted colour, then check its held-out mask IoU against ``components.min_sam_iou``."""
    sam = build_visual_model(replace(cfg.model, sam_checkpoint=None, sam2_path=None, sam_type="tiny"), cfg.data.sam_image_size)
    prompts = torch.nn.Embedding(len(data.colours), mask_head_of(sam, cfg.data.sam_image_size).prompt_dim)
    steps = cfg.components.sam_steps
    update = OneCycleUpdater(list(sam.parameters()) + list(prompts.parameters()), cfg.components.sam_lr, steps)
    progress = tqdm(range(steps), desc="pretrain SAM")
    for _ in progress:
        images = torch.randint(0, data.sam_images.shape[0], (cfg.components.batch_size,), generator=generator)
        query_to_image, first, second = _sam_queries(data.present[images], generator)
        queries = prompts(first) + torch.where((second >= 0).unsqueeze(1), prompts(second.clamp(min=0)), 0.0)
        logits = _sam_mask_logits(cfg, sam, data, images, queries, query_to_image)
        masks = data.colour_masks[images[query_to_image]]
        targets = torch.maximum(masks[torch.arange(len(first)), first], masks[torch.arange(len(first)), second.clamp(min=0)] * (second >= 0).view(-1, 1, 1)).float()
        loss = bce_per_mask(logits, targets).mean() + dice_per_mask(logits, targets).mean()
        update(loss)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    iou = sam_held_out_iou(cfg, sam, prompts, held_out)
    check_quality("pretrain SAM", "colour-prompt mask IoU", iou, cfg.components.min_sam_iou,
                  "components.min_sam_iou", "components.sam_steps")
    return sam


def _sam_mask_logits(
    cfg: Config, sam: torch.nn.Module, data: ColourData, images: torch.Tensor, queries: torch.Tensor, query_to_image: torch.Tensor
) -> torch.Tensor:
    """(Q, C) prompt embeddings on ``images`` (B,) of ``data`` -> (Q, H, W) mask logits, the image
    encoder trained too."""
    head = mask_head_of(sam, cfg.data.sam_image_size)
    features = head.encode(data.sam_images[images], [data.resized_size] * len(images), trainable=True)
    return head.postprocess(head.decode(features, queries, query_to_image), data.resized_size, data.original_size)


@torch.no_grad()
def sam_held_out_iou(cfg: Config, sam: torch.nn.Module, prompts: torch.nn.Embedding, held_out: ColourData) -> float:
    """Mean mask IoU over every (held-out image, colour present in it) prompt."""
    ious = []
    for images in torch.arange(held_out.sam_images.shape[0]).split(cfg.components.batch_size):
        query_to_image, colour = held_out.present[images].nonzero().unbind(1)
        predicted = _sam_mask_logits(cfg, sam, held_out, images, prompts(colour), query_to_image) > 0
        targets = held_out.colour_masks[images[query_to_image], colour] > 0
        union = (predicted | targets).flatten(1).sum(1)
        ious.append((predicted & targets).flatten(1).sum(1) / union.clamp(min=1))
    return torch.cat(ious).mean().item()


def tokenizer_corpus(colours: list[str], conversation: str) -> list[str]:
    """Texts the tiny BPE is trained on: every prompt form the demo can produce (with a chat
    template, which needs the tokenizer being trained, written in LLaVA's conversation form: the
    words are the same, the chat markers are atomic special tokens)."""
    template = get_template("llava_v1" if conversation == CHAT_TEMPLATE else conversation)
    rng = random.Random(0)
    texts = [template.render([(COLOUR_QUESTION, "red, blue.")]).text]
    phrasings = ["{c}", "{c} shapes", "{c} objects", "anything {c}", "{c} and {d}", "{c} and {d} shapes"]
    for _ in range(400):
        names = [rng.choice(phrasings).format(c=rng.choice(colours), d=rng.choice(colours)) for _ in range(3)]
        exists = [rng.random() < 0.7 for _ in names]
        question = rng.choice(TRAIN_QUESTIONS + tuple(EVAL_QUESTIONS.values()))
        answer = rng.choice(ANSWERS).format(slots=format_slots(names, exists))
        texts.append(template.render([(question_text(names, question), answer)]).text)
        texts.append(CHECKLIST_QUESTION.format(names=", ".join(colours)) + " " + ", ".join(f"{c}: {YES_TOKEN}, {c}: {NO_TOKEN}" for c in colours))
    return texts


def _colour_names(colours: list[str], rng: random.Random) -> tuple[str, set[str]]:
    """A colour or a pair "c1 and c2", and the colours it names."""
    first = rng.choice(colours)
    if rng.random() < 0.2:
        second = rng.choice([c for c in colours if c != first])
        return f"{first} and {second}", {first, second}
    return first, {first}


def _llava_conversation(colours: list[str], flags: list[bool], rng: random.Random) -> tuple[str, str]:
    """About an image holding the ``colours`` whose ``flags`` are set: either "what colours" or a
    checklist answered name by name: "red: [YES], blue: [NO]."."""
    present = {colour for colour, flag in zip(colours, flags) if flag}
    if rng.random() < 0.25:
        return COLOUR_QUESTION, ", ".join(c for c in colours if c in present) + "."
    names = [_colour_names(colours, rng) for _ in range(rng.randint(1, MAX_CHECKLIST))]
    answer = ", ".join(f"{name}: {YES_TOKEN if named & present else NO_TOKEN}" for name, named in names) + "."
    return CHECKLIST_QUESTION.format(names=", ".join(name for name, _ in names)), answer


def pretrain_clip(cfg: Config, data: ColourData, held_out: ColourData, backbone: Backbone, generator: torch.Generator) -> None:
    """Train the tiny vision tower (in place: ``backbone.vision_encoder``) so that each image
    feature the LLM reads (LLaVA: CLIP's layer ``select_layer``; Qwen2.5-VL: the merger's output) tells which colours cover that patch and which colours the whole image holds,
    as a real CLIP's patch tokens carry the image's content beside their own. Then check both on
    the held-out images: ``components.min_clip_patch_accuracy`` and
    ``components.min_clip_image_accuracy``.

    The image's colours in every patch are what lets the LLaVA stage learn within its steps: "is
    there red?" becomes a read of any patch instead of a search for the red ones (LLaVA stage of
    600 steps: held-out checklist accuracy 0.54 and 0.86 on two seeds with the patch's colours
    alone, 0.99 to 1.00 on four seeds with the image's colours too)."""
    tower = backbone.vision_encoder
    head = torch.nn.Linear(backbone.vision_feature_shape(cfg.data.clip_image_size)[1], 2 * len(data.colours))
    steps = cfg.components.clip_steps
    update = OneCycleUpdater(list(tower.parameters()) + list(head.parameters()), cfg.components.clip_lr, steps)
    progress = tqdm(range(steps), desc="pretrain CLIP")
    for _ in progress:
        images = torch.randint(0, data.clip_images.shape[0], (cfg.components.batch_size,), generator=generator)
        logits, targets = _patch_colour_logits(backbone, head, data, images)
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        update(loss)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    patch_correct, image_correct = [], []
    with torch.no_grad():
        for images in torch.arange(held_out.clip_images.shape[0]).split(cfg.components.batch_size):
            logits, targets = _patch_colour_logits(backbone, head, held_out, images)
            correct = (logits > 0) == (targets > 0)
            patch_correct.append(correct[..., : len(data.colours)].all(-1).flatten())
            image_correct.append(correct[..., len(data.colours) :].all(-1).flatten())
    check_quality("pretrain CLIP", "per-patch colour accuracy", torch.cat(patch_correct).float().mean().item(),
                  cfg.components.min_clip_patch_accuracy, "components.min_clip_patch_accuracy", "components.clip_steps")
    check_quality("pretrain CLIP", "image colour accuracy read from each patch", torch.cat(image_correct).float().mean().item(),
                  cfg.components.min_clip_image_accuracy, "components.min_clip_image_accuracy", "components.clip_steps")


def _patch_colour_logits(
    backbone: Backbone, head: torch.nn.Linear, data: ColourData, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image feature of ``images`` (B,) (a square grid of P, each over its patch): logits
    (B, P, 2K) from the features the LLM reads, and their targets (B, P, 2K): the first K are 1
    where the colour covers part of the patch, the last K are 1 where the colour is anywhere in the
    image (the same for every patch)."""
    features = backbone.vision_features(data.clip_images[images])
    grid = math.isqrt(features.shape[1])
    logits = head(features)
    in_patch = F.adaptive_max_pool2d(data.colour_masks[images].float(), grid).flatten(2).transpose(1, 2)
    in_image = data.present[images].float().unsqueeze(1).expand_as(in_patch)
    return logits, torch.cat([in_patch, in_image], dim=-1)


def draw_clip_images(spec: SyntheticSpec, clip_image_size: int, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images freshly drawn from ``spec`` as CLIP inputs (count, 3, C, C) uint8, and
    which of ``spec.colours`` each holds (count, K) bool."""
    clip_images, present = [], []
    for _ in range(count):
        image, objects = render_image(rng, spec)
        clip_images.append(clip_resize_crop(image, clip_image_size))
        held = {item.colour for item in objects}
        present.append([colour in held for colour in spec.colours])
    return torch.stack(clip_images), torch.tensor(present)


def _answer_logits(
    backbone: Backbone,
    tokenizer,
    prompts: DemoPrompts,
    clip_images: torch.Tensor,
    conversations: list[tuple[str, str]],
    patch_order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (question, answer) conversations, one about each of ``clip_images``
    (B, 3, C, C) uint8: the logits (A, V) at the A supervised answer positions and their target
    ids (A,). ``patch_order`` (B, P), when given, reorders each image's P patch features before
    they are spliced in."""
    encoded = [
        tokenize_conversation(prompts.template.render([(prompts.image_marker + "\n" + question, answer)]), tokenizer)
        for question, answer in conversations
    ]
    input_ids, labels, mask = pad_sequences(
        [item.input_ids for item in encoded], [item.labels for item in encoded], tokenizer.pad_token_id
    )
    features = backbone.mm_projector(backbone.vision_features(clip_images))
    if patch_order is not None:
        features = features.gather(1, patch_order.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    spliced = backbone.splice(input_ids, mask, features, torch.arange(len(encoded)), labels)
    hidden = backbone.last_hidden_states(spliced.inputs_embeds, spliced.attention_mask, spliced.token_ids)
    targets = spliced.labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    return backbone.lm_logits(hidden[:, :-1][supervised]), targets[supervised]


def pretrain_llava(
    cfg: Config, data: ColourData, held_out: ColourData, tokenizer, generator: torch.Generator
) -> Backbone:
    """Build the tiny MLLM of ``model.backbone``, pretrain its vision tower, then train the LLM (+
    LLaVA's projector) with the tower frozen (as LLaVA is trained) to
    answer colour questions, then check its held-out checklist accuracy against
    ``components.min_checklist_accuracy``.

    Every step draws fresh images from the dataset's spec (as LLaVA was pretrained on other images
    than the ones GSVA is finetuned on), and their patch features come in a random order: which
    colours an image holds does not depend on where. The LLM can only lower its loss by finding the
    colours by content; on a fixed set of images it could memorise them instead (a low training
    loss with a held-out checklist accuracy of 0.73 on one seed)."""
    backbone = build_tiny_backbone(cfg, tokenizer)
    pretrain_clip(cfg, data, held_out, backbone, generator)
    backbone.vision_encoder.requires_grad_(False)
    trained = list(backbone.language_model.parameters()) + list(backbone.mm_projector.parameters())
    steps = cfg.components.llava_steps
    update = OneCycleUpdater(trained, cfg.components.llava_lr, steps)
    prompts = demo_prompts(cfg, tokenizer)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    image_rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
    patches = backbone.vision_feature_shape(cfg.data.clip_image_size)[0]
    progress = tqdm(range(steps), desc="pretrain LLaVA")
    for _ in progress:
        clip_images, present = draw_clip_images(data.spec, cfg.data.clip_image_size, cfg.components.batch_size, image_rng)
        conversations = [_llava_conversation(data.colours, flags, rng) for flags in present.tolist()]
        patch_order = torch.rand(len(conversations), patches, generator=generator).argsort(dim=1)
        logits, targets = _answer_logits(backbone, tokenizer, prompts, clip_images, conversations, patch_order)
        loss = F.cross_entropy(logits, targets)
        update(loss)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    accuracy = checklist_held_out_accuracy(cfg, backbone, tokenizer, held_out)
    check_quality("pretrain LLaVA", "checklist accuracy (mean of present and absent colours)", accuracy,
                  cfg.components.min_checklist_accuracy, "components.min_checklist_accuracy", "components.llava_steps")
    return backbone


@torch.no_grad()
def checklist_held_out_accuracy(cfg: Config, backbone: Backbone, tokenizer, held_out: ColourData) -> float:
    """Every colour asked of every held-out image (checklists of up to ``MAX_CHECKLIST`` single
    colours, in a fixed shuffled order): the [YES]/[NO] decision read off the teacher-forced
    logits. Returns the mean of the accuracies on present and on absent colours (balanced: absent
    colours are the majority)."""
    prompts = demo_prompts(cfg, tokenizer)
    yes, no = tokenizer.convert_tokens_to_ids([YES_TOKEN, NO_TOKEN])
    rng = random.Random(0)
    correct = {True: [], False: []}
    images = list(range(held_out.clip_images.shape[0]))
    for first in range(0, len(images), cfg.components.batch_size):
        batch_images, conversations = [], []
        for image in images[first : first + cfg.components.batch_size]:
            present = dict(zip(held_out.colours, held_out.present[image].tolist()))
            order = rng.sample(held_out.colours, len(held_out.colours))
            for start in range(0, len(order), MAX_CHECKLIST):
                names = order[start : start + MAX_CHECKLIST]
                answer = ", ".join(f"{name}: {YES_TOKEN if present[name] else NO_TOKEN}" for name in names) + "."
                conversations.append((CHECKLIST_QUESTION.format(names=", ".join(names)), answer))
                batch_images.append(image)
        logits, targets = _answer_logits(backbone, tokenizer, prompts, held_out.clip_images[batch_images], conversations)
        decisions = targets.eq(yes) | targets.eq(no)
        said_yes = logits[decisions][:, yes] > logits[decisions][:, no]
        truth = targets[decisions] == yes
        for is_present in (True, False):
            correct[is_present].append((said_yes == truth)[truth == is_present])
    return 0.5 * sum(torch.cat(correct[flag]).float().mean().item() for flag in (True, False))


TINY_BACKBONES = ("llava", "qwen2_5_vl")
"""``model.backbone`` kinds the tiny components can be (``auto`` = llava)."""


def tiny_backbone_kind(cfg: Config) -> str:
    """The kind of MLLM the components stage builds: ``model.backbone`` (``auto`` = llava)."""
    kind = "llava" if cfg.model.backbone == "auto" else cfg.model.backbone
    if kind not in TINY_BACKBONES:
        raise ConfigError(f"model.backbone={kind!r}: the tiny components are one of {list(TINY_BACKBONES)}")
    return kind


def train_tiny_tokenizer(cfg: Config, colours: list[str], directory: Path):
    """The tiny BPE of the demo's prompts, saved in ``directory``: LLaMA's conventions for a
    LLaVA, Qwen's special tokens and ChatML template for a Qwen2.5-VL."""
    qwen = tiny_backbone_kind(cfg) == "qwen2_5_vl"
    extra = (YES_TOKEN, NO_TOKEN) + (QWEN_SPECIAL_TOKENS if qwen else ())
    tokenizer = train_tiny_bpe(tokenizer_corpus(colours, cfg.data.conversation), cfg.model.tiny.vocab_size, directory, extra_tokens=extra)
    return make_chat_tokenizer(tokenizer, directory) if qwen else tokenizer


def build_tiny_backbone(cfg: Config, tokenizer) -> Backbone:
    """A randomly initialised tiny MLLM of ``model.backbone`` (``tiny_backbone_kind``)."""
    if tiny_backbone_kind(cfg) == "qwen2_5_vl":
        return build_tiny_qwen2_5_vl(cfg.model.tiny, tokenizer, cfg.data.clip_image_size)
    return build_tiny_llava(cfg.model.tiny, len(tokenizer), cfg.data.clip_image_size, use_im_start_end=False)


@dataclass(frozen=True)
class DemoPrompts:
    """How the components stage writes its conversations: the template and the image marker."""

    template: ConversationFormat
    image_marker: str


def demo_prompts(cfg: Config, tokenizer) -> DemoPrompts:
    """``data.conversation``'s template (a chat template: ``tokenizer``'s) and the backbone's image
    marker (LLaVA: the bare placeholder)."""
    marker = IMAGE_MARKERS.get(tiny_backbone_kind(cfg), IMAGE_PLACEHOLDER)
    return DemoPrompts(get_template(cfg.data.conversation, tokenizer), marker)


def prepare_components(cfg: Config) -> ComponentPaths:
    """Pretrain and save the tiny SAM and LLaVA under ``cfg.components.output_dir`` if absent.
    Each stage measures its held-out quality on ``components.held_out_split`` and stops the run with
    ``ComponentQualityError`` when it is below its floor (no component is saved then)."""
    paths = ComponentPaths.under(cfg.components.output_dir)
    if paths.complete(cfg.model.mask_decoder):
        return paths
    with torch.random.fork_rng(devices=[]):  # the components are a function of the config alone
        torch.manual_seed(cfg.run.seed)
        _pretrain_and_save(cfg, paths)
    return paths


def _pretrain_and_save(cfg: Config, paths: ComponentPaths) -> None:
    start = time.time()
    generator = torch.Generator().manual_seed(cfg.run.seed)
    data = load_colour_data(cfg, cfg.data.train_split)
    held_out = load_colour_data(cfg, cfg.components.held_out_split)
    sam = pretrain_sam(cfg, data, held_out, generator)
    paths.sam_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer(cfg, data.colours, paths.llava_dir)
    backbone = pretrain_llava(cfg, data, held_out, tokenizer, generator)
    if isinstance(backbone, LlavaModel):
        save_llava_checkpoint(backbone, paths.llava_dir, paths.clip_dir)
    else:
        backbone.save_pretrained(paths.llava_dir)
    if cfg.model.mask_decoder == "sam2":  # last: the mask model marks the components complete
        sam.save_pretrained(str(paths.sam2_dir))
    else:
        write_torch_atomic(paths.sam_checkpoint, sam.state_dict())
    LOGGER.info("tiny components ready in %.0fs", time.time() - start)
