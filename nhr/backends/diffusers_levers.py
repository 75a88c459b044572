"""The denoiser's speed levers: compile, fp8, attention backend, cache hooks, few-step
schedulers; which combinations cannot work, and how each is applied to a pipeline.

Every API is diffusers 0.42.1's (torchao ≥ 0.15 for fp8):

- compile: ``transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)``
  (regional) with duck shapes off, so the size buckets share one graph, or the whole
  denoiser's ``compile`` (full); a cache hook's own code is ``torch.compiler.disable``d,
  so with a cache the graphs may break there (``fullgraph=False``).
- fp8: torchao ``quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(
  granularity=PerRow()))``, on a GPU of compute capability ≥ 8.9.
- attention: ``transformer.set_attention_backend(name)``; ``fuse_qkv_projections()``.
- cache hooks: ``transformer.enable_cache(FirstBlockCacheConfig | TaylorSeerCacheConfig |
  MagCacheConfig)``. FluxKontextPipeline sets no ``cache_context``, so its calls run in
  ``transformer.cache_context("cond")``; QwenImageEditPipeline sets ``cond``/``uncond``
  itself. MagCache needs its model's magnitude ratios, measured once
  (``nhr magcache-calibrate``) and stored as JSON.
- scheduler ``lightning``: Qwen-Image-Lightning's ``FlowMatchEulerDiscreteScheduler``
  settings (its README) for its 4/8-step LoRAs, run with ``true_cfg_scale`` 1.0.

Output-changing levers are named in the editor's model id (``label``), so every row says
how it was made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.errors import BackendError, ConfigError

# attention backends whose kernels take no attention mask (diffusers' attention_dispatch)
MASKLESS_ATTENTION = ("flash", "flash_hub", "_flash_3", "_flash_3_hub", "flash_4_hub")
# Qwen-Image-Lightning's scheduler config (README of ModelTC/Qwen-Image-Lightning)
LIGHTNING_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class Traits:
    """What an editor's pipeline allows: who sets the cache context (``own``: the
    pipeline, per cond/uncond pass; ``shared``: one context around the whole call; None:
    its denoiser has no cache hooks), whether it runs true CFG, whether a batch pads the
    prompt mask, whether its scheduler is flow-matching."""

    cache_context: str | None
    true_cfg: bool
    padded_prompt_mask: bool
    flow_match: bool


TRAITS: dict[str, Traits] = {
    "FluxKontextPipeline": Traits("shared", False, False, True),
    "FluxPipeline": Traits("shared", False, False, True),
    "QwenImageEditPipeline": Traits("own", True, True, True),
    "StableDiffusionInstructPix2PixPipeline": Traits(None, True, False, False),
}
# editor backend name -> pipeline class (the registry's diffusers editors)
EDITOR_PIPELINES = {
    "flux-kontext": "FluxKontextPipeline",
    "qwen-image-edit": "QwenImageEditPipeline",
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
}


@dataclass(frozen=True)
class Levers:
    """The speed levers of a diffusers denoiser (DIFFUSERS_* config fields)."""

    compile: str = "auto"
    quant: str = "none"
    attention: str = ""
    fuse_qkv: bool = False
    cache: str = "none"
    fbc_threshold: float = 0.05
    taylorseer_interval: int = 5
    taylorseer_warmup: int = 3
    taylorseer_order: int = 1
    magcache_threshold: float = 0.06
    magcache_max_skip: int = 3
    magcache_retention: float = 0.2
    magcache_ratios: str = ""
    compile_backend: str = "inductor"  # torch.compile backend ("eager": trace only)

    @classmethod
    def from_block(cls, block: Any) -> Levers:
        """The levers of a DiffusersBlock."""
        return cls(
            compile=block.diffusers_compile,
            quant=block.diffusers_quant,
            attention=block.diffusers_attention,
            fuse_qkv=block.diffusers_fuse_qkv,
            cache=block.diffusers_cache,
            fbc_threshold=block.diffusers_fbc_threshold,
            taylorseer_interval=block.diffusers_taylorseer_interval,
            taylorseer_warmup=block.diffusers_taylorseer_warmup,
            taylorseer_order=block.diffusers_taylorseer_order,
            magcache_threshold=block.diffusers_magcache_threshold,
            magcache_max_skip=block.diffusers_magcache_max_skip,
            magcache_retention=block.diffusers_magcache_retention,
            magcache_ratios=block.diffusers_magcache_ratios,
        )

    def compile_mode(self, device: str) -> str:
        """``none``, ``regional`` or ``full``; ``auto`` is regional on CUDA only."""
        if self.compile == "auto":
            return "regional" if device.startswith("cuda") else "none"
        return self.compile

    def cache_label(self) -> str:
        """The cache hook and its parameters, as the model id names them ('' for none)."""
        if self.cache == "first-block":
            return f"first-block({self.fbc_threshold:g})"
        if self.cache == "taylorseer":
            t = self
            return f"taylorseer({t.taylorseer_interval},{t.taylorseer_warmup},{t.taylorseer_order})"
        if self.cache == "magcache":
            digest = hashlib.sha256(json.dumps(load_ratios(self.magcache_ratios)).encode())
            return (
                f"magcache({self.magcache_threshold:g},{self.magcache_max_skip},"
                f"{self.magcache_retention:g},{digest.hexdigest()[:8]})"
            )
        return ""

    def label(self, scheduler: str = "default") -> str:
        """The output-changing levers as a model-id suffix ('' when all are defaults)."""
        parts = []
        if self.quant != "none":
            parts.append(f"+{self.quant}")
        if self.attention:
            parts.append(f"+attention={self.attention}")
        if self.cache != "none":
            parts.append(f"+cache={self.cache_label()}")
        if scheduler != "default":
            parts.append(f"+scheduler={scheduler}")
        return "".join(parts)


def refusals(
    pipeline_class: str, levers: Levers, max_batch: int, scheduler: str, lora: bool
) -> list[str]:
    """Why this combination of levers cannot work on this pipeline (empty: it can)."""
    traits = TRAITS.get(pipeline_class, Traits(None, False, False, False))
    why = []
    if levers.cache != "none":
        if traits.cache_context is None:
            why.append(
                f"DIFFUSERS_CACHE={levers.cache}: {pipeline_class}'s denoiser has no cache "
                "hooks (set DIFFUSERS_CACHE: none)"
            )
        elif traits.true_cfg and traits.cache_context == "shared":
            why.append(
                f"DIFFUSERS_CACHE={levers.cache} with true CFG on one shared cache context: "
                f"{pipeline_class}'s cond and uncond passes would overwrite each other's cache"
            )
        if levers.cache == "magcache" and not levers.magcache_ratios:
            why.append(
                "DIFFUSERS_CACHE=magcache needs DIFFUSERS_MAGCACHE_RATIOS, the file "
                "`nhr magcache-calibrate` writes for this editor"
            )
    if levers.attention in MASKLESS_ATTENTION and traits.padded_prompt_mask and max_batch > 1:
        why.append(
            f"DIFFUSERS_ATTENTION={levers.attention} takes no attention mask, but "
            f"{pipeline_class} pads the prompts of a batch with one (set DIFFUSERS_MAX_BATCH: 1 "
            "or another DIFFUSERS_ATTENTION)"
        )
    if levers.quant == "fp8" and lora:
        why.append(
            "DIFFUSERS_QUANT=fp8 with a LoRA: the LoRA layers cannot wrap fp8 weights (fuse "
            "the LoRA into the model first, or set DIFFUSERS_QUANT: none)"
        )
    if levers.fuse_qkv and lora:
        why.append(
            "DIFFUSERS_FUSE_QKV with a LoRA: fused projections drop the LoRA of to_q/to_k/to_v"
        )
    if scheduler != "default" and not traits.flow_match:
        why.append(
            f"EDITOR_SCHEDULER={scheduler} is a flow-matching schedule; {pipeline_class} is not "
            "a flow-matching pipeline (set EDITOR_SCHEDULER: default)"
        )
    return why


def check(pipeline_class: str, levers: Levers, max_batch: int, scheduler: str, lora: bool) -> None:
    """Raise a ConfigError naming every reason the levers cannot work here."""
    why = refusals(pipeline_class, levers, max_batch, scheduler, lora)
    if why:
        raise ConfigError("; ".join(why), "change the named parameter(s)")


def load_ratios(path: str) -> list[float]:
    """The MagCache ratios stored at ``path`` by ``nhr magcache-calibrate``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"DIFFUSERS_MAGCACHE_RATIOS={path!r} is not a file",
            "write it with `nhr magcache-calibrate OUT.json -p EDITOR=... -p EDITOR_MODEL=...`",
        )
    data = json.loads(file.read_text())
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, list) or len(ratios) < 2:
        raise ConfigError(
            f"{file} holds no MagCache ratios", "rewrite it with `nhr magcache-calibrate`"
        )
    return [float(r) for r in ratios]


def cache_config(levers: Levers, steps: int) -> Any:
    """The diffusers cache config of the levers for a call of ``steps`` steps."""
    import diffusers

    if levers.cache == "first-block":
        return diffusers.FirstBlockCacheConfig(threshold=levers.fbc_threshold)
    if levers.cache == "taylorseer":
        return diffusers.TaylorSeerCacheConfig(
            cache_interval=levers.taylorseer_interval,
            disable_cache_before_step=levers.taylorseer_warmup,
            max_order=levers.taylorseer_order,
        )
    return diffusers.MagCacheConfig(
        threshold=levers.magcache_threshold,
        max_skip_steps=levers.magcache_max_skip,
        retention_ratio=levers.magcache_retention,
        num_inference_steps=steps,
        mag_ratios=load_ratios(levers.magcache_ratios),
    )


def _quantize_fp8(denoiser: Any, device: str) -> None:
    """torchao fp8 weights and dynamic fp8 activations, per row, in place."""
    import torch

    if not device.startswith("cuda"):
        raise BackendError(
            f"DIFFUSERS_QUANT=fp8 needs a CUDA GPU (device is {device})",
            "run on a GPU of compute capability ≥ 8.9 (L4, L40S, H100), or DIFFUSERS_QUANT: none",
        )
    cap = torch.cuda.get_device_capability()
    if cap < (8, 9):
        raise BackendError(
            f"DIFFUSERS_QUANT=fp8 needs compute capability ≥ 8.9; "
            f"{torch.cuda.get_device_name()} has {cap[0]}.{cap[1]}",
            "set DIFFUSERS_QUANT: none on this GPU",
        )
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise BackendError(
            "DIFFUSERS_QUANT=fp8 needs the optional dependency 'torchao'",
            "install it with `pip install -e '.[fp8]'` (torchao matching your torch), "
            "or set DIFFUSERS_QUANT: none",
        ) from None
    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def apply(pipe: Any, levers: Levers, device: str, scheduler: str = "default") -> None:
    """Apply the levers to a loaded pipeline: scheduler, fp8, attention, fused QKV,
    compile, then the cache hook (MagCache per call, see ``call_scope``)."""
    if scheduler == "lightning":
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, **LIGHTNING_SCHEDULER
        )
    name = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    denoiser = getattr(pipe, name)
    if levers.quant == "fp8":
        _quantize_fp8(denoiser, device)
    if levers.attention:
        try:
            denoiser.set_attention_backend(levers.attention)
        except (RuntimeError, ValueError, ImportError) as err:
            raise BackendError(
                f"DIFFUSERS_ATTENTION={levers.attention} cannot run here: {err}",
                "install its kernels or leave DIFFUSERS_ATTENTION empty (diffusers' default)",
            ) from err
    if levers.fuse_qkv:
        denoiser.fuse_qkv_projections()
    compile_denoiser(denoiser, levers.compile_mode(device), levers.cache, levers.compile_backend)
    if levers.cache in ("first-block", "taylorseer"):
        denoiser.enable_cache(cache_config(levers, 0))


def compile_denoiser(denoiser: Any, mode: str, cache: str, backend: str = "inductor") -> None:
    """``torch.compile`` the denoiser (``regional``: its repeated blocks; ``full``: all of
    it) with dynamic shapes and no duck sizing, so each size bucket does not compile anew.
    First-block and MagCache wrap each block in compiler-disabled hook code, so under them
    the blocks' own ``forward`` is what gets compiled (call this before enabling them);
    TaylorSeer hooks the attention inside the blocks, which then break the graph there."""
    if mode == "none":
        return
    import torch

    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    torch.fx.experimental._config.use_duck_shape = False
    if mode == "full":
        denoiser.compile(dynamic=True, backend=backend)
    elif cache in ("first-block", "magcache"):
        for block in denoiser.modules():
            if type(block).__name__ in denoiser._repeated_blocks:
                block.forward = torch.compile(
                    block.forward, fullgraph=True, dynamic=True, backend=backend
                )
    else:
        denoiser.compile_repeated_blocks(fullgraph=cache == "none", dynamic=True, backend=backend)


@contextlib.contextmanager
def call_scope(pipe: Any, levers: Levers, steps: int, pipeline_class: str) -> Iterator[None]:
    """What one pipeline call of ``steps`` steps runs inside: MagCache set up for its
    step count, and one ``cache_context`` for pipelines that set none themselves."""
    if levers.cache == "none":
        yield
        return
    denoiser = pipe.transformer
    if levers.cache == "magcache":
        current = getattr(denoiser, "_cache_config", None)
        if current is None or current.num_inference_steps != steps:
            if current is not None:
                denoiser.disable_cache()
            denoiser.enable_cache(cache_config(levers, steps))
    if TRAITS.get(pipeline_class, Traits(None, False, False, False)).cache_context == "shared":
        with denoiser.cache_context("cond"):
            yield
    else:
        yield


class _RatioLog(logging.Handler):
    """Collects the ratios diffusers' MagCache logs at the end of a calibration call."""

    PREFIX = "MagCache Calibration Results: "

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.found: list[list[float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith(self.PREFIX):
            self.found.append([float(x) for x in json.loads(text[len(self.PREFIX) :])])


def calibrate_magcache(
    editor: Any,
    images: list[Any],
    instructions: list[str],
    steps: int,
    guidance: float,
    seeds: list[int],
) -> list[float]:
    """MagCache's magnitude ratios of ``editor``'s denoiser at ``steps`` steps: one
    calibration call (``MagCacheConfig(calibrate=True)``, nothing skipped) per image,
    the ratios averaged over the calls."""
    import contextlib as ctx
    import io

    import diffusers

    pipe = editor.holder.get()
    denoiser = pipe.transformer
    if getattr(denoiser, "_cache_config", None) is not None:
        denoiser.disable_cache()
    denoiser.enable_cache(diffusers.MagCacheConfig(calibrate=True, num_inference_steps=steps))
    log = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level, propagate = _RatioLog(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        for image, text, seed in zip(images, instructions, seeds, strict=True):
            with ctx.redirect_stdout(io.StringIO()):  # the hook also prints them
                editor.edit([image], [text], [seed], [steps], guidance)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
        denoiser.disable_cache()
    if not handler.found:
        raise BackendError(
            f"MagCache calibration of {editor.model_id} logged no ratios",
            "check that the editor's denoiser ran all its steps",
        )
    n = len(handler.found)
    return [round(sum(run[i] for run in handler.found) / n, 5) for i in range(steps)]


def _calibration_images(folder: Path | None, n: int) -> list[Any]:
    """``n`` source images: the first of ``folder`` (sorted), or made ones (gradients
    with noise; real photos give ratios closer to a real run's)."""
    from PIL import Image, ImageChops

    if folder is not None:
        files = sorted(
            p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        )
        if not files:
            raise ConfigError(f"{folder} holds no .png or .jpg images", "give a folder of photos")
        return [Image.open(p).convert("RGB") for p in (files * n)[:n]]
    made = []
    for i in range(n):
        ramp = Image.linear_gradient("L").rotate(90 * i).resize((512, 512))
        noise = Image.effect_noise((512, 512), 40 + 10 * i)
        made.append(Image.merge("RGB", (ramp, ImageChops.add(ramp, noise, 2.0), noise)))
    return made


def calibrate_command(
    out: Path,
    config: Path | None,
    overrides: dict[str, Any],
    images: Path | None,
    instruction: str,
    n: int,
) -> Path:
    """``nhr magcache-calibrate``: build the configured editor (without a cache hook),
    measure its MagCache ratios at EDIT_STEPS_MAX steps and the first EDIT_GUIDANCE, and
    write them with what they were measured on. Returns the file written."""
    from nhr.backends.registry import build_backends
    from nhr.config import PipelineConfig, RunConfig

    if config is not None:
        cfg = RunConfig.load(config, overrides).pipeline
    else:
        cfg = PipelineConfig.from_params(overrides)
    cfg = cfg.replace(DIFFUSERS_CACHE="none")
    if cfg.edits.editor not in EDITOR_PIPELINES or cfg.edits.editor == "instruct-pix2pix":
        raise ConfigError(
            f"EDITOR={cfg.edits.editor} has no MagCache",
            "calibrate a transformer editor: -p EDITOR flux-kontext (or qwen-image-edit)",
        )
    editor = build_backends(cfg, out.parent).editor
    steps, guidance = cfg.edits.edit_steps_max, cfg.edits.edit_guidance[0]
    sources = _calibration_images(images, n)
    ratios = calibrate_magcache(editor, sources, [instruction] * n, steps, guidance, list(range(n)))
    record = {
        "editor": cfg.edits.editor,
        "model": editor.model_id,
        "steps": steps,
        "guidance": guidance,
        "calls": n,
        "ratios": ratios,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
