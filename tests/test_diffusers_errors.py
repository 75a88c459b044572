"""Each failure of the diffusers backends is one clear line naming the thing and the fix."""

import diffusers
import httpx
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from PIL import Image

from nhr.backends.diffusers_kontext import KontextEditor
from nhr.backends.diffusers_qwen_edit import QwenImageEditor
from nhr.backends.diffusers_runtime import DiffusersOptions
from nhr.backends.diffusers_t2i import DiffusersTextToImage
from nhr.config import PipelineConfig
from nhr.errors import BackendError, ConfigError

CPU = DiffusersOptions(device="cpu", dtype="float32")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and " — " in text
    return text


def hub_error(cls, status: int):
    """A Hub error as huggingface_hub raises it, with its HTTP response."""
    url = "https://huggingface.co/api/models/org/name"
    return cls(
        f"{status} Client Error", response=httpx.Response(status, request=httpx.Request("GET", url))
    )


def load(model: str) -> None:
    KontextEditor(model, CPU).holder.get()


def test_unknown_model_id_invalid_name():
    with pytest.raises(BackendError) as err:
        load("not a model id!")
    assert "unknown editor model id 'not a model id!'" in one_line(err)


def test_unknown_model_id_from_the_hub(monkeypatch):
    def missing(*a, **k):
        try:
            raise hub_error(RepositoryNotFoundError, 404)
        except RepositoryNotFoundError as e:  # diffusers re-raises as OSError from it
            raise OSError("Cannot load model: not cached locally") from e

    monkeypatch.setattr(diffusers.FluxKontextPipeline, "from_pretrained", missing)
    with pytest.raises(BackendError) as err:
        load("some-org/no-such-model")
    text = one_line(err)
    assert "unknown editor model id 'some-org/no-such-model'" in text and "HF_TOKEN" in text


def test_missing_cache_offline_names_the_variable_and_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError) as err:
        load("no-such-org/no-such-model")  # the real from_pretrained, nothing cached
    text = one_line(err)
    assert "HF_HUB_OFFLINE=1" in text and str(constants.HF_HUB_CACHE) in text
    assert "not in the Hugging Face cache" in text


def test_gated_model_without_token(monkeypatch):
    seen = {}

    def gated(model, **kwargs):
        seen.update(kwargs)
        try:
            raise hub_error(GatedRepoError, 401)
        except GatedRepoError as e:
            raise OSError("Cannot load model") from e

    monkeypatch.setattr(diffusers.FluxKontextPipeline, "from_pretrained", gated)
    monkeypatch.setenv("MY_HF_TOKEN", "hf_secret")
    opts = DiffusersOptions(device="cpu", hf_token_env="MY_HF_TOKEN")
    with pytest.raises(BackendError) as err:
        KontextEditor("black-forest-labs/FLUX.1-Kontext-dev", opts).holder.get()
    text = one_line(err)
    assert "is gated" in text and "$MY_HF_TOKEN" in text and "hf_secret" not in text
    assert seen["token"] == "hf_secret" and seen["dtype"] == torch.float32
    monkeypatch.delenv("MY_HF_TOKEN")
    with pytest.raises(BackendError, match="is gated"):
        KontextEditor("black-forest-labs/FLUX.1-Kontext-dev", opts).holder.get()
    assert seen["token"] is None


def test_missing_local_folder_and_not_a_pipeline(tmp_path):
    with pytest.raises(BackendError) as err:
        load(str(tmp_path / "nope"))
    assert "does not exist" in one_line(err) and "nhr tiny-models" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError) as err:
        load(str(tmp_path / "empty"))
    assert "no model_index.json" in one_line(err)


class RaisingPipe:
    """A stand-in pipeline that runs out of GPU memory."""

    vae_scale_factor = 8

    def __call__(self, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_cuda_out_of_memory_names_the_options():
    editor = KontextEditor("black-forest-labs/FLUX.1-Kontext-dev", CPU, max_area=64 * 64)
    editor.holder.pipe = RaisingPipe()
    with pytest.raises(BackendError) as err:
        editor.edit([Image.new("RGB", (40, 30))] * 2, ["x", "y"], [1, 2], [2, 2], 2.5)
    text = one_line(err)
    assert "out of GPU memory" in text and "2 image(s)" in text
    assert "DIFFUSERS_CPU_OFFLOAD" in text and "DIFFUSERS_MAX_BATCH" in text
    t2i = DiffusersTextToImage("black-forest-labs/FLUX.1-schnell", CPU)
    t2i.holder.pipe = RaisingPipe()
    with pytest.raises(BackendError, match="out of GPU memory"):
        t2i.generate(["p"], [1], [(64, 64)], 4, 0.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(BackendError) as err:
        DiffusersOptions(device="cuda").resolved_device()
    assert "DIFFUSERS_DEVICE: cpu" in one_line(err)


def test_config_refuses_unknown_device_and_backend():
    with pytest.raises(ConfigError, match="DIFFUSERS_DEVICE"):
        PipelineConfig(diffusers_device="tpu")
    with pytest.raises(ConfigError, match="flux-kontext"):
        PipelineConfig(editor="kontext")
    cfg = PipelineConfig(
        editor="qwen-image-edit", t2i="diffusers", gate_judge="plumbing-accept-all"
    )
    assert cfg.diffusers.diffusers_dtype == "auto" and cfg.edits.edit_max_area == 0


def test_qwen_editor_call_arguments_and_sizes():
    calls = []

    class QwenPipe:
        vae_scale_factor = 8

        def __call__(self, **kw):
            calls.append(kw)
            return type(
                "Out",
                (),
                {"images": [Image.new("RGB", (kw["width"], kw["height"]))] * len(kw["image"])},
            )

    editor = QwenImageEditor("", CPU)
    editor.holder.pipe = QwenPipe()
    assert editor.model_id == "Qwen/Qwen-Image-Edit"
    out = editor.edit([Image.new("RGB", (300, 50))] * 2, ["a", "b"], [1, 2], [20, 20], 4.0)
    assert [o.size for o in out] == [(300, 50)] * 2 and len(calls) == 1
    kw = calls[0]
    assert kw["true_cfg_scale"] == 4.0 and kw["negative_prompt"] == [" ", " "]
    assert kw["width"] % 16 == 0 and abs(kw["width"] * kw["height"] - 1024**2) < 0.05 * 1024**2
    assert all(im.size == (kw["width"], kw["height"]) for im in kw["image"])
    assert [g.initial_seed() for g in kw["generator"]] == [1, 2]
