"""Checks shared by the tests of the backbones whose decoder takes plain sequence positions
(InternVL, LLaVA-NeXT): tiny weights of unit scale, GSVA batches rendered by a chat template,
logits through the adapter, features through a feature cache, greedy generation against teacher
forcing, and where LoRA lands."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from torch import nn

from gsva.feature_cache import FeatureCache, FeatureCacheWriter, FeatureLayout, image_key
from gsva.model.generation import left_align
from gsva.model.splicing import SplicedInputs
from gsva.text.conversation import ChatTemplate, Turns
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.special_tokens import IGNORE_INDEX
from gsva.text.tokenizer import load_tokenizer, train_tiny_bpe


CORPUS = [
    "What is in the picture? Where is the red square? It is [SEG]. Nothing like that: [REJ].",
    "The blue circle and the green triangle are on the left; the yellow star is missing.",
]
"""What the tiny chat tokenizers of these tests are trained on."""


def chat_tokenizer(directory: Path, extra_tokens: tuple[str, ...], chat_template: str):
    """A BPE tokenizer of 300 entries trained on ``CORPUS`` with ``extra_tokens`` and
    ``chat_template``, saved to ``directory`` and loaded back."""
    built = train_tiny_bpe(CORPUS, 300, directory, extra_tokens=extra_tokens)
    built.chat_template = chat_template
    built.save_pretrained(str(directory))
    return load_tokenizer(directory, 512)


def conversations(image_marker: str) -> tuple[Turns, Turns]:
    """Two GSVA conversations with the backbone's ``image_marker``: two turns (a [SEG] answer, then
    a [REJ] one), and a short single turn."""
    return (
        [(f"{image_marker}\nWhere is the red square?", "It is [SEG]."), ("And the star?", "[REJ].")],
        [(f"{image_marker}\nThe circle?", "[SEG].")],
    )


def unit_scale_(model: nn.Module) -> None:
    """Weights of unit-scale activations (N(0, 1/fan_in) matrices, norms and scales around 1), so
    that the comparisons are made on logits of order one, not on near-constant ones."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, parameter[0].numel() ** -0.5)
            else:
                parameter.add_(0.1 * torch.randn_like(parameter))


def random_images(count: int, side: int, seed: int = 1) -> torch.Tensor:
    """(count, 3, side, side) uint8."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=generator)


def tokenized_rows(tokenizer, conversations: list[Turns]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (N, L) input ids (one ``IMAGE_TOKEN_INDEX`` per row), attention mask, labels."""
    template = ChatTemplate(tokenizer)
    rows = [tokenize_conversation(template.render(turns), tokenizer) for turns in conversations]
    length = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for index, row in enumerate(rows):
        input_ids[index, : len(row.input_ids)] = torch.tensor(row.input_ids)
        labels[index, : len(row.labels)] = torch.tensor(row.labels)
        mask[index, : len(row.input_ids)] = True
    return input_ids, mask, labels


def backbone_logits(
    backbone, input_ids, mask, image_features, conv_to_image, labels=None
) -> tuple[SplicedInputs, torch.Tensor, torch.Tensor]:
    """(spliced inputs, (N, L', D) last states, (N, L', V) logits) through the adapter."""
    spliced = backbone.splice(input_ids, mask, image_features, conv_to_image, labels)
    hidden = backbone.last_hidden_states(spliced.inputs_embeds, spliced.attention_mask)
    return spliced, hidden, backbone.lm_logits(hidden)


def check_reloaded_logits(backbone, loaded, tokenizer, conversations: list[Turns], images: torch.Tensor) -> None:
    """``loaded`` (``backbone`` saved and read back after two tokens were added to its table) gives
    ``backbone``'s logits exactly, over the grown vocabulary, on ``conversations`` (one image each),
    the first row holding the last added token."""
    conv_to_image = torch.arange(len(conversations))
    input_ids, mask, _ = tokenized_rows(tokenizer, conversations)
    input_ids[0, 1] = len(tokenizer) + 1
    with torch.no_grad():
        results = [
            backbone_logits(model, input_ids, mask, model.mm_projector(model.vision_features(images)), conv_to_image)[2]
            for model in (backbone, loaded)
        ]
    assert results[1].shape[-1] == len(tokenizer) + 2
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def cached_vision_features(backbone, images: torch.Tensor, root: Path) -> torch.Tensor:
    """(B, N, D_v) features of ``images`` written to a feature cache at ``root`` and read back."""
    features = backbone.vision_features(images)
    layout = FeatureLayout("test", sam_shape=(1,), clip_shape=tuple(features.shape[1:]), dtype="float32")
    keys = [image_key(torch.zeros((3, 1, 1), dtype=torch.uint8), image) for image in images]
    with FeatureCacheWriter(root, layout, "test") as writer:
        for key, image_features in zip(keys, features):
            writer.add(key, torch.zeros(1), image_features)
    return FeatureCache.open(root).get_batch(keys)[1]


def check_cached_features_give_the_loss_of_pixels(backbone, tokenizer, conversations: list[Turns], images, root: Path) -> None:
    """Logits and loss from cached features equal those from pixels, bit for bit."""
    conv_to_image = torch.arange(len(conversations))
    input_ids, mask, labels = tokenized_rows(tokenizer, conversations)
    results = []
    with torch.no_grad():
        cached = cached_vision_features(backbone, images, root)
        for features in (backbone.vision_features(images), cached):
            spliced, _, logits = backbone_logits(backbone, input_ids, mask, backbone.mm_projector(features), conv_to_image, labels)
            targets = spliced.labels[:, 1:].flatten()
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets, ignore_index=IGNORE_INDEX)
            results.append((logits, loss))
    (pixel_logits, pixel_loss), (cached_logits, cached_loss) = results
    torch.testing.assert_close(cached_logits, pixel_logits, rtol=0, atol=0)
    torch.testing.assert_close(cached_loss, pixel_loss, rtol=0, atol=0)


def check_generated_states_are_teacher_forced(backbone, tokenizer, prompts: list[Turns], images, steps: int = 4) -> None:
    """The states that produce each greedily generated token (transformers' ``generate`` from the
    left-aligned spliced prompts) equal the teacher-forced states of prompt + generated tokens."""
    rows = len(prompts)
    conv_to_image = torch.arange(rows)
    input_ids, mask, _ = tokenized_rows(tokenizer, prompts)
    with torch.no_grad():
        image_features = backbone.mm_projector(backbone.vision_features(images))
        spliced = backbone.splice(input_ids, mask, image_features, conv_to_image)
        embeds, left_mask = left_align(spliced.inputs_embeds, spliced.attention_mask)
        output = backbone.language_model.generate(
            inputs_embeds=embeds, attention_mask=left_mask.long(), max_new_tokens=steps, min_new_tokens=steps,
            do_sample=False, num_beams=1, output_hidden_states=True, return_dict_in_generate=True,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        generated = output.sequences[:, -steps:]
        producing = torch.stack([step[-1][:, -1] for step in output.hidden_states], dim=1)
        lengths = mask.sum(1)
        full_ids = torch.full((rows, input_ids.shape[1] + steps), tokenizer.pad_token_id)
        for row in range(rows):
            full_ids[row, : lengths[row] + steps] = torch.cat([input_ids[row, : lengths[row]], generated[row]])
        full_mask = full_ids != tokenizer.pad_token_id
        full_mask[:, : input_ids.shape[1]] = mask
        teacher = backbone.splice(full_ids, full_mask, image_features, conv_to_image)
        hidden = backbone.last_hidden_states(teacher.inputs_embeds, None)
    patches = image_features.shape[1]
    for row in range(rows):
        first = int(lengths[row]) - 1 + patches - 1
        torch.testing.assert_close(producing[row], hidden[row, first : first + steps], rtol=0, atol=1e-5)


def lora_module_names(root: nn.Module) -> list[str]:
    return [name for name, module in root.named_modules() if isinstance(module, LoraLayer)]


def lora_holders(backbone: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Where peft may be applied -> (that module, the prefix of the language model's names in it):
    the language model, the backbone, a model holding the backbone as ``mllm``."""
    return {
        "language_model": (backbone.language_model, ""),
        "backbone": (backbone, "language_model."),
        "gsva": (nn.ModuleDict({"mllm": backbone}), "mllm.language_model."),
    }
