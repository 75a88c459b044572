"""The tiny random Qwen-Image-Edit pipeline (built in code, tokenizer and processor
included) saved and loaded through ``from_pretrained``, editing through the nhr editor.
Slow: the pipeline encodes its condition image at about 1024² whatever the output size
(about 20 s a call on a busy 2-core CPU)."""

import numpy as np
import pytest
from PIL import Image

from nhr.backends.diffusers_qwen_edit import QwenImageEditor
from nhr.backends.diffusers_runtime import DiffusersOptions
from nhr.backends.tiny_diffusers import build_tiny


@pytest.mark.slow
def test_tiny_qwen_image_edit_loads_and_edits(tmp_path):
    build_tiny("qwen-image-edit").save_pretrained(tmp_path / "qwen")
    editor = QwenImageEditor(
        str(tmp_path / "qwen"), DiffusersOptions(device="cpu", dtype="float32"), max_area=64 * 64
    )
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8))
    a, b = (editor.edit([img], ["make it red"], [s], [2], 2.0)[0] for s in (1, 2))
    assert a.size == img.size == b.size
    assert type(editor.holder.pipe.processor).__name__ == "TinyQwenVLProcessor"
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # the seed moves the noise
