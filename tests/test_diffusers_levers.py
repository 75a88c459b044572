"""The editor speed levers on the tiny random Kontext (CPU, 64² px, batch 2): each cache
hook changes a multi-step batched edit, MagCache ratios come from `nhr magcache-calibrate`,
regional compile serves two buckets with one graph, and impossible combinations are
refused before a model loads. fp8 and flash attention are `gpu` tests."""

import json

import numpy as np
import pytest
from PIL import Image

from nhr.backends import diffusers_levers
from nhr.backends.diffusers_kontext import KontextEditor
from nhr.backends.diffusers_levers import Levers, Traits, refusals
from nhr.backends.diffusers_runtime import DiffusersOptions
from nhr.backends.tiny_diffusers import build_tiny
from nhr.cli import main as nhr_main
from nhr.config import PipelineConfig
from nhr.errors import BackendError, ConfigError

STEPS = 6
SOURCES = [
    Image.effect_noise((64, 64), 60).convert("RGB"),
    Image.linear_gradient("L").resize((64, 64)).convert("RGB"),
]


@pytest.fixture(scope="module")
def kontext_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-levers") / "flux-kontext"
    build_tiny("flux-kontext", 0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def ratios(kontext_dir, tmp_path_factory):
    """The tiny Kontext's MagCache ratios, written by the command a user runs."""
    out = tmp_path_factory.mktemp("magcache") / "ratios.json"
    params = {
        "EDITOR": "flux-kontext",
        "EDITOR_MODEL": kontext_dir,
        "EDIT_STEPS_MIN": 2,
        "EDIT_STEPS_MAX": STEPS,
        "EDIT_MAX_AREA": 4096,
        "DIFFUSERS_DEVICE": "cpu",
    }
    argv = ["magcache-calibrate", str(out), "--n", "2"]
    for key, value in params.items():
        argv += ["-p", key, str(value)]
    assert nhr_main(argv) == 0
    return out


def edit(editor: KontextEditor) -> np.ndarray:
    out = editor.edit(SOURCES, ["make it blue", "add a hat"], [1, 2], [STEPS, STEPS], 2.5)
    assert [o.size for o in out] == [(64, 64), (64, 64)]
    return np.stack([np.asarray(o, np.int16) for o in out])


def editor(kontext_dir: str, **levers) -> KontextEditor:
    opts = DiffusersOptions(device="cpu", dtype="float32", max_batch=2, levers=Levers(**levers))
    return KontextEditor(kontext_dir, opts, max_area=64 * 64)


@pytest.fixture(scope="module")
def eager(kontext_dir):
    return edit(editor(kontext_dir))


def test_magcache_calibration_stores_one_ratio_per_step(ratios, kontext_dir):
    data = json.loads(ratios.read_text())
    assert data["steps"] == STEPS and len(data["ratios"]) == STEPS
    assert data["ratios"][0] == 1.0 and data["model"] == kontext_dir
    assert all(0.2 < r < 5 for r in data["ratios"])  # a residual's norm step to step


@pytest.mark.parametrize(
    "levers",
    [
        {"cache": "first-block", "fbc_threshold": 5.0},
        {"cache": "taylorseer", "taylorseer_interval": 2, "taylorseer_warmup": 1},
        {"cache": "magcache", "magcache_threshold": 5.0, "magcache_retention": 0.0},
    ],
    ids=lambda lv: lv["cache"],
)
def test_each_cache_hook_changes_a_batched_edit(kontext_dir, eager, ratios, levers):
    if levers["cache"] == "magcache":
        levers = {**levers, "magcache_ratios": str(ratios)}
    cached = editor(kontext_dir, **levers)
    assert f"+cache={levers['cache']}(" in cached.model_id  # named on every row
    first = edit(cached)
    assert cached.usage()["calls"] == 1  # both images in one call
    assert np.abs(first - eager).max() >= 1  # the hook skipped work: pixels moved
    assert np.array_equal(edit(cached), first)  # the hook's state resets between calls


def test_regional_compile_serves_two_buckets_with_one_graph(kontext_dir, eager):
    from torch._dynamo.utils import counters

    counters.clear()
    comp = editor(kontext_dir, compile="regional", compile_backend="eager")
    assert comp.model_id == kontext_dir  # compile is runtime: no new model id
    out = edit(comp)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and np.abs(out - eager).max() <= 1
    wide = comp.edit([SOURCES[0].resize((128, 32))] * 2, ["x", "y"], [3, 4], [2, 2], 2.5)
    assert [w.size for w in wide] == [(128, 32)] * 2
    assert counters["stats"]["unique_graphs"] == graphs  # dynamic shapes: no recompile


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["first-block", "taylorseer"])
def test_regional_compile_under_a_cache_hook_traces_the_blocks(kontext_dir, cache):
    """Under a cache hook the compiled blocks still run compiled, and edit alike."""
    from torch._dynamo.utils import counters

    hook = {"cache": cache, "fbc_threshold": 5.0, "taylorseer_interval": 2}
    plain = edit(editor(kontext_dir, **hook))
    counters.clear()
    out = edit(editor(kontext_dir, compile="regional", compile_backend="eager", **hook))
    assert counters["stats"]["unique_graphs"] > 0
    assert np.abs(out - plain).max() <= 1


@pytest.mark.slow
def test_regional_compile_with_inductor_on_cpu(kontext_dir, eager):
    """The real compiler on the CPU (minutes on a small machine: slow)."""
    assert np.abs(edit(editor(kontext_dir, compile="regional")) - eager).max() <= 2


def test_lightning_scheduler_is_set_and_named(kontext_dir):
    opts = DiffusersOptions(device="cpu", dtype="float32", max_batch=2)
    few = KontextEditor(kontext_dir, opts, max_area=64 * 64, scheduler="lightning")
    assert few.model_id.endswith("+scheduler=lightning")
    out = few.edit(SOURCES[:1], ["x"], [1], [4], 1.0)
    assert out[0].size == (64, 64)
    assert few.holder.pipe.scheduler.config.time_shift_type == "exponential"


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"EDITOR": "qwen-image-edit", "DIFFUSERS_ATTENTION": "_flash_3"}, "pads the prompts"),
        ({"EDITOR": "instruct-pix2pix", "DIFFUSERS_CACHE": "first-block"}, "no cache hooks"),
        ({"EDITOR": "flux-kontext", "DIFFUSERS_CACHE": "magcache"}, "magcache-calibrate"),
        ({"EDITOR": "flux-kontext", "DIFFUSERS_QUANT": "fp8", "EDITOR_LORA": "x"}, "fp8"),
        ({"EDITOR": "instruct-pix2pix", "EDITOR_SCHEDULER": "lightning"}, "flow-matching"),
    ],
)
def test_combinations_that_cannot_work_are_refused_by_the_config(params, reason):
    with pytest.raises(ConfigError, match=reason):
        PipelineConfig.from_params(params)


def test_qwen_flash_attention_is_allowed_one_prompt_per_call():
    cfg = PipelineConfig.from_params(
        {"EDITOR": "qwen-image-edit", "DIFFUSERS_ATTENTION": "_flash_3", "DIFFUSERS_MAX_BATCH": 1}
    )
    assert cfg.diffusers.diffusers_attention == "_flash_3"


def test_cache_with_true_cfg_on_a_shared_context_is_refused(monkeypatch):
    levers = Levers(cache="first-block")
    assert refusals("QwenImageEditPipeline", levers, 4, "default", False) == []  # own contexts
    monkeypatch.setitem(
        diffusers_levers.TRAITS, "FluxKontextPipeline", Traits("shared", True, False, True)
    )
    (why,) = refusals("FluxKontextPipeline", levers, 4, "default", False)
    assert "true CFG on one shared cache context" in why


def test_editor_refuses_before_loading(kontext_dir):
    opts = DiffusersOptions(device="cpu", levers=Levers(quant="fp8"))
    with pytest.raises(ConfigError, match="fp8 with a LoRA"):
        KontextEditor(kontext_dir, opts, lora="some/lora")
    fp8 = KontextEditor(kontext_dir, opts, max_area=4096)
    assert fp8.model_id.endswith("+fp8") and fp8.holder.pipe is None
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        fp8.load()


def test_output_levers_refuse_a_resume_and_compile_does_not():
    assert PipelineConfig.kind("DIFFUSERS_COMPILE") == "runtime"
    for name in ("DIFFUSERS_QUANT", "DIFFUSERS_ATTENTION", "DIFFUSERS_CACHE", "EDITOR_SCHEDULER"):
        assert PipelineConfig.kind(name) == "output"
    cfg = PipelineConfig.from_params({"EDITOR": "flux-kontext"})
    cached = cfg.replace(DIFFUSERS_CACHE="first-block")
    assert cfg.stage_settings("candidates") != cached.stage_settings("candidates")
    assert PipelineConfig().diffusers.diffusers_compile == "auto"
    assert Levers().compile_mode("cuda") == "regional" and Levers().compile_mode("cpu") == "none"


@pytest.mark.gpu
def test_fp8_on_cuda_or_a_clear_error(kontext_dir):
    import torch

    src = SOURCES[:1]
    base = KontextEditor(kontext_dir, DiffusersOptions(device="cuda"), max_area=4096)
    ref = np.asarray(base.edit(src, ["x"], [1], [2], 2.5)[0], np.int16)
    fp8 = KontextEditor(
        kontext_dir, DiffusersOptions(device="cuda", levers=Levers(quant="fp8")), 4096
    )
    if torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(BackendError, match="compute capability"):
            fp8.load()
        return
    try:
        import torchao  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="torchao"):
            fp8.load()
        return
    out = np.asarray(fp8.edit(src, ["x"], [1], [2], 2.5)[0], np.int16)
    assert out.shape == ref.shape and np.abs(out - ref).mean() < 40  # noise, drawn alike


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["_flash_3", "flash"])
def test_flash_attention_on_cuda_or_a_clear_error(kontext_dir, backend):
    src = SOURCES[:1]
    opts = DiffusersOptions(device="cuda", levers=Levers(attention=backend))
    flash = KontextEditor(kontext_dir, opts, max_area=4096)
    assert flash.model_id.endswith(f"+attention={backend}")
    try:
        flash.load()
    except BackendError as err:
        assert f"DIFFUSERS_ATTENTION={backend} cannot run here" in str(err)
        return
    base = KontextEditor(kontext_dir, DiffusersOptions(device="cuda"), max_area=4096)
    a = np.asarray(base.edit(src, ["x"], [1], [2], 2.5)[0], np.int16)
    b = np.asarray(flash.edit(src, ["x"], [1], [2], 2.5)[0], np.int16)
    assert np.abs(a - b).mean() < 3  # the same attention, another kernel
