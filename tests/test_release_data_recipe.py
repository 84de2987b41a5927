"""The data keys that reproduce the authors' released training data path (``data.prompt_style:
gsva_release``, ``data.all_rejected``, ``data.part_targets``, ``data.mapillary_unlabeled``, the
ReasonSeg keys, ``data.slot_order``): each renders or draws what the released code does, on the
fixture datasets in their on-disk formats."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gsva.config import ConfigError
from gsva.data.catalog import DATASETS
from gsva.data.mixture import FullPassStream, MixtureStream, RedrawSample
from gsva.data.reason_seg.dataset import ReasonSegDataset
from gsva.data.reason_seg.reader import ReasonSegIndex
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.sample_builder import SampleBuilder, SampleSettings, SlotTarget
from gsva.data.samples import Collator, ImageSample
from gsva.data.sem_seg.dataset import SemSegDataset
from gsva.data.sem_seg.reader import LabelOptions, open_semseg_source
from gsva.engine.trainer import training_stream
from gsva.pipeline import build_pipeline
from gsva.text.conversation import get_template
from gsva.text.prompts import RELEASE_PHRASING, PromptSettings
from gsva.text.special_tokens import IGNORE_INDEX, IM_END_TOKEN, IM_START_TOKEN, IMAGE_PLACEHOLDER, REJ_TOKEN, SEG_TOKEN
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.tokenizer import add_task_tokens, load_tokenizer
from tests.conftest import tiny_config
from tests.formats.semseg_formats import MAPILLARY_UNLABELED
from tests.formats.vqa_reason_formats import KITCHEN_EXPLANATION
from tests.parity_kit import KIT, requires_kit

RELEASE_DATA = (
    "data.prompt_style=gsva_release",
    "data.slot_order=listed",
    "data.absent_class_rate=0",
    "data.all_rejected=redraw",
    "data.single_target_rate=0",
    "data.part_targets=instance",
    "data.mapillary_unlabeled=class",
    "data.explanatory_rate=0.5",
    "data.explanatory_text_only_rate=0.1",
    "data.reason_seg_queries_per_image=null",
    "data.model_max_length=769",
)
"""The data keys at the values of the authors' released training code."""

PRETRAIN_TASKS = (
    "data.tasks={sem_seg: {weight: 9, datasets: [ade20k, cocostuff, mapillary, paco_lvis, pascal_part]}, "
    "refer_seg: {weight: 6, datasets: [refclef, refcoco, refcoco+, refcocog, grefcoco]}, "
    "vqa: {weight: 3, datasets: [llava_instruct_150k]}, reason_seg: {weight: 1, datasets: [reason_seg]}}"
)
IMAGE_MARKER = IM_START_TOKEN + IMAGE_PLACEHOLDER + IM_END_TOKEN
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <im_start><image><im_end>\n"
)

# Conversations of the authors' released training code (the parity kit's trajectory micro-batches):
# (expressions, [SEG] or not, question index, answer index, their text after the system prompt).
# Every question and answer form of the release appears.
AUTHORS_CONVERSATIONS = [
    (
        ["the left orange apple", "orange apple and yellow chair", "the yellow umbrella",
         "orange apple and yellow chair", "the left yellow chair"],
        [True, True, False, True, True], 0, 0,
        "Can you segment the left orange apple, orange apple and yellow chair, the yellow umbrella, orange apple "
        "and yellow chair, the left yellow chair in this image? ASSISTANT: The segmentation results are the left "
        "orange apple [SEG], orange apple and yellow chair [SEG], the yellow umbrella [REJ], orange apple and "
        "yellow chair [SEG], the left yellow chair [SEG].</s>",
    ),
    (
        ["green person", "the yellow umbrella", "the bowl in the middle", "the middle orange bowl",
         "green person and blue apple"],
        [True, False, True, True, True], 0, 2,
        "Can you segment green person, the yellow umbrella, the bowl in the middle, the middle orange bowl, green "
        "person and blue apple in this image? ASSISTANT: Sure, the mask of green person is [SEG], the mask of the "
        "yellow umbrella is [REJ], the mask of the bowl in the middle is [SEG], the mask of the middle orange bowl "
        "is [SEG], the mask of green person and blue apple is [SEG].</s>",
    ),
    (
        ["the black surfboard", "the left orange car", "the left orange car", "red triangle shaped dog",
         "the middle red dog"],
        [False, True, True, True, True], 1, 4,
        "Please segment the black surfboard, the left orange car, the left orange car, red triangle shaped dog, the "
        "middle red dog in this image. ASSISTANT: Sure, the referred the black surfboard is [REJ], the referred the "
        "left orange car is [SEG], the referred the left orange car is [SEG], the referred red triangle shaped dog "
        "is [SEG], the referred the middle red dog is [SEG].</s>",
    ),
    (
        ["the green surfboard", "the potted plant in the left", "black chair", "black apple",
         "black apple and black chair"],
        [False, True, True, True, True], 0, 1,
        "Can you segment the green surfboard, the potted plant in the left, black chair, black apple, black apple "
        "and black chair in this image? ASSISTANT: Sure, they are the green surfboard:[REJ], the potted plant in "
        "the left:[SEG], black chair:[SEG], black apple:[SEG], black apple and black chair:[SEG].</s>",
    ),
    (
        ["the car and the dog", "the left orange car", "the middle red dog", "red triangle shaped dog",
         "the left orange car"],
        [True, True, True, True, True], 2, 0,
        "What are the car and the dog, the left orange car, the middle red dog, red triangle shaped dog, the left "
        "orange car in this image? Please respond with segmentation masks. ASSISTANT: The segmentation results are "
        "the car and the dog [SEG], the left orange car [SEG], the middle red dog [SEG], red triangle shaped dog "
        "[SEG], the left orange car [SEG].</s>",
    ),
    (
        ["green person and blue apple", "blue ellipse shaped apple", "the yellow umbrella", "the bowl in the middle",
         "green person"],
        [True, True, False, True, True], 3, 3,
        "What are green person and blue apple, blue ellipse shaped apple, the yellow umbrella, the bowl in the "
        "middle, green person in this image? Please output segmentation masks. ASSISTANT: Sure, the segmentation of "
        "green person and blue apple is [SEG], the segmentation of blue ellipse shaped apple is [SEG], the "
        "segmentation of the yellow umbrella is [REJ], the segmentation of the bowl in the middle is [SEG], the "
        "segmentation of green person is [SEG].</s>",
    ),
]

IMAGE = np.full((20, 30, 3), 100, dtype=np.uint8)


def release_text(texts: list[str], exists: list[bool], question: int, answer: int, joiner: str = ", ") -> str:
    """The llava_v1 conversation of the release phrasing's ``question``-th question and ``answer``-th answer form."""
    tokens = [SEG_TOKEN if present else REJ_TOKEN for present in exists]
    turn = RELEASE_PHRASING.multi_target_turn(
        texts, tokens, RELEASE_PHRASING.questions[question], RELEASE_PHRASING.answers[answer], joiner, IMAGE_MARKER
    )
    return get_template("llava_v1").render([turn]).text


def release_forms(texts: list[str], exists: list[bool], joiner: str = ", ") -> dict[str, tuple[int, int]]:
    """Every conversation the release phrasing can render for ``texts`` -> its (question, answer) indices."""
    forms = itertools.product(range(len(RELEASE_PHRASING.questions)), range(len(RELEASE_PHRASING.answers)))
    return {release_text(texts, exists, question, answer, joiner): (question, answer) for question, answer in forms}


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir, 1024)
    add_task_tokens(tokenizer, [SEG_TOKEN, REJ_TOKEN, IM_START_TOKEN, IM_END_TOKEN])
    return tokenizer


def release_builder(tokenizer, **changes) -> SampleBuilder:
    """A builder at the release values (``RELEASE_DATA``), the image wrapped in ``<im_start>``/``<im_end>``."""
    settings = dict(
        sam_image_size=32, clip_image_size=16, max_tokens=769, num_classes_per_sample=5,
        prompt_style="gsva_release", slot_order="listed", all_rejected="redraw", part_targets="instance",
        mapillary_unlabeled="class", explanatory_rate=0.5, explanatory_text_only_rate=0.1, reason_seg_queries=5,
    )
    prompts = PromptSettings(get_template("llava_v1"), [SEG_TOKEN], use_im_start_end=True)
    return SampleBuilder(tokenizer, prompts, SampleSettings(**{**settings, **changes}))


def tokenized(tokenizer, text: str):
    """Token ids and labels of a whole llava_v1 conversation of one turn, given as its text."""
    question, answer = text.split(" USER: ", 1)[1].removesuffix("</s>").split(" ASSISTANT: ")
    rendered = get_template("llava_v1").render([(question, answer)])
    assert rendered.text == text
    return tokenize_conversation(rendered, tokenizer)


def release_ids(tokenizer, texts: list[str], exists: list[bool], joiner: str = ", ") -> dict[tuple[int, ...], tuple]:
    """The token ids of every release form of ``texts`` -> its (question, answer) indices."""
    rendered = release_forms(texts, exists, joiner)
    forms = {tuple(tokenized(tokenizer, text).input_ids): form for text, form in rendered.items()}
    assert len(forms) == len(RELEASE_PHRASING.questions) * len(RELEASE_PHRASING.answers)
    return forms


# ------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("case", range(len(AUTHORS_CONVERSATIONS)))
def test_release_phrasing_renders_the_authors_training_conversations(case):
    texts, exists, question, answer, expected = AUTHORS_CONVERSATIONS[case]
    assert release_text(texts, exists, question, answer) == SYSTEM + expected
    assert release_forms(texts, exists)[SYSTEM + expected] == (question, answer)


def test_release_text_is_lower_cased_in_the_question_and_stripped_of_dots():
    text = release_text([" Left Dog. ", "the Cat"], [True, False], 3, 1)
    assert "What are left dog, the cat in this image? Please output segmentation masks." in text
    assert text.endswith("ASSISTANT: Sure, they are Left Dog:[SEG], the Cat:[REJ].</s>")
    semantic = release_text(["wall", "sky"], [True, True], 1, 2, joiner=",")
    assert semantic.endswith("ASSISTANT: Sure, the mask of wall is [SEG],the mask of sky is [SEG].</s>")


def test_release_builder_draws_each_authors_form_uniformly(tokenizer):
    builder = release_builder(tokenizer)
    mask = np.ones((20, 30), dtype=bool)
    targets = [SlotTarget(" Red Shape.", mask, True), SlotTarget("blue shape", np.zeros_like(mask), False)]
    forms = release_ids(tokenizer, [" Red Shape.", "blue shape"], [True, False])
    seen = Counter()
    for seed in range(400):
        sample = builder.segmentation(IMAGE, targets, random.Random(seed), {})
        (conversation,) = sample.conversations
        seen[forms[tuple(conversation.input_ids)]] += 1
        assert conversation.slot_exists == [True, False]
    assert len(seen) == 20 and min(seen.values()) > 5


def test_release_semantic_answers_join_slots_without_a_space(tokenizer):
    builder = release_builder(tokenizer)
    mask = np.ones((20, 30), dtype=bool)
    targets = [SlotTarget("wall", mask, True), SlotTarget("sky", mask, True)]
    forms = release_ids(tokenizer, ["wall", "sky"], [True, True], ",")
    for seed in range(20):
        sample = builder.segmentation(IMAGE, targets, random.Random(seed), {}, task="sem_seg")
        assert tuple(sample.conversations[0].input_ids) in forms


@requires_kit("trajectory", "micro_0", "meta.json")
@pytest.mark.parametrize("micro", range(6))
def test_release_conversations_tokenize_to_the_authors_training_ids(micro):
    """Each conversation of the kit's training micro-batches (one per image) is a release form of its
    sampled expressions ([SEG] where the authors' ground-truth mask is not empty), and tokenises to
    the authors' collated ids and labels."""
    folder = KIT / "trajectory" / f"micro_{micro}"
    meta = json.loads((folder / "meta.json").read_text())
    tokenizer = load_tokenizer(KIT / "base" / "llava-tiny", 1024)
    add_task_tokens(tokenizer, [SEG_TOKEN, REJ_TOKEN, IM_START_TOKEN, IM_END_TOKEN])
    input_ids, labels = np.load(folder / "input_ids.npy"), np.load(folder / "labels.npy")
    attention = np.load(folder / "attention_masks.npy")
    assert np.load(folder / "offset.npy").tolist() == list(range(len(meta["conversations"]) + 1))
    for row, (text, texts) in enumerate(zip(meta["conversations"], meta["sampled_classes"])):
        exists = [bool(mask.any()) for mask in np.load(folder / f"gt_masks_{row}.npz")["masks"]]
        assert text in release_forms(texts, exists)
        tokens = tokenized(tokenizer, text)
        length = int(attention[row].sum())
        assert tokens.input_ids == input_ids[row, :length].tolist()
        assert tokens.labels == labels[row, :length].tolist()


def test_listed_order_is_kept_only_below_the_limit(tokenizer):
    settings = release_builder(tokenizer).settings
    candidates = ["a", "b", "c"]
    assert all(settings.draw_targets(candidates, 4, random.Random(seed)) == candidates for seed in range(20))
    at_limit = {tuple(settings.draw_targets(candidates, 3, random.Random(seed))) for seed in range(20)}
    assert len(at_limit) > 1 and all(sorted(order) == candidates for order in at_limit)
    shuffled = SampleSettings(slot_order="shuffled")
    assert len({tuple(shuffled.draw_targets(candidates, 4, random.Random(seed))) for seed in range(20)}) > 1


# --------------------------------------------------------------------------- [REJ] sampling


def test_all_rejected_draw_is_redrawn_never_swapped(every_dataset, tokenizer):
    index = ReferIndex(every_dataset, "grefcoco")
    swap_one = release_builder(tokenizer, num_classes_per_sample=1, all_rejected="swap_one")
    swapping = ReferSegDataset(index, "train", swap_one, train=True)
    redrawing = ReferSegDataset(index, "train", release_builder(tokenizer, num_classes_per_sample=1), train=True)
    redraws = 0
    for seed in range(40):
        assert swapping.sample(0, random.Random(seed)).conversations[0].slot_exists == [True]
        try:
            redrawing.sample(0, random.Random(seed))
        except RedrawSample:
            redraws += 1
    assert 0 < redraws < 40  # one of the image's four expressions has no target
    stream = MixtureStream({"refer_seg": [redrawing]}, {"refer_seg": 1.0}, seed=0)
    assert all(stream[draw].conversations[0].slot_exists == [True] for draw in range(40))


class _Redrawing:
    """A training dataset of 50 images whose first ``redraws`` draws (counted in ``draws``, shared
    by the datasets of a test) ask to be drawn again."""

    def __init__(self, name: str, task: str, draws: list[tuple[str, int]], redraws: int) -> None:
        self.name, self.task, self.draws, self.redraws = name, task, draws, redraws

    def __len__(self) -> int:
        return 50

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        self.draws.append((self.name, item))
        if len(self.draws) <= self.redraws:
            raise RedrawSample(f"{self.name} image {item}")
        return ImageSample(sam_image=None, clip_image=None, original_size=(1, 1), resized_size=(1, 1), conversations=[])


def test_mixture_redraws_within_the_task_and_a_full_pass_redraws_the_first_image():
    draws: list[tuple[str, int]] = []
    refer = [_Redrawing("a", "refer_seg", draws, 4), _Redrawing("b", "refer_seg", draws, 4)]
    tasks = {"refer_seg": refer, "vqa": [_Redrawing("v", "vqa", draws, 4)]}
    stream = MixtureStream(tasks, {"refer_seg": 1.0, "vqa": 1.0}, seed=0)
    datasets_of_redraws = set()
    for draw in range(40):
        draws.clear()
        stream[draw]
        assert len(draws) == 5
        task_datasets = {"a", "b"} if draws[0][0] in ("a", "b") else {"v"}
        assert {name for name, _ in draws} <= task_datasets
        datasets_of_redraws.add(frozenset(name for name, _ in draws))
        assert len({item for _, item in draws}) > 1  # each redraw draws an image anew
    assert frozenset({"a", "b"}) in datasets_of_redraws  # a dataset of the task, drawn uniformly
    draws.clear()
    FullPassStream([_Redrawing("a", "refer_seg", draws, 2)], seed=0)[(0, 7)]
    assert draws == [("a", 7), ("a", 0), ("a", 0)]


def test_release_semantic_samples_name_no_made_up_class(every_dataset, tokenizer):
    builder = release_builder(tokenizer, num_classes_per_sample=10)
    for name in ("ade20k", "cocostuff", "mapillary", "paco_lvis", "pascal_part"):
        dataset = SemSegDataset(open_semseg_source(name, every_dataset, "train"), builder)
        for seed in range(10):
            sample = dataset.sample(seed % len(dataset), random.Random(seed))
            assert all(sample.conversations[0].slot_exists), name


# --------------------------------------------------------------------------- part instances


def test_part_target_is_one_instance_in_release_and_the_class_union_by_default(every_dataset, tokenizer):
    source = open_semseg_source("paco_lvis", every_dataset, "train")
    targets = source.read_targets(0)  # image 139: two "mug" instances and a "mug:handle"
    names = [source.class_names[class_id] for class_id in targets.instance_class_ids]
    assert names == ["mug", "mug", ("mug", "handle")]
    first, second = targets.instance_mask(0), targets.instance_mask(1)
    assert first[2:18, 2:20].all() and not first[22:38, 26:46].any() and second[22:38, 26:46].all()
    np.testing.assert_array_equal(first | second, targets.mask(source.class_names.index("mug")))

    by_instance = SemSegDataset(source, release_builder(tokenizer, num_classes_per_sample=10))
    (conversation,) = by_instance.sample(0, random.Random(0)).conversations
    assert conversation.metadata["expressions"][:2] == ["mug", "mug"]  # listed order: annotation order
    assert conversation.target_masks.shape[0] == 3
    np.testing.assert_array_equal(conversation.target_masks[0].astype(bool), first)
    np.testing.assert_array_equal(conversation.target_masks[1].astype(bool), second)

    by_class = SemSegDataset(source, release_builder(tokenizer, num_classes_per_sample=10, part_targets="class"))
    (conversation,) = by_class.sample(0, random.Random(0)).conversations
    assert sorted(conversation.metadata["class_ids"]) == targets.class_ids and conversation.target_masks.shape[0] == 2


def test_release_class_names_keep_their_underscores(every_dataset, tokenizer):
    source = open_semseg_source("paco_lvis", every_dataset, "train")  # image 285: "trash_can:inner_body"
    release = SemSegDataset(source, release_builder(tokenizer, num_classes_per_sample=10))
    gsva = SemSegDataset(source, release_builder(tokenizer, num_classes_per_sample=10, prompt_style="gsva"))
    def named(dataset: SemSegDataset) -> set[str]:
        samples = [dataset.sample(1, random.Random(seed)) for seed in range(16)]
        return {text for sample in samples for text in sample.conversations[0].metadata["expressions"]}

    assert {"trash_can inner_body", "the inner_body of the trash_can"} <= named(release)
    spaced = named(gsva)
    assert not any("_" in text for text in spaced)


# --------------------------------------------------------------------------- Mapillary


def test_mapillary_unlabeled_is_a_class_in_release_and_ignored_by_default(every_dataset):
    ignored = open_semseg_source("mapillary", every_dataset, "train")
    kept = open_semseg_source("mapillary", every_dataset, "train", LabelOptions(mapillary_unlabeled_is_class=True))
    assert MAPILLARY_UNLABELED in ignored.ignored_class_ids and not kept.ignored_class_ids
    assert MAPILLARY_UNLABELED not in ignored.read_targets(0).class_ids
    assert MAPILLARY_UNLABELED in kept.read_targets(0).class_ids
    assert kept.read_targets(0).mask(MAPILLARY_UNLABELED).any()


# --------------------------------------------------------------------------- ReasonSeg


def reason_dataset(root: Path, tokenizer, **changes) -> tuple[ReasonSegDataset, int, int]:
    """The fixture's train split with the release builder; (dataset, kitchen item, street item)."""
    dataset = ReasonSegDataset(ReasonSegIndex(root, "train"), release_builder(tokenizer, **changes))
    names = [dataset.index[item].image_path.name for item in range(len(dataset))]
    return dataset, names.index("b_kitchen.jpg"), names.index("a_street.jpg")


def question_of(tokenizer, conversation) -> str:
    """The unsupervised text of a conversation (system prompt and question), image left out."""
    pairs = zip(conversation.input_ids, conversation.labels)
    return tokenizer.decode([token for token, label in pairs if label == IGNORE_INDEX and token >= 0])


def answer_of(tokenizer, conversation) -> str:
    pairs = zip(conversation.input_ids, conversation.labels)
    return tokenizer.decode([token for token, label in pairs if label != IGNORE_INDEX])


def test_release_reason_seg_asks_every_query_in_its_own_conversation(every_dataset, tokenizer):
    dataset, kitchen, street = reason_dataset(every_dataset, tokenizer, explanatory_text_only_rate=0, explanatory_rate=0)
    sample = dataset.sample(kitchen, random.Random(0))
    assert len(sample.conversations) == 2  # both queries of the image, up to num_classes_per_sample
    texts = [conversation.metadata["expressions"][0] for conversation in sample.conversations]
    assert texts == ["the thing you boil water in", "what makes tea water hot"]  # listed order
    for conversation in sample.conversations:
        assert conversation.slot_exists == [True] and conversation.target_masks.shape[0] == 1
        np.testing.assert_array_equal(conversation.target_masks[0], sample.conversations[0].target_masks[0])
        asked = question_of(tokenizer, conversation)
        query = conversation.metadata["expressions"][0]
        assert any(question.format(sentence=query) in asked for question in RELEASE_PHRASING.sentence_questions)
    (short,) = dataset.sample(street, random.Random(0)).conversations
    asked = {question.format(obj="traffic light") for question in RELEASE_PHRASING.single_questions}
    assert any(question in question_of(tokenizer, short) for question in asked)


def test_release_reason_seg_answers_explanations_alone_or_after_the_mask(every_dataset, tokenizer):
    text_only, kitchen, _ = reason_dataset(every_dataset, tokenizer, explanatory_text_only_rate=1.0)
    sample = text_only.sample(kitchen, random.Random(0))
    assert [conversation.slot_exists for conversation in sample.conversations] == [[], []]
    assert all(answer_of(tokenizer, c).strip().startswith(KITCHEN_EXPLANATION) for c in sample.conversations)
    explained, _, _ = reason_dataset(every_dataset, tokenizer, explanatory_text_only_rate=0.0, explanatory_rate=1.0)
    for conversation in explained.sample(kitchen, random.Random(0)).conversations:
        assert conversation.slot_exists == [True]
        assert KITCHEN_EXPLANATION in answer_of(tokenizer, conversation)
        assert any(request in question_of(tokenizer, conversation) for request in RELEASE_PHRASING.explain_requests)


def test_release_reason_seg_mix_is_a_tenth_text_only_then_half_explained(every_dataset, tokenizer):
    dataset, kitchen, _ = reason_dataset(every_dataset, tokenizer)
    kinds = Counter()
    for seed in range(1000):
        conversation = dataset.sample(kitchen, random.Random(seed)).conversations[0]
        explained = conversation.metadata["explained"]
        kinds["text_only" if not conversation.slot_exists else "explained" if explained else "mask"] += 1
    assert abs(kinds["text_only"] / 1000 - 0.1) < 0.03
    assert abs(kinds["explained"] / 1000 - 0.45) < 0.05 and abs(kinds["mask"] / 1000 - 0.45) < 0.05


# --------------------------------------------------------------------------- length and config


def test_release_length_cut_keeps_the_first_769_tokens_of_a_dialogue(tokenizer):
    turns = [("<image>\nDescribe the picture.", "A red square on a blue ground. " * 120)]
    full = release_builder(tokenizer, max_tokens=4096).dialogue(IMAGE, turns, {}).conversations[0]
    cut = release_builder(tokenizer).dialogue(IMAGE, turns, {}).conversations[0]
    assert len(full.input_ids) > 769
    assert cut.input_ids == full.input_ids[:769] and cut.labels == full.labels[:769]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.prompt_style=release", "data.prompt_style"),
        ("data.all_rejected=skip", "data.all_rejected"),
        ("data.part_targets=part", "data.part_targets"),
        ("data.mapillary_unlabeled=drop", "data.mapillary_unlabeled"),
        ("data.slot_order=sorted", "data.slot_order"),
        ("data.explanatory_text_only_rate=1.5", "data.explanatory_text_only_rate"),
        ("data.reason_seg_queries_per_image=0", "data.reason_seg_queries_per_image"),
    ],
)
def test_release_keys_are_validated(synthetic_root, tokenizer_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(synthetic_root, tokenizer_dir, override)


def test_release_recipe_samples_are_well_formed_and_train(every_dataset, tokenizer_dir):
    cfg = tiny_config(every_dataset, tokenizer_dir, PRETRAIN_TASKS, "data.num_workers=0", *RELEASE_DATA)
    assert cfg.data.reason_seg_queries_per_image is None
    pipeline = build_pipeline(cfg)
    stream = training_stream(cfg, pipeline.builder)
    seg_id, rej_id = pipeline.tokenizer.convert_tokens_to_ids([SEG_TOKEN, REJ_TOKEN])
    seen: Counter = Counter()
    first_draw: dict[str, int] = {}
    for draw in range(300):
        sample = stream[draw]
        name = sample.conversations[0].metadata["dataset"]
        seen[name] += 1
        first_draw.setdefault(name if len(sample.conversations) == 1 else "several conversations", draw)
        for conversation in sample.conversations:
            slots = [t for t in conversation.input_ids if t in (seg_id, rej_id)]
            assert [t == seg_id for t in slots] == conversation.slot_exists, name
            if DATASETS[name].task in ("sem_seg", "reason_seg"):
                assert all(conversation.slot_exists), name  # [REJ] only from the data
            if DATASETS[name].task == "refer_seg":
                assert any(conversation.slot_exists), name  # an all-[REJ] draw is drawn again
    assert set(seen) == {name for names in cfg.data.tasks.values() for name in names.datasets}
    batch_draws = [first_draw[name] for name in ("several conversations", "grefcoco", "paco_lvis", "llava_instruct_150k")]
    batch = Collator(pipeline.builder.pad_token_id, cfg.data.sam_image_size)([stream[draw] for draw in batch_draws])
    assert len(batch.input_ids) > len(batch_draws)  # a reasoning image with one conversation per query
    losses = pipeline.model(batch)
    assert all(math.isfinite(float(getattr(losses, key).detach())) for key in ("total", "ce", "bce", "dice"))
