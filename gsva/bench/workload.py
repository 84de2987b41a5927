"""The synthetic workload both model benchmarks use: COCO-sized images with object masks,
gRefCOCO-like referring expressions, a 32000-entry BPE tokenizer trained on their conversations,
and the small process helpers (memory, logging) of the benchmark drivers.

Everything is a pure function of the seed and the item, so runs with and without an option see
the same images and expressions.
"""

from __future__ import annotations

import random
import resource
import sys
from pathlib import Path

import cv2
import numpy as np

from gsva.bench.shapes import REFERENCE_VOCAB
from gsva.data.sample_builder import SlotTarget
from gsva.text.conversation import get_template
from gsva.text.prompts import ANSWERS, EVAL_QUESTIONS, TRAIN_QUESTIONS, format_slots, question_text
from gsva.text.special_tokens import IMAGE_PLACEHOLDER
from gsva.text.tokenizer import train_reference_bpe

IMAGE_HEIGHT, IMAGE_WIDTH = 480, 640
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange", "pink", "grey", "purple")
SIZES = ("big", "small", "tall", "little", "young", "old", "dark", "striped")
NOUNS = (
    ("man", "men"), ("woman", "women"), ("person", "people"), ("guy", "guys"), ("lady", "ladies"),
    ("kid", "kids"), ("boy", "boys"), ("girl", "girls"), ("dog", "dogs"), ("cat", "cats"),
    ("horse", "horses"), ("elephant", "elephants"), ("giraffe", "giraffes"), ("zebra", "zebras"),
    ("sheep", "sheep"), ("cow", "cows"), ("bird", "birds"), ("car", "cars"), ("bus", "buses"),
    ("truck", "trucks"), ("bike", "bikes"), ("motorcycle", "motorcycles"), ("chair", "chairs"),
    ("couch", "couches"), ("table", "tables"), ("bed", "beds"), ("umbrella", "umbrellas"),
    ("pizza", "pizzas"), ("sandwich", "sandwiches"), ("cake", "cakes"), ("bottle", "bottles"),
    ("cup", "cups"), ("laptop", "laptops"), ("bowl", "bowls"), ("banana", "bananas"),
    ("donut", "donuts"), ("vase", "vases"), ("plant", "plants"), ("train", "trains"), ("bench", "benches"),
)
PLACES = ("on the left", "on the right", "in the middle", "in front", "in the back", "far left",
          "far right", "closest to us", "at the top", "at the bottom", "second from left")
RELATIONS = ("next to the {n}", "behind the {n}", "near the {n}", "on top of the {n}", "under the {n}",
             "holding a {n}", "wearing a {a} shirt", "in a {a} jacket", "with a {a} hat")
COUNTS = ("two", "three", "all", "both", "the two")
FORMS = ("{n}", "{a} {n}", "{n} {p}", "{a} {n} {p}", "{n} {r}", "{a} {n} {r}", "{c} {ns} {p}", "{ns} {r}",
         "{a} {ns}", "{n} {p} and {n2}")


def random_expression(rng: random.Random) -> str:
    """A gRefCOCO-like referring expression (about four words, singular or plural)."""
    noun, nouns = rng.choice(NOUNS)
    values = {
        "n": noun, "ns": nouns, "n2": rng.choice(NOUNS)[0], "a": rng.choice(COLOURS + SIZES),
        "p": rng.choice(PLACES), "c": rng.choice(COUNTS),
    }
    values["r"] = rng.choice(RELATIONS).format(n=rng.choice(NOUNS)[0], a=rng.choice(COLOURS))
    return rng.choice(FORMS).format(**values)


def _random_blobs(rng: np.random.Generator, count: int) -> np.ndarray:
    """(H, W) bool union of ``count`` random ellipses/polygons (an object mask)."""
    mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=np.uint8)
    for _ in range(count):
        centre = (int(rng.integers(40, IMAGE_WIDTH - 40)), int(rng.integers(40, IMAGE_HEIGHT - 40)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(15, 120)), int(rng.integers(15, 120)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(4, 9))))
            radii = rng.uniform(20, 110, angles.shape[0])
            points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
            cv2.fillPoly(mask, [points.round().astype(np.int32)], 1)
    return mask.astype(bool)


def make_image(key: tuple[int, ...], seed: int, exists: list[bool]) -> tuple[np.ndarray, list[SlotTarget]]:
    """Image ``key`` of a benchmark: (480, 640, 3) uint8 RGB through a JPEG round trip, and one
    target per ``exists`` entry (one to three blobs painted in one colour; an empty mask when
    absent), each named by a random expression."""
    rng = np.random.default_rng([seed, *key])
    text_rng = random.Random("/".join(map(str, (seed, *key))))
    background = rng.integers(0, 256, (IMAGE_HEIGHT // 32, IMAGE_WIDTH // 32, 3), dtype=np.uint8)
    image = cv2.resize(background, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_CUBIC)
    targets = []
    for present in exists:
        mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)
        if present:
            mask = _random_blobs(rng, int(rng.integers(1, 4)))
            image[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        targets.append(SlotTarget(text=random_expression(text_rng), mask=mask, exists=present))
    noise = rng.normal(0, 8, image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), targets


def tokenizer_corpus(seed: int) -> list[str]:
    """Rendered evaluation and training conversations (frequent: their words become single
    tokens), for a BPE that then reaches its size on pseudo-words."""
    template = get_template("llava_v1")
    rng = random.Random(seed)
    texts = []
    for _ in range(300):
        names = [random_expression(rng) for _ in range(rng.randint(1, 12))]
        exists = [rng.random() > 0.3 for _ in names]
        question = question_text(names, rng.choice((EVAL_QUESTIONS["please"], *TRAIN_QUESTIONS)), IMAGE_PLACEHOLDER)
        answer = rng.choice(ANSWERS).format(slots=format_slots(names, exists))
        texts.append(template.render([(question, answer)]).text)
    return texts


def prepare_tokenizer(work_dir: Path, seed: int) -> Path:
    """Train (once) the 32000-entry BPE into ``work_dir/tokenizer`` and return the directory."""
    return train_reference_bpe(tokenizer_corpus(seed), REFERENCE_VOCAB, work_dir / "tokenizer", seed)


def rss_mib() -> float:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(message: str) -> None:
    """Progress of a benchmark driver, on stderr (stdout carries the JSON)."""
    print(message, file=sys.stderr, flush=True)
