"""EDITOR_LORA: a LoRA loaded into a diffusers editor, named in the editor id of every
row; the same LoRA named in the model id (``MODEL+lora=PATH@SCALE``)."""

import numpy as np
import pytest
from PIL import Image

from nhr.backends.diffusers_kontext import KontextEditor
from nhr.backends.diffusers_runtime import DiffusersOptions, LoraSpec, split_lora
from nhr.backends.registry import build_backends
from nhr.backends.tiny_diffusers import build_tiny
from nhr.config import PipelineConfig
from nhr.errors import BackendError

CPU = DiffusersOptions(device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny_kontext(tmp_path_factory):
    """A tiny Kontext folder and a random LoRA for it, saved by diffusers' own writer."""
    import torch
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora")
    pipe = build_tiny("flux-kontext")
    pipe.save_pretrained(root / "model")
    torch.manual_seed(1)
    pipe.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_v"])
    )
    for name, p in pipe.transformer.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    layers = get_peft_model_state_dict(pipe.transformer)
    FluxKontextPipeline.save_lora_weights(root / "lora", transformer_lora_layers=layers)
    return root


def test_split_lora_reads_the_spec():
    assert split_lora("org/model") == ("org/model", None)
    assert split_lora("org/model+lora=runs/x/lora@0.5") == (
        "org/model",
        LoraSpec("runs/x/lora", 0.5),
    )
    assert split_lora("m+lora=me/my-lora") == ("m", LoraSpec("me/my-lora", 1.0))
    assert LoraSpec("a/b", 0.75).label() == "+lora=a/b@0.75"
    with pytest.raises(BackendError, match="empty LoRA"):
        split_lora("m+lora=")


def test_editor_lora_changes_edits_and_names_itself(tiny_kontext):
    model, lora = str(tiny_kontext / "model"), str(tiny_kontext / "lora")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))

    def edit(editor: KontextEditor) -> np.ndarray:
        out = editor.edit([img], ["make it red"], [3], [2], 2.5)
        return np.asarray(out[0], dtype=np.int16)

    base = KontextEditor(model, CPU, max_area=64 * 64)
    with_lora = KontextEditor(model, CPU, max_area=64 * 64, lora=lora, lora_scale=1.0)
    in_id = KontextEditor(f"{model}+lora={lora}@1", CPU, max_area=64 * 64)
    off = KontextEditor(model, CPU, max_area=64 * 64, lora=lora, lora_scale=0.0)
    assert with_lora.model_id == f"{model}+lora={lora}@1" == in_id.model_id
    a, b = edit(base), edit(with_lora)
    assert np.abs(a - b).mean() > 1.0
    assert np.array_equal(b, edit(in_id))
    assert np.abs(a - edit(off)).max() <= 1  # scale 0: the base model


def test_lora_errors_are_clear(tiny_kontext, tmp_path):
    model = str(tiny_kontext / "model")
    with pytest.raises(BackendError, match="given twice"):
        KontextEditor(f"{model}+lora=x", CPU, lora="y")
    missing = KontextEditor(model, CPU, max_area=64 * 64, lora=str(tmp_path / "nope"))
    with pytest.raises(BackendError, match="does not exist"):
        missing.load()
    cfg = PipelineConfig.from_params({"EDITOR": "synthetic", "EDITOR_LORA": "x"})
    with pytest.raises(BackendError, match="EDITOR_LORA='x' with EDITOR=synthetic"):
        build_backends(cfg, tmp_path).get("editor")
