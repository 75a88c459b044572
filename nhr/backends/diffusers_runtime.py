"""What every diffusers backend shares: device and dtype, loading with clear errors,
memory options, one model on the accelerator at a time, timing, and sizes.

Loading goes through the pipeline class's ``from_pretrained`` for a Hub model id and a
local folder alike, and turns the Hub's exceptions into one-line ``BackendError``s: an
unknown model id, a model missing from the cache with no network (naming
``HF_HUB_OFFLINE`` and the cache path), a gated model without a token, and CUDA out of
memory (naming the options that lower memory). Random draws always use CPU
``torch.Generator``s seeded per image, so an image depends only on its own seed —
never on the batch it was drawn in or the device.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from nhr.backends import diffusers_levers
from nhr.backends.base import Backend
from nhr.backends.diffusers_levers import Levers
from nhr.errors import BackendError, missing_extra
from nhr.resolutions import Size, nearest, scaled

OFFLOAD_FIX = (
    "lower DIFFUSERS_MAX_BATCH, or set DIFFUSERS_CPU_OFFLOAD: model (sequential for the "
    "least memory) and DIFFUSERS_VAE_TILING: true (all resume in the same run folder); "
    "a lower EDIT_MAX_AREA also helps but changes outputs (a new run folder)"
)


def import_torch() -> Any:
    """torch and diffusers, or the error naming the extra to install."""
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError as err:
        raise missing_extra(err.name or "diffusers", "diffusers") from None
    return torch


@dataclass(frozen=True)
class DiffusersOptions:
    """Device, precision and memory settings shared by the diffusers backends, and the
    denoiser's speed levers (``Levers``: compile applies to every backend, the others to
    the editor)."""

    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: str = "none"
    vae_tiling: bool = False
    max_batch: int = 8
    hf_token_env: str = "HF_TOKEN"
    levers: Levers = field(default_factory=Levers)

    @classmethod
    def from_config(cls, cfg: Any) -> DiffusersOptions:
        """The options a PipelineConfig gives."""
        return cls(
            device=cfg.diffusers.diffusers_device,
            dtype=cfg.diffusers.diffusers_dtype,
            cpu_offload=cfg.diffusers.diffusers_cpu_offload,
            vae_tiling=cfg.diffusers.diffusers_vae_tiling,
            max_batch=cfg.diffusers.diffusers_max_batch,
            hf_token_env=cfg.diffusers.hf_token_env,
            levers=Levers.from_block(cfg.diffusers),
        )

    def resolved_device(self) -> str:
        """``auto`` is CUDA when present, else CPU; an absent CUDA is an error."""
        torch = import_torch()
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(
                f"DIFFUSERS_DEVICE={self.device} but torch sees no CUDA GPU",
                "run on a GPU machine with a CUDA build of torch, or set DIFFUSERS_DEVICE: cpu",
            )
        return self.device

    def resolved_dtype(self) -> Any:
        """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
        torch = import_torch()
        name = self.dtype
        if name == "auto":
            name = "bfloat16" if self.resolved_device().startswith("cuda") else "float32"
        return getattr(torch, name)


@dataclass
class Residency:
    """Keeps one diffusers pipeline on the accelerator at a time: a backend that needs
    the GPU parks the previous one on the CPU (offloaded pipelines manage themselves)."""

    active: Any = None

    def acquire(self, backend: Any) -> None:
        """Make ``backend`` the one on the accelerator."""
        if self.active is not None and self.active is not backend:
            self.active.park()
        self.active = backend


def looks_local(model: str) -> bool:
    """True for a path (absolute, ./, ~, or more than one '/'), not an ``org/name`` id."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or Path(model).exists()


def _chain(err: BaseException) -> Iterator[BaseException]:
    """The exception and every cause or context behind it."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_error(err: BaseException, model: str, what: str, token_env: str) -> BackendError | None:
    """The clear error for a failed ``from_pretrained``; None when it is none we know."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    torch = import_torch()
    chain = list(_chain(err))
    names = {type(e).__name__ for e in chain}
    if any(isinstance(e, GatedRepoError) for e in chain):
        return BackendError(
            f"{what} model {model!r} is gated and no accepted token was sent",
            f"accept its licence on https://huggingface.co/{model} and put your token in "
            f"${token_env} (HF_TOKEN_ENV names the variable)",
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or any(
        isinstance(e, HFValidationError) for e in chain
    ):
        return BackendError(
            f"unknown {what} model id {model!r}",
            "check the spelling (org/name on huggingface.co) or give a local folder; a private "
            f"model also needs a token in ${token_env}",
        )
    if any(isinstance(e, torch.OutOfMemoryError) for e in chain):
        return BackendError(f"out of GPU memory loading {what} model {model!r}", OFFLOAD_FIX)
    offline_hint = isinstance(err, OSError) and (
        "cached" in str(err) or "outgoing traffic" in str(err)
    )
    if (
        offline_hint
        or any(isinstance(e, LocalEntryNotFoundError) for e in chain)
        or names & {"ConnectError", "ConnectionError", "OfflineModeIsEnabled"}
    ):
        state = "HF_HUB_OFFLINE=1 is set" if _offline() else "the Hub cannot be reached"
        return BackendError(
            f"{what} model {model!r} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {state}",
            f"download it where there is network (`hf download {model}`) and copy the cache "
            "there (or point HF_HOME at it), unset HF_HUB_OFFLINE if this machine is online, "
            "or give a local folder",
        )
    return None


def load_pipeline(cls: Any, model: str, options: DiffusersOptions, what: str) -> Any:
    """``cls.from_pretrained(model)`` on the configured device, dtype and memory options."""
    torch = import_torch()
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    if looks_local(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise BackendError(
                f"{what} model folder {folder} does not exist",
                "create tiny test models with `nhr tiny-models DIR`, or give a Hub model id",
            )
        if not (folder / "model_index.json").is_file():
            raise BackendError(
                f"{folder} is not a diffusers pipeline folder (no model_index.json)",
                "give a folder written by `save_pretrained` or `nhr tiny-models`",
            )
        model = str(folder)
    device, dtype = options.resolved_device(), options.resolved_dtype()
    token = os.environ.get(options.hf_token_env) or None
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        pipe = cls.from_pretrained(model, dtype=dtype, token=token, local_files_only=_offline())
    except Exception as err:
        clear = load_error(err, model, what, options.hf_token_env)
        if clear is None:
            raise
        raise clear from err
    finally:
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    try:
        if options.cpu_offload == "model" and device != "cpu":
            pipe.enable_model_cpu_offload(device=device)
        elif options.cpu_offload == "sequential" and device != "cpu":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
    except torch.OutOfMemoryError as err:
        raise BackendError(
            f"out of GPU memory moving {what} model {model!r} to {device}", OFFLOAD_FIX
        ) from err
    if options.vae_tiling and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    return pipe


LORA_MARK = "+lora="


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA to load into a pipeline: a folder or ``.safetensors`` file written by
    ``save_lora_weights`` (``nhr.train`` writes one), or a hub id; and its strength."""

    source: str
    scale: float = 1.0

    def label(self) -> str:
        """The suffix the model id carries on every row: ``+lora=SOURCE@SCALE``."""
        return f"{LORA_MARK}{self.source}@{self.scale:g}"


def split_lora(model: str) -> tuple[str, LoraSpec | None]:
    """``MODEL+lora=LORA[@SCALE]`` as (MODEL, its LoRA); a plain model id as (id, None)."""
    base, mark, rest = model.partition(LORA_MARK)
    if not mark:
        return model, None
    source, at, scale = rest.rpartition("@")
    value = 1.0
    if at:
        try:
            value = float(scale)
        except ValueError:
            source = rest
    else:
        source = rest
    if not source:
        raise BackendError(
            f"model {model!r} names an empty LoRA", "write MODEL+lora=FOLDER_OR_HUB_ID[@SCALE]"
        )
    return base, LoraSpec(source, value)


def lora_spec(model: str, lora: str, scale: float) -> tuple[str, LoraSpec | None]:
    """The base model and the one LoRA of a model id and EDITOR_LORA / EDITOR_LORA_SCALE
    (a LoRA given both ways is refused: the rows could not say which one ran)."""
    base, spec = split_lora(model)
    if lora and spec is not None:
        raise BackendError(
            f"a LoRA is given twice: in the model {model!r} and as {lora!r}",
            "name it once: EDITOR_LORA (with EDITOR_LORA_SCALE) or MODEL+lora=PATH@SCALE",
        )
    return base, (LoraSpec(lora, scale) if lora else spec)


def apply_lora(pipe: Any, spec: LoraSpec, options: DiffusersOptions, what: str) -> None:
    """Load ``spec`` into ``pipe`` as adapter ``lora`` at its scale, with clear errors."""
    if not hasattr(pipe, "load_lora_weights"):
        raise BackendError(
            f"{what} pipeline {type(pipe).__name__} cannot load a LoRA",
            "use an editor whose diffusers pipeline has load_lora_weights (Kontext, Qwen)",
        )
    source, kwargs = spec.source, {}
    path = Path(source).expanduser()
    if path.is_file():
        source, kwargs = str(path.parent), {"weight_name": path.name}
    elif path.is_dir():
        source = str(path)
    elif looks_local(source):
        raise BackendError(
            f"{what} LoRA {source} does not exist",
            "give the lora/ folder a training run wrote, a .safetensors file, or a hub id",
        )
    token = os.environ.get(options.hf_token_env) or None
    try:
        pipe.load_lora_weights(
            source, adapter_name="lora", token=token, local_files_only=_offline(), **kwargs
        )
    except Exception as err:
        clear = load_error(err, spec.source, f"{what} LoRA", options.hf_token_env)
        if clear is None:
            raise
        raise clear from err
    pipe.set_adapters(["lora"], adapter_weights=[spec.scale])


def generators(seeds: list[int]) -> list[Any]:
    """One CPU generator per image, so each image depends on its own seed only."""
    torch = import_torch()
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def snap(x: float, multiple: int) -> int:
    """``x`` rounded to a positive multiple of ``multiple``."""
    return max(multiple, round(x / multiple) * multiple)


def scaled_size(size: tuple[int, int], area: int, multiple: int) -> tuple[int, int]:
    """``size`` (w, h) scaled to about ``area`` pixels, same aspect, snapped to ``multiple``."""
    w, h = size
    s = math.sqrt(area / (w * h))
    return snap(w * s, multiple), snap(h * s, multiple)


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` as RGB at exactly ``size`` (w, h)."""
    image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def chunks(items: list[int], n: int) -> list[list[int]]:
    """``items`` cut into lists of at most ``n``."""
    return [items[i : i + n] for i in range(0, len(items), n)]


@dataclass
class PipelineHolder:
    """A lazily loaded pipeline with its usage counters, shared by the backends.

    ``usage()`` reports ``calls``, ``images``, ``device_seconds`` (time inside the
    pipeline, which returns only after the device finished) and ``load_seconds``; the
    runner records the deltas per shard, so GPU-seconds per job survive resumes.
    """

    cls_name: str
    model: str
    options: DiffusersOptions
    what: str
    residency: Residency | None = None
    lora: LoraSpec | None = None
    levers: Levers | None = None  # None: compile only (DIFFUSERS_COMPILE)
    scheduler: str = "default"
    pipe: Any = None
    counters: dict[str, float] = field(
        default_factory=lambda: {
            "calls": 0.0,
            "images": 0.0,
            "device_seconds": 0.0,
            "load_seconds": 0.0,
        }
    )
    _parked: bool = False

    def get(self) -> Any:
        """The pipeline, loaded on first use and made the one on the accelerator."""
        if self.pipe is None:
            import diffusers

            t0 = time.perf_counter()
            cls = getattr(diffusers, self.cls_name)
            pipe = load_pipeline(cls, self.model, self.options, self.what)
            if self.lora is not None:
                apply_lora(pipe, self.lora, self.options, self.what)
            given = self.options.levers
            levers = self.levers or Levers(given.compile, compile_backend=given.compile_backend)
            device = self.options.resolved_device()
            diffusers_levers.apply(pipe, levers, device, self.scheduler)
            self.pipe = pipe
            self.counters["load_seconds"] += time.perf_counter() - t0
        elif self._parked:
            self.pipe.to(self.options.resolved_device())
            self._parked = False
        if self.residency is not None:
            self.residency.acquire(self)
        return self.pipe

    def park(self) -> None:
        """Move the pipeline off the accelerator (when not offloaded) to make room."""
        if self.pipe is None or self.options.cpu_offload != "none":
            return
        if self.options.resolved_device() == "cpu":
            return
        torch = import_torch()
        self.pipe.to("cpu")
        self._parked = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def timed(self, n_images: int, size: tuple[int, int]) -> Iterator[None]:
        """Count a pipeline call, and turn CUDA out-of-memory into a clear error."""
        torch = import_torch()
        t0 = time.perf_counter()
        try:
            yield
        except torch.OutOfMemoryError as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise BackendError(
                f"out of GPU memory running {self.what} model {self.model!r} on {n_images} "
                f"image(s) of {size[0]}×{size[1]}",
                OFFLOAD_FIX,
            ) from err
        if torch.cuda.is_available() and self.options.resolved_device().startswith("cuda"):
            torch.cuda.synchronize()
        self.counters["calls"] += 1
        self.counters["images"] += n_images
        self.counters["device_seconds"] += time.perf_counter() - t0

    def usage(self) -> dict[str, float]:
        """Cumulative counters (see the class docstring)."""
        return dict(self.counters)


class DiffusersEditor(Backend):
    """An ``Editor`` over a diffusers image-editing pipeline.

    Jobs are grouped by working size and steps (a diffusers call takes one of each) and
    each group runs in calls of at most ``max_batch`` images (DIFFUSERS_MAX_BATCH), with
    lists of images and prompts and one generator per image, so an image depends on its
    own seed only. Each source is resized to the editor's working size and each result
    is resized back to exactly the source's size, because the low-level check compares
    pixels. The working size is about ``max_area`` pixels at the source's aspect, or with
    ``buckets`` (``work_buckets``) at the nearest bucket's aspect: sources of any size
    (photos too) then share a few working sizes and batch together. Subclasses give the
    pipeline class, default model and call arguments.

    A LoRA (``lora`` and ``lora_scale``, or ``MODEL+lora=LORA@SCALE`` as the model) is
    loaded into the pipeline; ``model_id``, recorded on every row, then reads
    ``MODEL+lora=LORA@SCALE``. The speed levers of ``options.levers`` and ``scheduler``
    (``nhr.backends.diffusers_levers``) are checked here, before any model loads, and the
    output-changing ones end the model id (``+fp8+cache=first-block(0.05)``).
    """

    pipeline_class: str = ""
    default_model: str = ""
    default_area: int = 1024 * 1024
    work = "device"  # the model stays resident: one batch at a time, in this process

    def __init__(
        self,
        model: str = "",
        options: DiffusersOptions | None = None,
        max_area: int = 0,
        residency: Residency | None = None,
        buckets: tuple[Size, ...] | None = None,
        lora: str = "",
        lora_scale: float = 1.0,
        scheduler: str = "default",
    ) -> None:
        base, self.lora = lora_spec(model, lora, lora_scale)
        base = base or self.default_model
        self.options = options or DiffusersOptions()
        levers = self.options.levers
        diffusers_levers.check(
            self.pipeline_class, levers, self.options.max_batch, scheduler, self.lora is not None
        )
        self.model_id = base + (self.lora.label() if self.lora else "") + levers.label(scheduler)
        self.max_area = max_area or self.default_area
        self.buckets = tuple(buckets) if buckets else None
        self.holder = PipelineHolder(
            self.pipeline_class,
            base,
            self.options,
            "editor",
            residency,
            self.lora,
            levers,
            scheduler,
        )

    def load(self) -> Any:
        """Load the pipeline now (the edit stage's ``setup``), else it loads on first use."""
        return self.holder.get()

    @property
    def multiple(self) -> int:
        """Side lengths the pipeline accepts are multiples of this."""
        pipe = self.holder.get()
        return int(getattr(pipe, "vae_scale_factor", 8)) * 2

    @property
    def max_batch(self) -> int:
        """Most images in one pipeline call (DIFFUSERS_MAX_BATCH)."""
        return self.options.max_batch

    @property
    def work_buckets(self) -> tuple[Size, ...] | None:
        """The buckets whose aspects the editor works at (None: the source's aspect)."""
        return self.buckets

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (w, h) the pipeline edits a source of ``size`` at: the nearest work
        bucket (or the source's own aspect) at about ``max_area`` pixels, snapped."""
        buckets = self.work_buckets
        if buckets:
            return scaled(nearest(size, buckets), self.max_area, self.multiple)
        return scaled_size(size, self.max_area, self.multiple)

    def call(
        self,
        pipe: Any,
        images: list[Image.Image],
        instructions: list[str],
        gens: list[Any],
        steps: int,
        guidance: float,
        size: tuple[int, int],
    ) -> list[Image.Image]:
        """One pipeline call on same-size images; returns images (any size)."""
        raise NotImplementedError

    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        steps: list[int],
        guidance: float,
    ) -> list[Image.Image]:
        """Edit each image with its instruction, seed and steps; outputs match input sizes."""
        if not len(images) == len(instructions) == len(seeds) == len(steps):
            raise ValueError("images, instructions, seeds and steps differ in length")
        pipe = self.holder.get()
        groups: dict[tuple[tuple[int, int], int], list[int]] = {}
        for i, (img, n) in enumerate(zip(images, steps, strict=True)):
            groups.setdefault((self.work_size(img.size), int(n)), []).append(i)
        out: list[Image.Image | None] = [None] * len(images)
        for (size, n_steps), idx in groups.items():
            for part in chunks(idx, self.options.max_batch):
                scope = diffusers_levers.call_scope(
                    pipe, self.options.levers, n_steps, self.pipeline_class
                )
                with self.holder.timed(len(part), size), scope:
                    edited = self.call(
                        pipe,
                        [fit(images[i], size) for i in part],
                        [instructions[i] for i in part],
                        generators([seeds[i] for i in part]),
                        n_steps,
                        guidance,
                        size,
                    )
                for i, image in zip(part, edited, strict=True):
                    out[i] = fit(image, images[i].size)
        return [o for o in out if o is not None]

    def usage(self) -> dict[str, float]:
        """Calls, images, device seconds and load seconds so far."""
        return self.holder.usage()
