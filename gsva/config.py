"""Typed configuration: nested dataclasses read from YAML, with dotted command-line overrides.

Every knob is documented in the YAML files under ``configs/``; this module owns the types, the
defaults and the validation. Unknown keys and wrong types fail before any model is built, and the
message names the dotted key and what was expected::

    cfg = load_config("configs/tiny_synthetic.yaml", ["optim.lr=1e-4", "run.seed=1"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from gsva.config_demo import ComponentPretrainConfig, SyntheticSpec


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or inconsistent."""


TASKS = ("sem_seg", "refer_seg", "vqa", "reason_seg")
"""Task families of the training mixture (the paper's SemSeg : RES : VQA : ReasonSeg)."""

PromptStyle = Literal["gsva", "gsva_release"]
"""Training phrasing (``data.prompt_style``): this project's, or the authors' released one."""

SlotOrder = Literal["shuffled", "listed"]
"""Order of a training sample's targets when it asks every candidate (``data.slot_order``)."""

AllRejected = Literal["swap_one", "redraw"]
"""What a referring draw whose every expression is no-target becomes (``data.all_rejected``)."""

PartTargets = Literal["class", "instance"]
"""What a target of PACO-LVIS and PASCAL-Part is (``data.part_targets``)."""

MapillaryUnlabeled = Literal["ignore", "class"]
"""What Mapillary's "unlabeled" label is (``data.mapillary_unlabeled``)."""


@dataclass
class RunConfig:
    output_dir: str = "runs/tiny_synthetic"
    seed: int = 0
    log_every: int = 10


EvalProtocol = Literal["teacher-forced", "generate"]
"""teacher-forced: the paper's protocol (decisions read off the ground-truth answer); generate:
free greedy decoding with KV cache, answers parsed into slots."""

EvalPromptStyle = Literal["gsva", "gsva_release", "lisa"]
"""gsva: one prompt per image naming all its expressions (the paper); gsva_release: the same with
the exact prompt of the authors' released evaluation; lisa: one single-target prompt per
expression."""


MetricVariant = Literal["gres", "gsva"]
"""GRES metrics: ``gres`` = the benchmark's definitions; ``gsva`` = the authors' released code's."""


@dataclass
class EvalConfig:
    """How benchmarks are scored, by training (``every`` updates, ``each_epoch``, ``at_end``) and
    by ``eval.py``, whose flags override these fields."""

    benchmarks: list[str] = field(default_factory=lambda: ["grefcoco:val"])
    """``<dataset>:<split>`` benchmarks, e.g. ``grefcoco:val``, ``refcocog:test``, ``reason_seg:val``."""
    protocol: EvalProtocol = "teacher-forced"
    prompt_style: EvalPromptStyle = "gsva"
    one_expression_per_prompt: bool = False
    """Referring benchmarks: ask the gsva question once per expression instead of once per image."""
    question_template: str = "please"
    """The gsva question (Table A2): a name of ``gsva.text.prompts.EVAL_QUESTIONS`` or a template
    containing ``{objs}``."""
    metric_variant: MetricVariant = "gres"
    """GRES: which gIoU/cIoU variant is printed and logged (both are in ``metrics.json``)."""
    batch_size: int = 8
    """Images per forward pass on each rank."""
    num_workers: int = 2
    """DataLoader workers per rank."""
    max_new_tokens: int = 128
    """Generation length limit (``protocol: generate``)."""
    visualize: int = 6
    """Overlay PNGs written per benchmark by a report (training's final evaluation, ``eval.py``)."""
    every: int = 0
    """Training: evaluate every this many optimizer updates (0 = never during training)."""
    each_epoch: bool = False
    """Training in ``schedule.mode: epochs``: evaluate at the end of each epoch."""
    at_end: bool = True
    """Training: evaluate the final weights and write their reports under ``<output_dir>/eval``."""


@dataclass
class TaskConfig:
    """One task of the training mixture: its sampling weight and its datasets (drawn uniformly)."""

    weight: float = 1.0
    datasets: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    dataset_dir: str = "data/synthetic"
    tasks: dict[str, TaskConfig] = field(
        default_factory=lambda: {"refer_seg": TaskConfig(weight=1.0, datasets=["grefcoco"])}
    )
    train_split: str = "train"
    num_classes_per_sample: int = 5
    prompt_style: PromptStyle = "gsva"
    """Training questions, answers and how they write expressions: ``gsva`` (this project's) or
    ``gsva_release``, the authors' released training code's, character for character (its four
    questions and five answer forms, expressions stripped of surrounding spaces and dots and
    lower-cased in the question, class names with their underscores; LISA's phrasings for
    reasoning queries). Evaluation prompts are chosen apart (``eval.prompt_style``)."""
    slot_order: SlotOrder = "shuffled"
    """Order of the targets of a sample whose image has fewer candidates than it may ask (all are
    asked): ``shuffled``, or ``listed`` (expressions in the order of the refs file, classes by id,
    part instances in annotation order, reasoning queries as written) as the authors' released
    code keeps them. A sample drawn among as many candidates or more is in random order either
    way."""
    absent_class_rate: float = 0.0
    """Semantic segmentation: chance that a sample also names made-up absent classes, answered
    ``[REJ]``. The authors' released code has none (0): its ``[REJ]`` come from the data only."""
    all_rejected: AllRejected = "swap_one"
    """Referring segmentation: a draw of only no-target expressions gets one of them swapped for an
    expression of the image that has a target (``swap_one``), or is drawn again (``redraw``, the
    authors' released code: the mixture draws a dataset of the task and an image anew; a full pass
    redraws the dataset's first image)."""
    single_target_rate: float = 0.0
    """Chance that a sample with one existing target is asked with the classic single-``[SEG]``
    phrasing. The authors' released code never does (0)."""
    part_targets: PartTargets = "class"
    """PACO-LVIS and PASCAL-Part: a target is a class (the union of its instances in the image), or
    one annotated instance (``instance``, the authors' released code)."""
    mapillary_unlabeled: MapillaryUnlabeled = "ignore"
    """Mapillary's "unlabeled" label: never a target (``ignore``), or a class like any other
    (``class``, the authors' released code)."""
    explanatory_rate: float = 0.0
    """ReasonSeg: chance that an answer not drawn text-only carries the image's explanation after
    its ``[SEG]`` (images that have one). The authors' released code: 0.5."""
    explanatory_text_only_rate: float = 0.0
    """ReasonSeg: chance that an image with an explanation is answered by the explanation alone
    (no ``[SEG]``, no mask). The authors' released code: 0.1 (its ``--explanatory``)."""
    reason_seg_queries_per_image: Optional[int] = 1
    """ReasonSeg: queries of an image asked per sample, one conversation each (fewer when the image
    has fewer); null = ``num_classes_per_sample``, as the authors' released code."""
    conversation: Literal["llava_v1", "llava_llama_2", "chat_template"] = "llava_v1"
    """Conversation template (``gsva.text.conversation``): LLaVA's ``llava_v1`` or ``llava_llama_2``,
    or ``chat_template``, the checkpoint tokenizer's own chat template (Qwen2.5-VL, InternVL,
    LLaVA-NeXT)."""
    sam_image_size: int = 1024
    clip_image_size: int = 224
    clip_preprocess: Literal["crop", "pad"] = "crop"
    """How an image becomes the MLLM's ``clip_image_size`` square: ``crop`` = shortest side resized,
    centre crop (CLIP's processor, as LLaVA-1.1 and GSVA); ``pad`` = padded to a square with the
    processor's mean colour, then resized (LLaVA-1.5's ``image_aspect_ratio: pad``)."""
    model_max_length: int = 512
    """Tokens per conversation before the image placeholder becomes the image's patch tokens: a
    dialogue is cut there, a training prompt drops whole targets to fit. The authors' released code
    cuts every conversation of a batch at 1024 tokens counted after the 256 CLIP patches replace
    the placeholder, i.e. at 769 here (1024 - 256 + 1)."""
    num_workers: int = 2
    group_by_length: bool = False
    pin_memory: bool = True
    prefetch_factor: int = 4
    feature_cache: Optional[str] = None
    on_bad_sample: Literal["error", "skip"] = "error"
    max_bad_samples: int = 100
    synthetic: Optional[SyntheticSpec] = None


@dataclass
class TinyDims:
    """Sizes of the randomly initialised components built when no checkpoint is given."""

    vocab_size: int = 512
    llm_hidden_size: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    llm_intermediate_size: int = 344
    clip_hidden_size: int = 64
    clip_layers: int = 3
    clip_heads: int = 4
    clip_patch_size: int = 8
    sam_embed_dim: int = 64
    sam_depth: int = 2
    sam_heads: int = 4
    sam_patch_size: int = 8
    sam_window_size: int = 0
    prompt_embed_dim: int = 64
    decoder_mlp_dim: int = 256
    decoder_heads: int = 4
    llm_max_position_embeddings: int = 1024
    use_im_start_end: bool = False
    """Wrap the image patches in ``<im_start>``/``<im_end>`` (adds both tokens), as the released GSVA."""
    sam_global_attn_indexes: Optional[list[int]] = None
    """SAM encoder blocks with global attention; None = every block when ``sam_window_size`` is 0,
    else the last block."""
    sam2_embed_dim: int = 16
    """Tiny SAM2 (``model.mask_decoder: sam2`` without ``model.sam2_path``): width of the first of
    its Hiera encoder's four stages, doubled at each next one. Its FPN, prompt encoder and mask
    decoder are ``prompt_embed_dim`` wide; the decoder has ``decoder_heads`` and ``decoder_mlp_dim``."""
    sam2_heads: int = 1
    """Tiny SAM2: attention heads of the first Hiera stage, doubled at each next one."""
    sam2_blocks_per_stage: list[int] = field(default_factory=lambda: [1, 1, 2, 1])
    """Tiny SAM2: blocks of each of the four Hiera stages."""
    sam2_patch_stride: int = 4
    """Tiny SAM2: pixels per side of one first-stage patch (SAM2's own: 4, its kernel 7); the image
    embedding is 4 × this (an 8 × 8 embedding at the demo's 64 px takes 2, as the tiny SAM's
    8 px patches do)."""
    sam2_window_sizes: list[int] = field(default_factory=lambda: [4, 4, 2, 2])
    """Tiny SAM2: attention window side of each Hiera stage (the first stage's must divide
    ``data.sam_image_size`` / ``sam2_patch_stride``)."""
    sam2_global_attn_indexes: list[int] = field(default_factory=lambda: [3])
    """Tiny SAM2: Hiera blocks (counted over all stages) with global attention."""


@dataclass
class ModelConfig:
    backbone: Literal["auto", "llava", "llava_hf", "qwen2_5_vl", "internvl", "llava_next"] = "auto"
    """The multimodal LLM (``gsva.model.backbones``): ``auto`` = as the checkpoint's
    ``config.json`` says (the original LLaVA layout, llava-hf, Qwen2.5-VL, InternVL-hf or
    LLaVA-NeXT); a named kind must match the checkpoint. Without a checkpoint: a random tiny LLaVA."""
    llava_path: Optional[str] = None
    """The multimodal LLM's checkpoint directory (any kind of ``backbone``)."""
    tokenizer_path: Optional[str] = None
    vision_tower_path: Optional[str] = None
    mask_decoder: Literal["sam", "sam2"] = "sam"
    """The promptable segmenter the [SEG] queries drive (``gsva.model.mask_head``): ``sam``
    (``segment_anything``'s SAM of ``sam_type``/``sam_checkpoint``; the paper) or ``sam2``
    (transformers' ``Sam2Model`` of ``sam2_path``: its image is stretched to the
    ``data.sam_image_size`` square without padding, and the query is one sparse prompt token of
    its mask decoder). Either way the mask decoder and the query projector train, the image and
    prompt encoders stay frozen."""
    sam_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    sam_checkpoint: Optional[str] = None
    sam2_path: Optional[str] = None
    """``mask_decoder: sam2``: a ``Sam2Model`` directory in transformers' ``save_pretrained`` layout
    (``config.json`` + ``model.safetensors``, e.g. a download of ``facebook/sam2.1-hiera-large``),
    whose input size must be ``data.sam_image_size``; null = a random tiny SAM2 (``tiny.sam2_*``)."""
    init_weights: Optional[str] = None
    tiny: TinyDims = field(default_factory=TinyDims)
    finetune: Literal["lora", "full", "frozen"] = "lora"
    """How the LLM trains: ``lora`` (adapters of rank ``lora_r`` on ``lora_target_modules``, plus
    the token embeddings and lm_head, where the new token rows live), ``full`` (every LLM weight)
    or ``frozen`` (none). SAM's mask decoder and the query projector train in every case."""
    lora_r: int = 8
    """LoRA rank (``finetune: lora``): the paper's 8 for 7B, 64 for 13B."""
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    seg_token_mode: Literal["shared", "individual"] = "shared"
    num_individual_seg_tokens: int = 8
    use_rej_token: bool = True
    gradient_checkpointing: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    ce_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    mask_loss_normalization: Literal["authors", "seg_only"] = "authors"
    mm_projector_init: Literal["pretrained", "random"] = "pretrained"
    """The (frozen) image projector: ``pretrained`` = the LLaVA checkpoint's; ``random`` = a fresh
    projector of the same type with PyTorch's default ``nn.Linear`` initialisation, as the authors'
    released code trains (it rebuilds the projector after loading LLaVA). A random projector is
    saved with the trainable weights, and a GSVA weights file that holds one always wins."""
    new_token_init: Literal["mean", "normal"] = "mean"
    """Rows added to the embeddings and lm_head for the task tokens: ``mean`` = the mean of the
    checkpoint's rows (transformers' mean resizing); ``normal`` = N(0, initializer_range = 0.02),
    what transformers 4.44, pinned by the authors' released code, gives them."""
    use_im_start_end: Literal["auto", True, False] = "auto"
    """Wrap the image in ``<im_start>``/``<im_end>`` (and add both tokens after ``[SEG]``/``[REJ]``):
    ``auto`` = as the LLaVA checkpoint's ``mm_use_im_start_end`` says (``tiny.use_im_start_end``
    for a random tiny LLaVA); ``true`` always, as the authors' released code does; ``false`` never."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    sam_side_lr_scale: float = 1.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    warmup_steps: int = 100
    micro_batch_size: int = 2
    grad_accum_steps: int = 10
    global_batch_size: Optional[int] = None
    max_consecutive_nonfinite: int = 3
    zero_stage: int = 2


@dataclass
class ScheduleConfig:
    mode: Literal["steps", "epochs"] = "steps"
    steps: int = 5000
    """Optimizer updates in ``steps`` mode (each of ``micro_batch_size`` x ``grad_accum_steps`` x
    ranks samples)."""
    epochs: int = 10
    lr_decay_steps: Optional[int] = None
    """Optimizer step at which the linear decay would reach 0; None = the run's own last step.
    The released code fixes it at 5,000 even when finetuning for fewer updates."""
    save_every: int = 5000
    keep_last: int = 2


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    components: ComponentPretrainConfig = field(default_factory=ComponentPretrainConfig)


MOVED_KEYS = {
    "run.eval_at_end": "eval.at_end",
    "run.eval_benchmarks": "eval.benchmarks",
    "run.eval_every": "eval.every",
    "run.eval_each_epoch": "eval.each_epoch",
    "run.eval_batch_size": "eval.batch_size",
    "run.eval_prompt_style": "eval.prompt_style",
    "run.eval_metric_variant": "eval.metric_variant",
    "run.num_visualizations": "eval.visualize",
    "data.eval_dataset": "eval.benchmarks (<dataset>:<split>)",
    "data.eval_split": "eval.benchmarks (<dataset>:<split>)",
}
"""Keys of earlier config files -> where they live now (named in the error a stale key gets)."""


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against ``annotation`` and build nested dataclasses; raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(value, inner, key)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return _build(annotation, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_convert(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation)
        return {name: _convert(item, value_type, f"{key}.{name}") for name, item in value.items()}
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is meant as a number.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        if key in MOVED_KEYS:
            raise ConfigError(f"{key} is now {MOVED_KEYS[key]}: rename it in the config file or override")
        raise ConfigError(f"unknown key {key}; allowed keys here: {names}")
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as error:  # a section's own checks (e.g. the synthetic spec's)
        raise ConfigError(f"{prefix or 'config'}: {error}") from None


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    dotted, raw = override.split("=", 1)
    parts = dotted.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def validate(cfg: Config) -> None:
    """Cross-field checks that no single type annotation can express."""
    if cfg.data.num_classes_per_sample < 1:
        raise ConfigError("data.num_classes_per_sample must be >= 1")
    _validate_tasks(cfg.data)
    _validate_sampling(cfg.data)
    _validate_eval(cfg.eval)
    _validate_mask_decoder(cfg)
    if (
        cfg.model.mask_decoder == "sam"
        and cfg.model.sam_type != "tiny"
        and cfg.model.sam_checkpoint is None
        and not cfg.components.enabled
    ):
        raise ConfigError(
            f"model.sam_checkpoint is required for model.sam_type={cfg.model.sam_type!r} "
            "(e.g. sam_vit_h_4b8939.pth); use model.sam_type=tiny for a random tiny SAM"
        )
    if cfg.data.group_by_length and cfg.schedule.mode != "epochs":
        raise ConfigError(
            f"data.group_by_length applies to schedule.mode: epochs (got {cfg.schedule.mode!r}); "
            "set data.group_by_length=false for the sampled task mixture"
        )
    if cfg.optim.micro_batch_size < 1 or cfg.optim.grad_accum_steps < 1:
        raise ConfigError("optim.micro_batch_size and optim.grad_accum_steps must be >= 1")
    if cfg.optim.zero_stage not in (0, 1, 2):
        raise ConfigError(f"optim.zero_stage: {cfg.optim.zero_stage} not supported; expected 0, 1 or 2")
    _validate_global_batch(cfg.optim)
    _validate_minimums(cfg)
    _validate_model(cfg.model)


def _validate_tasks(data: DataConfig) -> None:
    """Task names, weights and non-empty dataset lists (the dataset names themselves are checked
    against the dataset catalog where datasets are opened: ``gsva.data.catalog.check_dataset_names``)."""
    if not data.tasks:
        raise ConfigError("data.tasks is empty; name at least one task with its datasets")
    for task, spec in data.tasks.items():
        if task not in TASKS:
            raise ConfigError(f"data.tasks.{task}: unknown task; expected one of {list(TASKS)}")
        if spec.weight <= 0:
            raise ConfigError(f"data.tasks.{task}.weight must be > 0, got {spec.weight}")
        if not spec.datasets:
            raise ConfigError(f"data.tasks.{task}.datasets is empty")


def _validate_sampling(data: DataConfig) -> None:
    """Rates are probabilities; counts are positive."""
    for key in ("absent_class_rate", "single_target_rate", "explanatory_rate", "explanatory_text_only_rate"):
        value = getattr(data, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{key} must be within [0, 1], got {value}")
    if data.reason_seg_queries_per_image is not None and data.reason_seg_queries_per_image < 1:
        raise ConfigError(
            f"data.reason_seg_queries_per_image must be >= 1 or null (= data.num_classes_per_sample), "
            f"got {data.reason_seg_queries_per_image}"
        )


def _validate_eval(settings: EvalConfig) -> None:
    """Counts, and a question template that names where the expressions go."""
    for key in ("batch_size", "max_new_tokens"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"eval.{key} must be >= 1, got {getattr(settings, key)}")
    for key in ("num_workers", "visualize", "every"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"eval.{key} must be >= 0, got {getattr(settings, key)}")
    if not settings.benchmarks:
        raise ConfigError("eval.benchmarks is empty; name at least one <dataset>:<split>, e.g. grefcoco:val")


def _validate_model(model: ModelConfig) -> None:
    """The LoRA rank of a LoRA finetune, and choices that a ``Literal`` check lets through (YAML 1
    and 0 compare equal to true and false)."""
    if model.finetune == "lora" and model.lora_r < 1:
        raise ConfigError(
            f"model.lora_r={model.lora_r} with model.finetune=lora: the rank must be >= 1. To train the whole LLM "
            "set model.finetune=full; to keep it frozen, model.finetune=frozen"
        )
    if not (isinstance(model.use_im_start_end, bool) or model.use_im_start_end == "auto"):
        raise ConfigError(f"model.use_im_start_end: {model.use_im_start_end!r} is not allowed; expected auto, true or false")


def _validate_mask_decoder(cfg: Config) -> None:
    """Keys that belong to the other ``model.mask_decoder``, and the feature cache, which holds SAM
    embeddings only."""
    model = cfg.model
    if model.mask_decoder == "sam" and model.sam2_path is not None:
        raise ConfigError("model.sam2_path applies to model.mask_decoder=sam2; set model.mask_decoder=sam2 or model.sam2_path=null")
    if model.mask_decoder == "sam2" and model.sam_checkpoint is not None:
        raise ConfigError("model.sam_checkpoint applies to model.mask_decoder=sam; SAM2's checkpoint is model.sam2_path")
    if model.mask_decoder == "sam2" and cfg.data.feature_cache is not None:
        raise ConfigError(
            "data.feature_cache holds SAM image embeddings only and cannot serve model.mask_decoder=sam2 (three "
            "SAM2 feature levels per image); set data.feature_cache=null or model.mask_decoder=sam"
        )


def _validate_global_batch(optim: OptimConfig) -> None:
    """``optim.global_batch_size``, when set, takes a whole number of ranks' optimizer steps."""
    if optim.global_batch_size is None:
        return
    per_rank = optim.micro_batch_size * optim.grad_accum_steps
    if optim.global_batch_size < 1 or optim.global_batch_size % per_rank:
        raise ConfigError(
            f"optim.global_batch_size={optim.global_batch_size} must be a positive multiple of "
            f"optim.micro_batch_size × optim.grad_accum_steps = {optim.micro_batch_size} × {optim.grad_accum_steps} "
            f"= {per_rank} (the samples of one optimizer step on each rank); set it to {per_rank} × the number "
            "of ranks, or to null to skip the check"
        )


def check_global_batch(cfg: Config, world_size: int) -> None:
    """At launch, when ``world_size`` is known: ``optim.global_batch_size`` (when set) must equal
    ``optim.micro_batch_size`` × ``optim.grad_accum_steps`` × ``world_size``; ConfigError otherwise,
    with the ``optim.grad_accum_steps`` that would fit when a whole one exists."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    optim = cfg.optim
    requested = optim.global_batch_size
    if requested is None:
        return
    actual = optim.micro_batch_size * optim.grad_accum_steps * world_size
    if actual == requested:
        return
    per_accumulation = optim.micro_batch_size * world_size
    if requested % per_accumulation == 0:
        hint = f"set optim.grad_accum_steps={requested // per_accumulation} to fit"
    else:
        hint = (
            f"no whole optim.grad_accum_steps fits, as {requested} is not a multiple of optim.micro_batch_size × "
            f"world size = {per_accumulation}; change optim.micro_batch_size, the number of ranks or "
            "optim.global_batch_size"
        )
    raise ConfigError(
        f"optim.global_batch_size={requested}, but optim.micro_batch_size ({optim.micro_batch_size}) × "
        f"optim.grad_accum_steps ({optim.grad_accum_steps}) × world size ({world_size}) = {actual}; {hint}"
    )


def _validate_minimums(cfg: Config) -> None:
    """Counts and limits that have a lower bound."""
    decay = cfg.schedule.lr_decay_steps
    decay_steps = [] if decay is None else [("schedule.lr_decay_steps", decay, cfg.optim.warmup_steps + 1)]
    for key, value, minimum in (
        ("schedule.steps", cfg.schedule.steps, 1),
        *decay_steps,
        ("optim.max_consecutive_nonfinite", cfg.optim.max_consecutive_nonfinite, 1),
        ("data.max_bad_samples", cfg.data.max_bad_samples, 0),
        ("data.prefetch_factor", cfg.data.prefetch_factor, 1),
        ("data.num_workers", cfg.data.num_workers, 0),
    ):
        if value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _merge(cls: type, base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: sections (dataclass fields) merge key by key; every other value,
    mappings such as ``data.tasks`` included, is replaced as a whole."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in override.items():
        annotation = hints.get(key)
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(annotation, merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of ``path`` on top of the files its ``base:`` key names (relative paths,
    one or a list, applied in order)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        where = f" (named as base by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    loaded = yaml.safe_load(path.read_text())
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bases = loaded.pop("base", [])
    tree: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        tree = _merge(Config, tree, _read_tree(path.parent / base, chain + (path,)))
    return _merge(Config, tree, loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or the defaults when ``path`` is None) and apply ``key.sub=value`` overrides.

    A file may start from others with ``base: other.yaml`` (or a list): its sections are merged
    over theirs, key by key.
    """
    tree = _read_tree(Path(path)) if path is not None else {}
    for override in overrides or []:
        _apply_override(tree, override)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg
