"""Short pretraining of the tiny components, standing in for the pretrained checkpoints of the
real recipe (SAM trained on SA-1B, LLaVA trained on image-text data).

GSVA starts from a segmentation model that already segments and an MLLM that already sees. The
tiny demo has no downloads, so it first makes both, from the synthetic set's per-object labels
(not from its referring expressions):

- SAM: image encoder + decoder trained to segment "all objects of colour c" from a learned
  prompt embedding per colour (and the union of two colours from the sum of their prompts);
  saved as a segment_anything ``.pth`` state dict.
- LLaVA: a BPE tokenizer trained on the prompt vocabulary, then LLaMA + CLIP + projector trained
  on "What colours are in this image?" and "Which of these colours are in this image: …?"
  (answered name by name, "red: [YES], blue: [NO]."); saved in the original
  LLaVA layout with its CLIP tower.

GSVA training then loads both through the same loaders that read real checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gsva.config import Config
from gsva.data.conversation import get_template
from gsva.data.refer import ReferIndex
from gsva.data.prompts import ANSWERS, EVAL_QUESTIONS, TRAIN_QUESTIONS, format_slots, question_text
from gsva.data.samples import pad_sam_images, pad_sequences
from gsva.data.synthetic import DATASET_NAME, attributes_path
from gsva.data.tokenize import tokenize_conversation
from gsva.data.tokenizer import train_tiny_bpe
from gsva.data.transforms import clip_resize_crop, read_rgb, sam_resize
from gsva.model.losses import bce_per_mask, dice_per_mask
from gsva.model.mask_decoding import decode_masks, postprocess_masks
from gsva.model.mllm import LlavaModel, build_tiny_llava, save_llava_checkpoint
from gsva.model.pixels import normalize_clip_images, normalize_sam_images
from gsva.model.sam import build_tiny_sam
from gsva.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER

LOGGER = logging.getLogger(__name__)
COLOUR_QUESTION = "What colours are in this image?"
CHECKLIST_QUESTION = "Which of these colours are in this image: {names}?"
YES_TOKEN, NO_TOKEN = "[YES]", "[NO]"
"""Checklist answers are "red: [YES], blue: [NO]." with atomic answer tokens."""
MAX_CHECKLIST = 5


@dataclass
class ComponentPaths:
    sam_checkpoint: Path
    llava_dir: Path
    clip_dir: Path

    @classmethod
    def under(cls, root: str | Path) -> "ComponentPaths":
        root = Path(root)
        return cls(root / "sam_tiny.pth", root / "llava_tiny", root / "clip_tiny")

    def complete(self) -> bool:
        return self.sam_checkpoint.is_file() and (self.llava_dir / "config.json").is_file()


@dataclass
class ColourData:
    """The training split held in memory for component pretraining."""

    colours: list[str]
    sam_images: torch.Tensor  # (N, 3, S, S) uint8, zero-padded
    clip_images: torch.Tensor  # (N, 3, C, C) uint8
    colour_masks: torch.Tensor  # (N, K, H, W) uint8: union of the objects of each colour
    present: torch.Tensor  # (N, K) bool
    resized_size: tuple[int, int]
    original_size: tuple[int, int]


def load_colour_data(cfg: Config) -> ColourData:
    """Read the synthetic train split and its per-object colour labels."""
    root = Path(cfg.data.dataset_dir)
    attributes = json.loads(attributes_path(root).read_text())
    colours = list(attributes["spec"]["colours"])
    index = ReferIndex(root, DATASET_NAME)
    sam_images, clip_images, masks, present = [], [], [], []
    resized_size = original_size = (0, 0)
    for image_id in tqdm(index.image_ids(cfg.data.train_split), desc="load images", leave=False):
        image = read_rgb(str(index.image_path(image_id)))
        sam_image = sam_resize(image, cfg.data.sam_image_size)
        resized_size = tuple(sam_image.shape[1:])
        sam_images.append(sam_image)
        clip_images.append(clip_resize_crop(image, cfg.data.clip_image_size))
        original_size = image.shape[:2]
        objects = attributes["images"][str(image_id)]
        per_colour = []
        for colour in colours:
            ann_ids = [obj["ann_id"] for obj in objects if obj["colour"] == colour]
            per_colour.append(index.target_mask(image_id, ann_ids))
        masks.append(np.stack(per_colour))
        present.append([any(obj["colour"] == colour for obj in objects) for colour in colours])
    return ColourData(
        colours=colours,
        sam_images=pad_sam_images(sam_images, cfg.data.sam_image_size),
        clip_images=torch.stack(clip_images),
        colour_masks=torch.from_numpy(np.stack(masks).astype(np.uint8)),
        present=torch.tensor(present),
        resized_size=resized_size,
        original_size=tuple(original_size),
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


def pretrain_sam(cfg: Config, data: ColourData, generator: torch.Generator) -> tuple[torch.nn.Module, float]:
    """Train a tiny SAM to segment every object of a prompted colour; returns (sam, final IoU)."""
    sam = build_tiny_sam(cfg.model.tiny, cfg.data.sam_image_size)
    prompts = torch.nn.Embedding(len(data.colours), cfg.model.tiny.prompt_embed_dim)
    steps = cfg.components.sam_steps
    update = OneCycleUpdater(list(sam.parameters()) + list(prompts.parameters()), cfg.components.sam_lr, steps)
    iou = 0.0
    progress = tqdm(range(steps), desc="pretrain SAM")
    for _ in progress:
        images = torch.randint(0, data.sam_images.shape[0], (cfg.components.batch_size,), generator=generator)
        query_to_image, first, second = _sam_queries(data.present[images], generator)
        embeddings = sam.image_encoder(normalize_sam_images(data.sam_images[images], [data.resized_size] * len(images)))
        queries = prompts(first) + torch.where((second >= 0).unsqueeze(1), prompts(second.clamp(min=0)), 0.0)
        low_res = decode_masks(sam.mask_decoder, sam.prompt_encoder, embeddings, queries, query_to_image)
        logits = postprocess_masks(low_res, cfg.data.sam_image_size, data.resized_size, data.original_size)
        masks = data.colour_masks[images[query_to_image]]
        targets = torch.maximum(masks[torch.arange(len(first)), first], masks[torch.arange(len(first)), second.clamp(min=0)] * (second >= 0).view(-1, 1, 1)).float()
        loss = bce_per_mask(logits, targets).mean() + dice_per_mask(logits, targets).mean()
        update(loss)
        predicted = logits.detach() > 0
        inter = (predicted & (targets > 0)).sum().item()
        union = (predicted | (targets > 0)).sum().item()
        iou = 0.9 * iou + 0.1 * inter / max(union, 1)
        progress.set_postfix(loss=f"{loss.item():.3f}", iou=f"{iou:.3f}")
    return sam, iou


def tokenizer_corpus(colours: list[str], conversation: str) -> list[str]:
    """Texts the tiny BPE is trained on: every prompt form the demo can produce."""
    template = get_template(conversation)
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


def _llava_conversation(data: ColourData, image: int, rng: random.Random) -> tuple[str, str]:
    """Either "what colours" or a checklist answered name by name: "red: [YES], blue: [NO]."."""
    present = {colour for colour, flag in zip(data.colours, data.present[image].tolist()) if flag}
    if rng.random() < 0.25:
        return COLOUR_QUESTION, ", ".join(c for c in data.colours if c in present) + "."
    names = [_colour_names(data.colours, rng) for _ in range(rng.randint(1, MAX_CHECKLIST))]
    answer = ", ".join(f"{name}: {YES_TOKEN if named & present else NO_TOKEN}" for name, named in names) + "."
    return CHECKLIST_QUESTION.format(names=", ".join(name for name, _ in names)), answer


def pretrain_clip(cfg: Config, data: ColourData, llava: LlavaModel, generator: torch.Generator) -> float:
    """Train the tiny CLIP tower (in place) so that each patch feature LLaVA reads (layer
    ``select_layer``) tells which colours cover that patch; returns the per-patch accuracy."""
    tower = llava.vision_tower
    grid = cfg.data.clip_image_size // cfg.model.tiny.clip_patch_size
    head = torch.nn.Linear(tower.config.hidden_size, len(data.colours))
    steps = cfg.components.clip_steps
    update = OneCycleUpdater(list(tower.parameters()) + list(head.parameters()), cfg.components.clip_lr, steps)
    accuracy = 0.0
    progress = tqdm(range(steps), desc="pretrain CLIP")
    for _ in progress:
        images = torch.randint(0, data.clip_images.shape[0], (cfg.components.batch_size,), generator=generator)
        hidden = tower(pixel_values=normalize_clip_images(data.clip_images[images]), output_hidden_states=True).hidden_states
        logits = head(hidden[llava.select_layer][:, 1:])
        targets = F.adaptive_max_pool2d(data.colour_masks[images].float(), grid).flatten(2).transpose(1, 2)
        loss = F.binary_cross_entropy_with_logits(logits, targets)
        update(loss)
        correct = ((logits.detach() > 0) == (targets > 0)).float().mean().item()
        accuracy = 0.9 * accuracy + 0.1 * correct
        progress.set_postfix(loss=f"{loss.item():.3f}", accuracy=f"{accuracy:.3f}")
    return accuracy


def pretrain_llava(cfg: Config, data: ColourData, tokenizer, generator: torch.Generator) -> tuple[LlavaModel, float]:
    """Pretrain CLIP, then train the projector + LLM with CLIP frozen (as LLaVA is trained) to
    answer colour questions; returns (llava, answer token accuracy)."""
    llava = build_tiny_llava(cfg.model.tiny, len(tokenizer), cfg.data.clip_image_size, use_im_start_end=False)
    pretrain_clip(cfg, data, llava, generator)
    llava.vision_tower.requires_grad_(False)
    trained = list(llava.language_model.parameters()) + list(llava.mm_projector.parameters())
    steps = cfg.components.llava_steps
    update = OneCycleUpdater(trained, cfg.components.llava_lr, steps)
    template = get_template(cfg.data.conversation)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
    accuracy = 0.0
    progress = tqdm(range(steps), desc="pretrain LLaVA")
    for _ in progress:
        images = torch.randint(0, data.clip_images.shape[0], (cfg.components.batch_size,), generator=generator)
        encoded = []
        for image in images.tolist():
            question, answer = _llava_conversation(data, image, rng)
            rendered = template.render([(IMAGE_PLACEHOLDER + "\n" + question, answer)])
            encoded.append(tokenize_conversation(rendered, tokenizer))
        input_ids, labels, mask = pad_sequences(
            [item.input_ids for item in encoded], [item.labels for item in encoded], tokenizer.pad_token_id
        )
        features = llava.encode_images(data.clip_images[images])
        spliced = llava.splice(input_ids, mask, features, torch.arange(len(encoded)), labels)
        hidden = llava.last_hidden_states(spliced.inputs_embeds, spliced.attention_mask)
        targets = spliced.labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        logits = llava.lm_logits(hidden[:, :-1][supervised])
        loss = F.cross_entropy(logits, targets[supervised])
        update(loss)
        correct = (logits.argmax(-1) == targets[supervised]).float().mean().item()
        accuracy = 0.9 * accuracy + 0.1 * correct
        progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}")
    return llava, accuracy


def prepare_components(cfg: Config) -> ComponentPaths:
    """Pretrain and save the tiny SAM and LLaVA under ``cfg.components.output_dir`` if absent."""
    paths = ComponentPaths.under(cfg.components.output_dir)
    if paths.complete():
        return paths
    start = time.time()
    generator = torch.Generator().manual_seed(cfg.run.seed)
    data = load_colour_data(cfg)
    sam, sam_iou = pretrain_sam(cfg, data, generator)
    paths.sam_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_bpe(
        tokenizer_corpus(data.colours, cfg.data.conversation),
        cfg.model.tiny.vocab_size,
        paths.llava_dir,
        extra_tokens=(YES_TOKEN, NO_TOKEN),
    )
    llava, accuracy = pretrain_llava(cfg, data, tokenizer, generator)
    save_llava_checkpoint(llava, paths.llava_dir, paths.clip_dir)
    partial = paths.sam_checkpoint.with_suffix(".pth.partial")
    torch.save(sam.state_dict(), partial)
    partial.rename(paths.sam_checkpoint)
    LOGGER.info(
        "tiny components ready in %.0fs: SAM colour-prompt IoU %.3f, LLaVA answer accuracy %.3f",
        time.time() - start,
        sam_iou,
        accuracy,
    )
    return paths
