"""The diffusers backends on CUDA (bf16, offload, residency): skipped without a GPU."""

import numpy as np
import pytest
from PIL import Image

from nhr.backends.diffusers_kontext import KontextEditor
from nhr.backends.diffusers_levers import Levers
from nhr.backends.diffusers_runtime import DiffusersOptions, Residency
from nhr.backends.diffusers_t2i import DiffusersTextToImage
from nhr.backends.tiny_diffusers import write_tiny_models

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("tiny-gpu"))


def test_auto_is_bf16_on_cuda():
    import torch

    opts = DiffusersOptions()
    assert opts.resolved_device() == "cuda" and opts.resolved_dtype() == torch.bfloat16


@pytest.mark.parametrize("offload", ["none", "model", "sequential"])
def test_t2i_and_kontext_on_cuda(tiny_dir, offload):
    opts = DiffusersOptions(device="cuda", cpu_offload=offload, vae_tiling=offload != "none")
    res = Residency()
    t2i = DiffusersTextToImage(str(tiny_dir["flux-t2i"]), opts, res)
    images = t2i.generate(["a red cube"] * 2, [1, 2], [(96, 32)] * 2, 2, 0.0)
    again = t2i.generate(["a red cube"], [2], [(96, 32)], 2, 0.0)
    assert [i.size for i in images] == [(96, 32)] * 2
    diff = np.abs(np.asarray(images[1], np.int16) - np.asarray(again[0], np.int16))
    assert diff.mean() < 2  # bf16 batching may move a few levels, not the image
    editor = KontextEditor(str(tiny_dir["flux-kontext"]), opts, max_area=64 * 64, residency=res)
    out = editor.edit([images[0]] * 2, ["make it blue"] * 2, [3, 4], [2, 3], 2.5)
    assert [o.size for o in out] == [(96, 32)] * 2
    assert res.active is editor.holder
    if offload == "none":  # the text-to-image model left the GPU for the editor
        assert t2i.holder.pipe.transformer.device.type == "cpu"
        t2i.generate(["x"], [1], [(32, 32)], 2, 0.0)
        assert t2i.holder.pipe.transformer.device.type == "cuda"
        assert editor.holder.pipe.transformer.device.type == "cpu"
    assert editor.usage()["device_seconds"] > 0


def test_kontext_compiled_matches_eager(tiny_dir):
    src = Image.effect_noise((64, 64), 50).convert("RGB")
    eager_opts = DiffusersOptions(device="cuda", levers=Levers(compile="none"))
    eager = KontextEditor(str(tiny_dir["flux-kontext"]), eager_opts, 4096)
    comp = KontextEditor(
        str(tiny_dir["flux-kontext"]), DiffusersOptions(device="cuda", levers=Levers("full")), 4096
    )
    a = eager.edit([src], ["x"], [1], [2], 2.5)[0]
    b = comp.edit([src], ["x"], [1], [2], 2.5)[0]
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean() < 3
