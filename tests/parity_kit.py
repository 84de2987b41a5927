"""The parity kit shared by the parity tests: where it is, the import of its ``.bin`` as a user
runs it, and its official training micro-batches as our batches.

The kit (``GSVA_PARITY_KIT``, a folder kept outside the repository) holds the authors' model at
tiny random weights in the layout of their released ``gsva-7b-*.bin``, the base LLaVA/CLIP configs
and tokenizer, and what THEIR code computed from it. Its ``dims.json`` gives every size, so another
kit (other seeds, images or tokenizer) runs through the same checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from gsva.batch import GsvaBatch
from gsva.data.samples import Collator, ConversationSample, ImageSample
from gsva.data.transforms import clip_resize_crop, read_rgb, sam_resize
from tests.conftest import REPO, child_environment

KIT_VARIABLE = "GSVA_PARITY_KIT"
KIT = Path(os.environ[KIT_VARIABLE]) if os.environ.get(KIT_VARIABLE) else None


def requires_kit(*parts: str) -> pytest.MarkDecorator:
    """Skip, saying why, unless the kit is set and holds ``gsva-tiny.bin`` and ``parts``."""
    present = KIT is not None and (KIT / "gsva-tiny.bin").is_file() and KIT.joinpath(*parts).exists()
    where = "/".join(parts) or "gsva-tiny.bin"
    return pytest.mark.skipif(
        not present,
        reason=f"{KIT_VARIABLE} is not set to a parity kit folder holding gsva-tiny.bin and {where}: nothing to compare against",
    )


def kit_json(*parts: str) -> dict:
    return json.loads(KIT.joinpath(*parts).read_text())


def base_config(dims: dict) -> dict:
    """The config of the kit's model: the tiny SAM sizes and both encoders' input sides (LLaVA and
    CLIP are read from the imported folders)."""
    encoder, decoder = dims["sam"]["image_encoder"], dims["sam"]["mask_decoder"]
    return {
        "data": {
            "sam_image_size": encoder["img_size"],
            "clip_image_size": dims["clip_vision"]["image_size"],
            "model_max_length": dims["bench"]["model_max_length"],
            "conversation": dims["gsva"]["conv_type"],
        },
        "model": {
            "sam_type": "tiny",
            "precision": "fp32",
            "lora_dropout": dims["gsva"]["lora_dropout"],
            "tiny": {
                "sam_embed_dim": encoder["embed_dim"],
                "sam_depth": encoder["depth"],
                "sam_heads": encoder["num_heads"],
                "sam_patch_size": encoder["patch_size"],
                "sam_window_size": encoder["window_size"],
                "sam_global_attn_indexes": encoder["global_attn_indexes"],
                "prompt_embed_dim": decoder["transformer_dim"],
                "decoder_mlp_dim": decoder["transformer_mlp_dim"],
                "decoder_heads": decoder["transformer_num_heads"],
            },
        },
    }


def import_kit_weights(out_root: Path) -> Path:
    """``scripts/import_weights.py`` on the kit's .bin, exactly as a user runs it; returns the
    imported model directory."""
    dims = kit_json("dims.json")
    base = out_root / "base.yaml"
    base.write_text(yaml.safe_dump(base_config(dims)))
    out = out_root / "imported"
    command = [
        sys.executable, str(REPO / "scripts" / "import_weights.py"), "--format", "gsva-bin",
        "--weights", str(KIT / "gsva-tiny.bin"), "--llava", str(KIT / "base" / "llava-tiny"),
        "--vision-tower", str(KIT / "base" / "clip-vit-tiny"), "--config", str(base),
        "--lora-alpha", str(dims["gsva"]["lora_alpha"]), "--out", str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment(), cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unplaced 0, missing 0, shape mismatches 0" in result.stdout
    return out


def official_micro_batch(folder: Path, collate: Collator, clip_size: int, seg_id: int, rej_id: int) -> GsvaBatch:
    """One of the authors' training micro-batches (``train/`` or ``trajectory/micro_<k>/``) as our
    batch: their token ids and labels, our preprocessing of their JPEGs (checked against their uint8
    inputs), their ground-truth masks."""
    input_ids, labels = np.load(folder / "input_ids.npy"), np.load(folder / "labels.npy")
    attention = np.load(folder / "attention_masks.npy")
    offsets = np.load(folder / "offset.npy").tolist()
    samples = []
    for image_index, (first, last) in enumerate(zip(offsets[:-1], offsets[1:])):
        image = read_rgb(str(folder / f"image_{image_index}.jpg"))
        sam_image, clip_image = sam_resize(image, collate.sam_image_size), clip_resize_crop(image, clip_size)
        np.testing.assert_array_equal(sam_image.permute(1, 2, 0).numpy(), np.array(Image.open(folder / f"sam_resized_{image_index}.png")))
        np.testing.assert_array_equal(clip_image.permute(1, 2, 0).numpy(), np.array(Image.open(folder / f"clip_crop_{image_index}.png")))
        masks = np.load(folder / f"gt_masks_{image_index}.npz")["masks"].astype(np.uint8)
        conversations, slot = [], 0
        for row in range(first, last):
            length = int(attention[row].sum())
            ids = input_ids[row, :length].tolist()
            positions = [position for position, token in enumerate(ids) if token in (seg_id, rej_id)]
            is_seg = [ids[position] == seg_id for position in positions]
            conversations.append(ConversationSample(
                input_ids=ids, labels=labels[row, :length].tolist(), target_masks=masks[slot : slot + len(positions)],
                slot_exists=is_seg, slot_positions=positions, slot_is_seg=is_seg,
            ))
            slot += len(positions)
        assert slot == masks.shape[0]
        samples.append(ImageSample(sam_image=sam_image, clip_image=clip_image, original_size=image.shape[:2],
                                   resized_size=tuple(sam_image.shape[1:]), conversations=conversations))
    batch = collate(samples)
    np.testing.assert_array_equal(batch.input_ids.numpy(), input_ids)
    np.testing.assert_array_equal(batch.labels.numpy(), labels)
    return batch
