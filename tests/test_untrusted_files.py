"""Weights brought by the user never run code: a ``.pth``/``.bin``/``.pt`` pickle whose
``__reduce__`` calls ``os.system`` is refused by every loader (SAM checkpoint, released GSVA/LISA
weights, the LLaVA projector, DeepSpeed checkpoints through the export), and no loader lets a
model or tokenizer directory run its own code (``trust_remote_code``).

Annotation pickles (RefCOCO ``refs(*).p``, Ref-ZOM) go through ``gsva.data.safe_pickle``, tested in
``tests/test_refer_readers.py::test_safe_pickle_refuses_code``.
"""

import ast
import builtins
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from gsva.config import TinyDims
from gsva.engine.deepspeed_files import load_deepspeed_file
from gsva.engine.export import export_checkpoint
from gsva.model.mllm import _read_projector_state
from gsva.model.released import read_released_state
from gsva.model.sam import build_tiny_sam, load_sam_state
from tests.conftest import REPO, TINY_CONFIG


class Payload:
    """Unpickling it runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_malicious(path: Path, marker: Path, legacy: bool) -> Path:
    """A weights file whose state dict holds the payload: torch's zip format, or a bare pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"weight": torch.zeros(2), "trap": Payload(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(params=["zip", "legacy"])
def malicious(request, tmp_path):
    """(write(path) -> path, marker): the marker appears only if the payload runs."""
    marker = tmp_path / "payload_ran"
    return (lambda path: write_malicious(path, marker, request.param == "legacy")), marker


@pytest.mark.parametrize("legacy", [False, True])
def test_the_payload_runs_when_unpickled_without_restriction(tmp_path, legacy):
    marker = tmp_path / "payload_ran"
    path = write_malicious(tmp_path / "control.pth", marker, legacy)
    if legacy:
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_sam_checkpoint(malicious, tmp_path):
    write, marker = malicious
    sam = build_tiny_sam(TinyDims(), 64)
    path = write(tmp_path / "sam_vit_h.pth")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(path))) as refused:
        load_sam_state(sam, path)
    assert "weights_only=False" not in str(refused.value)  # never the advice to run the file's code
    assert not marker.exists()


def test_released_gsva_bin(malicious, tmp_path):
    write, marker = malicious
    path = write(tmp_path / "gsva.bin")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(path))):
        read_released_state(path, "gsva-bin")
    assert not marker.exists()


def test_released_lisa_shards(malicious, tmp_path):
    write, marker = malicious
    directory = tmp_path / "lisa"
    write(directory / "pytorch_model-00001-of-00001.bin")
    index = {"weight_map": {"weight": "pytorch_model-00001-of-00001.bin"}}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(pickle.UnpicklingError, match=r"pytorch_model-00001-of-00001\.bin"):
        read_released_state(directory, "lisa-hf")
    assert not marker.exists()


def test_llava_projector_bin(malicious, tmp_path):
    write, marker = malicious
    directory = tmp_path / "llava"
    write(directory / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(directory / "pytorch_model.bin"))):
        _read_projector_state(directory)
    assert not marker.exists()


def deepspeed_checkpoint(root: Path, files: dict[str, Path | None], write) -> Path:
    """``<root>/checkpoints`` with tag step1 holding ``files`` (None: the malicious file)."""
    tag = root / "checkpoints" / "step1"
    tag.mkdir(parents=True)
    (root / "checkpoints" / "latest").write_text("step1")
    for name, source in files.items():
        if source is None:
            write(tag / name)
        else:
            shutil.copy(source, tag / name)
    return root / "checkpoints"


@pytest.mark.parametrize(
    "malicious_file",
    [
        "mp_rank_00_model_states.pt",  # stage 0: the module state is read directly
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",  # ZeRO 1/2: DeepSpeed's zero_to_fp32 would read it
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ],
)
def test_deepspeed_checkpoint_export(malicious, tmp_path, malicious_file):
    write, marker = malicious
    benign = tmp_path / "benign.pt"
    torch.save({"module": {}, "global_steps": 1}, benign)
    files = {"mp_rank_00_model_states.pt": benign, malicious_file: None}
    checkpoints = deepspeed_checkpoint(tmp_path / "run", files, write)
    overrides = ["components.enabled=false", "data.synthetic=null"]
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(checkpoints / "step1" / malicious_file))):
        export_checkpoint(checkpoints, tmp_path / "out", config=TINY_CONFIG, overrides=overrides)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_deepspeed_checkpoint_classes_are_allowed(tmp_path):
    """What DeepSpeed pickles into its files (fp16: the dynamic loss scaler) still loads."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {
        "loss_scaler": LossScaler(scale=1.0),
        "fp16_loss_scaler": DynamicLossScaler(
            init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False
        ),
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"weight": fragment_address(numel=4, start=0)}],
        "single_partition_of_fp32_groups": [torch.arange(4.0)],
    }
    torch.save(state, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    loaded = load_deepspeed_file(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["fp16_loss_scaler"].cur_scale == 2.0**16
    assert loaded["param_slice_mappings"][0]["weight"] == fragment_address(numel=4, start=0)
    assert torch.equal(loaded["single_partition_of_fp32_groups"][0], torch.arange(4.0))


def test_refused_deepspeed_file_is_named(tmp_path):
    marker = tmp_path / "payload_ran"
    path = write_malicious(tmp_path / "mp_rank_00_model_states.pt", marker, legacy=False)
    with pytest.raises(pickle.UnpicklingError, match=rf"{re.escape(str(path))}.*(posix|os)\.system"):
        load_deepspeed_file(path)
    assert not marker.exists()


def source_files() -> list[Path]:
    return sorted([*(REPO / "gsva").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), REPO / "train.py", REPO / "eval.py"])


def calls(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Call)]


def test_no_call_trusts_remote_code():
    """``trust_remote_code`` is never passed, or passed as the literal False."""
    offending = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in source_files()
        for call in calls(path)
        for keyword in call.keywords
        if keyword.arg == "trust_remote_code" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False)
    ]
    assert offending == []


def test_pretrained_loaders_cannot_be_handed_trust_remote_code():
    """No ``from_pretrained`` call forwards ``**kwargs`` (which could carry ``trust_remote_code``)."""
    forwarding = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in source_files()
        for call in calls(path)
        if isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained"
        and any(keyword.arg is None for keyword in call.keywords)
    ]
    assert forwarding == []


def test_tokenizer_directory_with_custom_code_is_refused(tokenizer_dir, tmp_path, monkeypatch):
    """A tokenizer directory that asks to run its own Python class: transformers' default refuses
    it (the user declines at its prompt, or there is no prompt) and the code never runs."""
    from gsva.text.tokenizer import load_tokenizer

    marker = tmp_path / "payload_ran"
    directory = tmp_path / "tokenizer"
    shutil.copytree(tokenizer_dir, directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(tokenizer_class="EvilTokenizerFast", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizerFast"]})
    config_file.write_text(json.dumps(config))
    (directory / "evil.py").write_text(f"import os\nos.system('touch {marker}')\n")
    monkeypatch.setattr(builtins, "input", lambda prompt="": "")  # the prompt's default answer: no
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_tokenizer(directory, 512)
    assert not marker.exists()
