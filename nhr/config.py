"""The run configuration: frozen, validated blocks of settings, and the YAML run config.

``PipelineConfig`` is made of one block per stage group and per backend family
(``cfg.edits.m_edit_seeds``, ``cfg.diffusers.diffusers_dtype``); each block validates its
own fields (types, ranges, choices, cross-field rules) where it is defined. Every field is
either *output-changing* (a different value gives different rows) or *runtime* (batch
sizes, concurrency, timeouts, caches: how a run goes, not what it makes); a resumed run
folder accepts a changed runtime field and refuses a changed output-changing one.

Notebooks expose each field they use as a flat UPPER_CASE literal in their ``parameters``
cell (``M_EDIT_SEEDS``); a field's flat name is its name upper-cased, unique across
blocks, and ``FIELDS`` maps each flat name onto its block.
``PipelineConfig.from_params(PipelineConfig.params_in(globals()))`` turns those literals
into a validated config. A run config YAML names the notebooks of a run, in order, and
the parameters to pass them; ``nhr run`` validates it whole before anything runs.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nhr.backends import names
from nhr.colours import parse_colour
from nhr.errors import ConfigError

OUTPUT = "output"
RUNTIME = "runtime"


def _f(
    default: Any,
    doc: str,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
    role: bool = False,
    runtime: bool = False,
) -> Any:
    """A config field with its documentation, allowed range or choices. ``role`` marks a
    backend name (checked against ``nhr.backends.names``); ``runtime`` marks a field that
    changes how a run goes but not what it writes (a resume may change it)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "role": role, "runtime": runtime}
    value = tuple(default) if isinstance(default, list | tuple) else default
    return Field(default=value, description=doc, json_schema_extra=meta)


class Block(BaseModel):
    """A frozen group of config fields; values are checked before pydantic sees them, so
    every error names the UPPER_CASE parameter and the fix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _check_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = {}
        for name, value in data.items():
            if name not in cls.model_fields:
                raise ConfigError(
                    f"unknown parameter {name.upper()!r} in block {cls.__name__}",
                    f"use one of: {', '.join(n.upper() for n in cls.model_fields)}",
                )
            value = tuple(value) if isinstance(value, list) else value
            info = cls.model_fields[name]
            _check(name, value, info.annotation, info.description or "", _meta(cls, name))
            out[name] = value
        return out

    @classmethod
    def kind(cls, name: str) -> str:
        """``output`` or ``runtime``: whether field ``name`` changes what a run writes."""
        return RUNTIME if _meta(cls, name)["runtime"] else OUTPUT

    def output_values(self) -> dict[str, Any]:
        """The output-changing fields of this block, as plain values (tuples as lists)."""
        return {
            n: _plain(getattr(self, n)) for n in type(self).model_fields if self.kind(n) == OUTPUT
        }

    def rows(self, block: str) -> list[dict[str, Any]]:
        """One row per field: block, PARAMETER, value, kind, doc (for a notebook table)."""
        return [
            {
                "block": block,
                "parameter": n.upper(),
                "value": _plain(getattr(self, n)),
                "kind": self.kind(n),
                "doc": info.description,
            }
            for n, info in type(self).model_fields.items()
        ]

    def __repr_args__(self) -> Any:
        return [(n, getattr(self, n)) for n in type(self).model_fields]


def _meta(cls: type[BaseModel], name: str) -> dict[str, Any]:
    """The ``_f`` metadata of a field."""
    extra = cls.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _plain(value: Any) -> Any:
    """Tuples as lists, as YAML and notebooks take them."""
    return list(value) if isinstance(value, tuple) else value


def _check(name: str, value: Any, hint: Any, doc: str, meta: dict[str, Any]) -> None:
    """Validate one field's type and range, raising a ConfigError naming the fix."""
    upper = name.upper()
    origin = typing.get_origin(hint)
    items = value if origin is tuple else (value,)
    base = typing.get_args(hint)[0] if origin is tuple else hint
    if origin is tuple and not isinstance(value, tuple):
        raise ConfigError(f"{upper}={value!r} is not a list", f"give {upper} as a list, e.g. [2.5]")
    for item in items:
        ok = isinstance(item, base) and not (base is not bool and isinstance(item, bool))
        floaty = base is float or float in typing.get_args(base)  # float, or float | str
        if floaty and isinstance(item, int) and not isinstance(item, bool):
            ok = True
        if not ok:
            kind = getattr(base, "__name__", str(base))
            raise ConfigError(
                f"{upper}={value!r} is not of type {kind}",
                f"give {upper} a {kind} ({doc})",
            )
        choices = names.known(name) if meta.get("role") else meta.get("choices")
        if choices is not None and item not in choices:
            what = "a known backend" if meta.get("role") else "an allowed value"
            raise ConfigError(
                f"{upper}={item!r} is not {what}",
                f"use one of: {', '.join(map(str, choices))}",
            )
        lo, hi = meta.get("lo"), meta.get("hi")
        if base in (int, float) and (
            (lo is not None and item < lo) or (hi is not None and item > hi)
        ):
            raise ConfigError(
                f"{upper}={item!r} is out of range", f"choose a value in [{lo}, {hi}] ({doc})"
            )


# ------------------------------------------------------------------------------- blocks
class RunBlock(Block):
    """How the chain runs: the master seed; batching, workers and table shards
    (runtime: they change how work is run and split into files, never which rows)."""

    seed: int = _f(0, "master seed of the run", 0, 2**31 - 1)
    batch_size: int = _f(16, "rows per processing batch", 1, 100_000, runtime=True)
    workers: int = _f(
        0,
        "batches at once: processes for CPU-bound stages, threads for API-bound (0: one per core)",
        0,
        1024,
        runtime=True,
    )
    shard_rows: int = _f(
        50_000, "rows per table shard (the runner buffers up to this)", 1, 10**8, runtime=True
    )
    shard_flush_seconds: float = _f(
        60.0,
        "seconds before buffered rows are committed (a crash loses at most this)",
        0.0,
        86400.0,
        runtime=True,
    )


class PromptsBlock(Block):
    """Stage 1: the prompt writer and how many prompts and instructions it writes."""

    prompter: str = _f("synthetic", "prompt writer backend", role=True)
    prompter_model: str = _f("", "prompt writer model id ('': the backend's default)")
    n_prompts: int = _f(100, "text-to-image prompts to write", 1, 10_000_000)
    k_instructions: int = _f(5, "edit instructions written per prompt (k)", 1, 50)


class PromptWriterBlock(Block):
    """The taxonomy a remote prompt writer draws from."""

    prompt_topics: tuple[str, ...] = _f(
        (
            "animals",
            "food and drink",
            "home interiors",
            "street scenes",
            "landscapes",
            "vehicles",
            "people at work",
            "sports",
            "still life",
            "architecture",
            "fashion",
            "technology",
            "plants and gardens",
            "toys and games",
            "musical instruments",
        ),
        "topics the remote prompt writer draws from",
    )
    prompt_styles: tuple[str, ...] = _f(
        (
            "photorealistic",
            "studio photograph",
            "film photograph",
            "digital illustration",
            "watercolor painting",
            "oil painting",
            "3D render",
            "anime",
            "pencil sketch",
        ),
        "styles the remote prompt writer draws from",
    )
    prompt_edit_ops: tuple[str, ...] = _f(
        (
            "add",
            "remove",
            "replace",
            "recolour",
            "material",
            "resize",
            "move",
            "background",
            "style",
        ),
        "edit operations of the remote prompt writer (the paper's delete-only run: [remove])",
    )
    prompt_max_objects: int = _f(5, "most main objects in a written prompt (1 to this)", 1, 20)
    prompt_compound_share: float = _f(
        0.15, "share of compound (two-operation) instructions written", 0.0, 1.0
    )


class SourcesBlock(Block):
    """Stage 2: the text-to-image backend and the source images it renders."""

    t2i: str = _f("synthetic", "text-to-image backend", role=True)
    t2i_model: str = _f("", "text-to-image model id or local folder ('': the default)")
    n_source_seeds: int = _f(10, "source images per prompt (N)", 1, 1000)
    long_side_min: int = _f(860, "smallest long side of a source, px", 16, 8192)
    long_side_max: int = _f(2200, "largest long side of a source, px", 16, 8192)
    aspect_max: float = _f(6.0, "most extreme aspect ratio (1:x to x:1)", 1.0, 16.0)
    resolutions: str = _f(
        "free",
        "source sizes: free (drawn from the long-side range and aspects), or drawn from a "
        "bucket list fitted to that range (paper: 26 sizes 640x1600 to 1600x640; kontext: "
        "Kontext's 17); the diffusers editors also work at the nearest bucket",
        choices=("free", "paper", "kontext"),
    )
    t2i_steps: int = _f(4, "text-to-image denoising steps", 1, 200)
    t2i_guidance: float = _f(0.0, "text-to-image guidance scale", 0.0, 50.0)
    sources: str = _f(
        "generated",
        "where source images come from: the text-to-image model, or a photo collection",
        choices=("generated", "photos"),
    )
    photos: str = _f(
        "",
        "photo collection (SOURCES photos): a folder of images, an imagefolder "
        "(metadata.jsonl/csv), a parquet file or folder, WebDataset .tar shards, or a hub id",
    )
    photos_column: str = _f(
        "", "column or WebDataset key holding the photo ('': the first image-like one)"
    )
    photos_split: str = _f("train", "split of a hub photo collection")
    photos_synthetic: int = _f(
        0,
        "render this many synthetic-world pictures into PHOTOS first, a stand-in photo "
        "collection the synthetic editor and judge understand (0: none)",
        0,
        10**6,
    )
    photos_max: int = _f(
        0, "photos drawn uniformly (seeded) from the collection (0: all)", 0, 10**9
    )

    @model_validator(mode="after")
    def _sides(self) -> SourcesBlock:
        if self.long_side_min > self.long_side_max:
            raise ConfigError(
                f"long_side_min={self.long_side_min} is above long_side_max={self.long_side_max}",
                "set LONG_SIDE_MIN <= LONG_SIDE_MAX",
            )
        return self


class CaptionsBlock(Block):
    """Photo sources: the captioner that describes each photo and the writer of its
    edit instructions."""

    captioner: str = _f("synthetic", "VLM that describes each photo (SOURCES photos)", role=True)
    captioner_model: str = _f("", "captioner model id")
    caption_writer: str = _f(
        "synthetic", "writes k edit instructions from a photo's caption", role=True
    )
    caption_writer_model: str = _f("", "caption instruction writer model id")


class ImagesBlock(Block):
    """The one loader's limits for images from outside the run (photos, evaluation)."""

    image_max_pixels: int = _f(
        40_000_000, "images from outside with more pixels are refused (bombs too)", 1, 2**31
    )
    image_min_side: int = _f(32, "images from outside with a shorter side are refused", 1, 65536)
    image_max_aspect: float = _f(
        8.0, "images from outside more elongated than this are refused (0: any)", 0.0, 1e6
    )
    image_background: str = _f(
        "white", "colour transparent pixels are composited on ('#rrggbb', white, black)"
    )

    @model_validator(mode="after")
    def _background(self) -> ImagesBlock:
        try:
            parse_colour(self.image_background)
        except ValueError as err:
            raise ConfigError(
                f"IMAGE_BACKGROUND={self.image_background!r}: {err}", "use e.g. '#ffffff'"
            ) from None
        return self


class GateBlock(Block):
    """Stage 3: the plausibility gate's judge."""

    gate_judge: str = _f("synthetic", "plausibility gate backend", role=True)
    gate_model: str = _f("", "plausibility gate model id ('': the backend's default)")


class EditsBlock(Block):
    """Stage 4: the editor, the N×k×M job grid and how each job is edited."""

    editor: str = _f("synthetic", "image editor backend", role=True)
    editor_model: str = _f(
        "", "editor model id or local folder ('': the default); MODEL+lora=LORA[@SCALE] too"
    )
    editor_lora: str = _f(
        "", "LoRA loaded into a diffusers editor: a folder, .safetensors file or hub id"
    )
    editor_lora_scale: float = _f(1.0, "strength of EDITOR_LORA", -10.0, 10.0)
    editor_scheduler: str = _f(
        "default",
        "editor sampler: the pipeline's own, or lightning (Qwen-Image-Lightning's "
        "4/8-step LoRA schedule; use EDIT_GUIDANCE [1.0])",
        choices=("default", "lightning"),
    )
    m_edit_seeds: int = _f(5, "edit seeds per (source, instruction) (M)", 1, 100)
    edit_steps_min: int = _f(18, "fewest edit denoising steps", 1, 200)
    edit_steps_max: int = _f(28, "most edit denoising steps", 1, 200)
    edit_steps_levels: int = _f(
        0,
        "distinct step counts, evenly spaced from EDIT_STEPS_MIN to EDIT_STEPS_MAX, each "
        "job drawing one (fewer: larger batched calls; 0: every integer in the range)",
        0,
        200,
    )
    edit_guidance: tuple[float, ...] = _f((2.5,), "guidance values; each job draws one", 0.0, 50.0)
    max_edit_jobs: int = _f(0, "cap on edit jobs drawn from the N×k×M grid (0: no cap)", 0, 10**9)
    edit_budget_seconds: float = _f(
        0.0, "cap on editor seconds (0: no cap; a resume may raise it)", 0.0, 1e9, runtime=True
    )
    edit_max_area: int = _f(
        0, "pixels the editor works at, result resized to the source (0: model's own)", 0, 2**26
    )
    edit_preferred_resolutions: bool = _f(
        True, "Kontext: edit at its nearest trained resolution (else at the source's aspect)"
    )
    pix2pix_image_guidance: float = _f(1.5, "InstructPix2Pix image guidance scale", 0.0, 50.0)
    edit_schedule_window: int = _f(
        512,
        "jobs the editor's call batcher holds to group equal size, steps and guidance "
        "into full calls (more: fuller calls, a little more reordering)",
        1,
        10**6,
        runtime=True,
    )

    @model_validator(mode="after")
    def _steps(self) -> EditsBlock:
        if self.edit_steps_min > self.edit_steps_max:
            raise ConfigError(
                f"edit_steps_min={self.edit_steps_min} is above "
                f"edit_steps_max={self.edit_steps_max}",
                "set EDIT_STEPS_MIN <= EDIT_STEPS_MAX",
            )
        if not self.edit_guidance:
            raise ConfigError("edit_guidance is empty", "give at least one value, e.g. [2.5]")
        return self


class SearchBlock(Block):
    """Stage 4's candidate search: every seed of every (source, instruction) at once (the
    paper's grid), or seeds in rounds, closing a (source, instruction) once a candidate
    passes the hard validator or its candidates say it is hopeless (adaptive)."""

    search: str = _f(
        "grid",
        "candidate search: all M_EDIT_SEEDS seeds at once (grid, the paper), or in rounds "
        "that stop where a candidate passed or none can (adaptive)",
        choices=("grid", "adaptive"),
    )
    search_first_seeds: int = _f(
        1, "adaptive: seeds per (source, instruction) in the first round", 1, 100
    )
    search_round_seeds: int = _f(1, "adaptive: seeds added in each later round", 1, 100)
    search_passes: int = _f(
        1, "adaptive: a (source, instruction) closes after this many validator passes", 1, 100
    )
    search_hopeless_after: int = _f(
        3,
        "adaptive: a (source, instruction) with at least this many scored candidates, all "
        "below SEARCH_HOPELESS_BELOW, closes as hopeless (0: never)",
        0,
        100,
    )
    search_hopeless_below: float = _f(
        2.0,
        "adaptive: the hopeless score: a candidate's min(adherence, aesthetic) from the "
        "validator, else from the pre-filter; a low-level drop counts as 0",
        0.0,
        5.0,
    )
    search_guidance: str = _f(
        "drawn",
        "adaptive: guidance of the rounds after the first: drawn per job from EDIT_GUIDANCE "
        "as in the grid, or the EDIT_GUIDANCE value that passed most often among the first "
        "round's jobs (best; see SEARCH_GUIDANCE_SHARE)",
        choices=("drawn", "best"),
    )
    search_guidance_share: float = _f(
        1.0,
        "adaptive, best: the share of the first round's jobs (the first by priority) whose "
        "pass rates choose the guidance of the later rounds; below 1 the later rounds need "
        "not wait for the rest of the first to be judged, on less evidence",
        0.01,
        1.0,
    )
    search_stop_below: float = _f(
        0.0,
        "adaptive: the posterior stop (0: off): a (source, instruction) closes once its failed "
        "seeds, each weighed by its setting's pass rate, leave it below this share of the prior "
        "chance that the editor can do it (rates fitted on the calibration jobs, "
        "SEARCH_GUIDANCE_SHARE)",
        0.0,
        1.0,
    )
    search_stop_recall: float = _f(
        0.9,
        "adaptive, SEARCH_STOP_BELOW: the chance that a candidate of a pair the editor can do "
        "passes the hard validator at the run's best setting",
        0.05,
        1.0,
    )


class FiltersBlock(Block):
    """Stages 5–6: the soft pre-filter and the low-level check."""

    prefilter_judge: str = _f("synthetic", "soft pre-filter backend", role=True)
    prefilter_model: str = _f("", "soft pre-filter model id ('': the backend's default)")
    prefilter: bool = _f(True, "run the soft pre-filter")
    prefilter_min_score: float = _f(
        3.0, "soft pre-filter: drop if either score is below this", 1.0, 5.0
    )
    lowlevel: bool = _f(True, "run the low-level check")
    diff_threshold: int = _f(40, "low-level check: |Ie−I0| above this is a changed pixel", 0, 255)
    min_component_share: float = _f(
        0.005, "low-level check: drop if largest component < this share of changed pixels", 0.0, 1.0
    )


class ValidationBlock(Block):
    """Stage 7 (and the bootstrap's checks): the hard validator and its threshold."""

    validator: str = _f("synthetic", "hard validator backend", role=True)
    validator_model: str = _f("", "hard validator model id (a tuned endpoint too)")
    threshold: float = _f(4.7, "hard validator: pass iff both scores >= this", 1.0, 5.0)
    judge_ensemble_members: tuple[str, ...] = _f(
        ("synthetic",),
        "judges of VALIDATOR=ensemble: a validator backend, NAME:MODEL, or synthetic:noise=X",
    )
    judge_ensemble_combine: str = _f(
        "mean", "how the ensemble combines its members' scores", choices=("mean", "min")
    )
    judge_ensemble_pass: str = _f(
        "combined",
        "ensemble pass rule beside the threshold on the combined scores: combined (none), "
        "all or majority (of members passing on their own)",
        choices=("combined", "all", "majority"),
    )
    viescore_range: int = _f(
        10, "VIEScore judges: scores on 0..R (10 VIEScore/GEdit-Bench, 25 EditScore)", 1, 100
    )
    judge_max_error_share: float = _f(
        0.5,
        "stop the run when a judge's error verdicts exceed this share of its first (then "
        "any sliding) JUDGE_ERROR_WINDOW verdicts; 1: never",
        0.0,
        1.0,
        runtime=True,
    )
    judge_error_window: int = _f(
        50, "verdicts per judge the error share is taken over", 1, 100_000, runtime=True
    )


class SyntheticBlock(Block):
    """The synthetic world, used by every role named ``synthetic``."""

    synthetic_judge_noise: float = _f(
        1.0, "synthetic judge: scale of its VLM-like scoring noise (0: none)", 0.0, 3.0
    )
    synthetic_implausible_rate: float = _f(
        0.4, "synthetic renderer: share of renders that are implausible", 0.0, 1.0
    )
    synthetic_hard_share: float = _f(
        0.0,
        "synthetic editor: share of (source, instruction) pairs it cannot do (every seed "
        "fails, mostly by changing nothing), as real editors have; 0: seeds independent",
        0.0,
        1.0,
    )
    synthetic_group_spread: float | str = _f(
        0.0,
        "synthetic editor: intra-(source, instruction) correlation of its successes, each "
        "pair's chance drawn from a Beta around the editor's rate (0: seeds independent; "
        "in [0, 1)), or 'paper': calibrated to the paper's funnel (15.3 % validator pass "
        "rate, 31 % dropped by the argmax step)",
    )
    synthetic_gpu_seconds: float = _f(
        0.0,
        "synthetic editor: simulated GPU seconds per image, slept per call (0: a plain CPU "
        "editor; > 0: one call at a time, like a model on a GPU)",
        0.0,
        60.0,
        runtime=True,
    )

    @model_validator(mode="after")
    def _spread(self) -> SyntheticBlock:
        v, named = self.synthetic_group_spread, names.SYNTHETIC_GROUP_SPREADS
        if v in named if isinstance(v, str) else 0 <= v < 1:
            return self
        raise ConfigError(
            f"SYNTHETIC_GROUP_SPREAD={v!r} is neither a number in [0, 1) nor a named setting",
            f"use a number in [0, 1) or one of: {', '.join(named)}",
        )


class BootstrapBlock(Block):
    """Stages 8–10: inversion, composition and dedup."""

    inverter: str = _f("synthetic", "inverse/composed instruction writer backend", role=True)
    inverter_model: str = _f("", "inverse/composed instruction writer model id")
    inversion: bool = _f(True, "write inverse triplets and check backward consistency")
    composition: bool = _f(True, "compose pairs of accepted edits of one source")
    compose_validate: bool = _f(True, "score composed triplets with the hard validator")
    compose_max_pairs: int = _f(4, "composed pairs drawn per source at most", 0, 1000)
    dedup: bool = _f(True, "drop exact and near-duplicate triplets")
    dedup_max_distance: int = _f(
        4, "dedup: perceptual-hash bits two near-duplicate images may differ in", 0, 32
    )


# attention backends of diffusers 0.42.1 (diffusers.models.attention_dispatch)
ATTENTION_BACKENDS = (
    "",
    "native",
    "_native_cudnn",
    "_native_efficient",
    "_native_flash",
    "_native_math",
    "flex",
    "xformers",
    "flash",
    "flash_hub",
    "_flash_3",
    "_flash_3_hub",
    "flash_4_hub",
    "sage",
    "sage_hub",
)


class DiffusersBlock(Block):
    """The local diffusers backends: device and precision (output) and memory (runtime)."""

    diffusers_device: str = _f(
        "auto",
        "diffusers device (auto: cuda if present, else cpu)",
        choices=("auto", "cuda", "cpu", "mps"),
    )
    diffusers_dtype: str = _f(
        "auto",
        "diffusers weights dtype (auto: bfloat16 on cuda, float32 on cpu)",
        choices=("auto", "bfloat16", "float16", "float32"),
    )
    diffusers_cpu_offload: str = _f(
        "none",
        "keep weights on the CPU, moving each model (or layer) in when used",
        choices=("none", "model", "sequential"),
        runtime=True,
    )
    diffusers_vae_tiling: bool = _f(
        False, "decode/encode in tiles (less memory at high res)", runtime=True
    )
    diffusers_compile: str = _f(
        "auto",
        "torch.compile the denoiser: regional (its repeated blocks, one graph for all "
        "sizes), full, none; auto: regional on cuda, none elsewhere",
        choices=("auto", "none", "regional", "full"),
        runtime=True,
    )
    diffusers_quant: str = _f(
        "none", "fp8: torchao fp8 weights and activations (GPU ≥ sm89)", choices=("none", "fp8")
    )
    diffusers_attention: str = _f(
        "", "denoiser attention backend ('': diffusers' default)", choices=ATTENTION_BACKENDS
    )
    diffusers_fuse_qkv: bool = _f(False, "fuse attention q/k/v into one matmul", runtime=True)
    diffusers_cache: str = _f(
        "none",
        "skip denoiser work between steps with a diffusers cache hook",
        choices=("none", "first-block", "taylorseer", "magcache"),
    )
    diffusers_fbc_threshold: float = _f(
        0.05, "first-block: skip the rest while the first block changes less", 0.0, 10.0
    )
    diffusers_taylorseer_interval: int = _f(5, "taylorseer: steps per full compute", 1, 1000)
    diffusers_taylorseer_warmup: int = _f(3, "taylorseer: first steps fully computed", 0, 1000)
    diffusers_taylorseer_order: int = _f(1, "taylorseer: Taylor order of the forecast", 1, 4)
    diffusers_magcache_threshold: float = _f(
        0.06, "magcache: accumulated error allowed before a full step", 0.0, 10.0
    )
    diffusers_magcache_max_skip: int = _f(3, "magcache: most steps skipped in a row", 1, 1000)
    diffusers_magcache_retention: float = _f(
        0.2, "magcache: share of first steps never skipped", 0.0, 1.0
    )
    diffusers_magcache_ratios: str = _f(
        "", "magcache: the ratios file `nhr magcache-calibrate` wrote for this editor"
    )
    diffusers_max_batch: int = _f(
        8, "most images per diffusers call (less: less memory)", 1, 1024, runtime=True
    )
    hf_token_env: str = _f(
        "HF_TOKEN", "environment variable holding a Hugging Face token", runtime=True
    )


class ApiBlock(Block):
    """Remote model APIs: what is asked (output) and how hard and fast (runtime)."""

    api_concurrency: int = _f(
        16, "remote model calls in flight at once, per backend", 1, 4096, runtime=True
    )
    api_rpm: float = _f(
        0.0, "requests per minute cap, per backend (0: none)", 0.0, 1e9, runtime=True
    )
    api_tpm: float = _f(
        0.0, "tokens per minute cap, per backend (0: none)", 0.0, 1e12, runtime=True
    )
    api_timeout_seconds: float = _f(
        60.0, "timeout of one remote call, s", 0.01, 3600.0, runtime=True
    )
    api_attempts: int = _f(
        6, "tries per call on 408/429/5xx, timeouts and dropped connections", 1, 100, runtime=True
    )
    api_backoff_seconds: float = _f(
        1.0, "first retry wait when the server sends no Retry-After, s", 0.0, 600.0, runtime=True
    )
    api_backoff_max_seconds: float = _f(
        60.0,
        "longest retry wait (a longer Retry-After is capped to this), s",
        0.0,
        3600.0,
        runtime=True,
    )
    api_content_retries: int = _f(
        1,
        "re-asks after a malformed, blocked, empty or out-of-range answer",
        0,
        10,
        runtime=True,
    )
    api_cache: bool = _f(
        True, "cache answered requests, so a rerun makes no new calls", runtime=True
    )
    api_cache_dir: str = _f(
        "",
        "folder of the request cache, a path (api_cache.sqlite) or an object-store URL "
        "(cache/ objects) ('': the run folder)",
        runtime=True,
    )
    api_image_max_side: int = _f(
        1024, "downscale images sent to a remote model to this long side (0: as is)", 0, 16384
    )
    api_max_output_tokens: int = _f(2048, "most tokens a remote model may answer with", 16, 65536)
    api_writer_temperature: float = _f(
        1.0, "temperature of the remote prompt writer (judges and inverter: 0)", 0.0, 2.0
    )
    api_prices: tuple[str, ...] = _f(
        (
            "gemini-2.5-flash=0.30/2.50",
            "gemini-2.5-flash-lite=0.10/0.40",
            "gemini-2.5-pro=1.25/10.00",
            "gemini-3-flash-preview=0.50/3.00",
            "gemini-2.0-flash=0.10/0.40",
        ),
        "USD per million tokens in/out, 'model=in/out' (unlisted models cost 0, counted)",
        runtime=True,
    )
    api_batch_discount: float = _f(
        0.5, "price factor of Gemini Batch API calls", 0.0, 1.0, runtime=True
    )


class GeminiBlock(Block):
    """The Gemini backend: thinking budget (output) and the Batch API (runtime)."""

    gemini_thinking_budget: int = _f(
        0, "Gemini thinking tokens (0: none, as the validator wants; -1: model default)", -1, 65536
    )
    gemini_batch_roles: tuple[str, ...] = _f(
        (),
        "judge roles sent through the Gemini Batch API (half price, minutes to hours; "
        "use a large BATCH_SIZE)",
        choices=("gate_judge", "prefilter_judge", "validator"),
        runtime=True,
    )
    gemini_batch_poll_seconds: float = _f(
        30.0, "Gemini batch job poll interval, s", 0.01, 3600.0, runtime=True
    )
    gemini_batch_max_wait_seconds: float = _f(
        86400.0,
        "give up waiting for a batch job after this (rerun collects it), s",
        0.1,
        1e7,
        runtime=True,
    )


class OpenAIBlock(Block):
    """The OpenAI-compatible backend (vLLM, SGLang): its model (output), where (runtime)."""

    openai_base_url: str = _f(
        "http://127.0.0.1:8000/v1",
        "base URL of the OpenAI-compatible endpoint (vLLM, SGLang)",
        runtime=True,
    )
    openai_default_model: str = _f(
        "Qwen/Qwen2.5-VL-7B-Instruct", "model of the openai backend where a *_MODEL is ''"
    )
    openai_key_env: str = _f(
        "OPENAI_API_KEY",
        "environment variable holding the endpoint's key (may be unset)",
        runtime=True,
    )


class EvaluationBlock(Block):
    """Evaluation notebooks: datasets scored, validator calibration, survival, ablations."""

    eval_run_dir: str = _f("", "mined run to calibrate and to survey ('': this run)")
    eval_datasets: tuple[str, ...] = _f(
        (), "datasets to score: a registry name (nhr.evaluate.datasets) or 'NAME=PATH_OR_HUB_ID'"
    )
    eval_columns: tuple[str, ...] = _f(
        (), "column mappings 'NAME=SOURCE,INSTRUCTION,EDITED' for datasets not in the registry"
    )
    eval_samples: int = _f(5000, "random samples scored per dataset (the paper: 5,000)", 1, 10**7)
    eval_sample_seed: int = _f(0, "seed of the random sample drawn from each dataset", 0, 2**31 - 1)
    eval_contrast: bool = _f(
        True, "also score two worse datasets made from the evaluated run (ranking sanity check)"
    )
    eval_ratings_file: str = _f(
        "", "human ratings, CSV or JSONL: item_id, rater, adherence, aesthetic ('': the truth)"
    )
    eval_human_positive: float = _f(
        4.0, "a rated item is positive when both human scores exceed this", 1.0, 5.0
    )
    eval_survival_min: float = _f(3.0, "lowest threshold of the survival curve", 1.0, 5.0)
    eval_survival_max: float = _f(4.9, "highest threshold of the survival curve", 1.0, 5.0)
    eval_survival_step: float = _f(0.1, "threshold step of the survival curve", 0.01, 1.0)
    eval_survival_min_drop: float = _f(
        0.1, "survival curve: a cliff drops at least this share in one step", 0.0, 1.0
    )
    eval_ablation_dir: str = _f(
        "results/ablations", "folder of the ablation runs, one each", runtime=True
    )
    eval_ablation_n: tuple[int, ...] = _f((2, 6), "N_SOURCE_SEEDS values of the ablation", 1, 1000)
    eval_ablation_m: tuple[int, ...] = _f((1, 6), "M_EDIT_SEEDS values of the ablation", 1, 100)
    eval_ablation_thresholds: tuple[float, ...] = _f(
        (4.3, 4.9), "THRESHOLD values of the ablation", 1.0, 5.0
    )
    eval_ablation_switches: tuple[str, ...] = _f(
        ("prefilter", "lowlevel"),
        "filters the ablation switches off, one at a time",
        choices=("prefilter", "lowlevel"),
    )
    eval_judges: tuple[str, ...] = _f(
        ("validator",),
        "judges calibrated side by side: 'validator' (the run's own scores) or a judge spec "
        "(a validator backend, NAME:MODEL, synthetic:noise=X)",
    )
    rate_rater: str = _f(
        "rater-1", "rating notebook: the rater's id (each person their own)", runtime=True
    )
    rate_items: int = _f(200, "rating notebook: candidates in the sample to rate", 1, 10**6)
    rate_seed: int = _f(0, "rating notebook: seed of the sample", 0, 2**31 - 1)
    rate_strata: int = _f(
        5, "rating notebook: validator-score strata (the passed + bands of the failed)", 2, 50
    )
    rate_simulated_raters: int = _f(
        0, "rating notebook: people simulated from the synthetic truth (0: real raters)", 0, 50
    )
    rate_simulated_noise: float = _f(
        0.6, "rating notebook: sd of a simulated rater's noise on the 1-5 scale", 0.0, 3.0
    )
    bench_sets: tuple[str, ...] = _f(
        ("synthetic",),
        "editor benchmark sets: gedit[=PATH], imgedit-basic=PATH, kris[=PATH], split=RUN_DIR, "
        "synthetic, or NAME=PATH with EVAL_COLUMNS (each set its own items; adding one resumes)",
        runtime=True,
    )
    bench_editors: tuple[str, ...] = _f(
        (),
        "editors benchmarked: NAME[:model=..,steps=..,guidance=..,seed=..,skill=..,label=..]"
        "[+lora=PATH], each its own table, adding one resumes the rest (empty: the "
        "synthetic editor at skill 0.3, 0.6 and 0.9)",
        runtime=True,
    )
    bench_judges: tuple[str, ...] = _f(
        ("synthetic-viescore",),
        "benchmark judges: synthetic-viescore[:noise=X] or a validator spec (gemini-viescore, "
        "openai-viescore:MODEL, openai-imgedit, ...); each its own table",
        runtime=True,
    )
    bench_max_items: int = _f(
        60, "items per set at most, a seeded sample stratified by task type (0: all)", 0, 10**7
    )
    bench_seed: int = _f(0, "seed of the item sample and of each item's edit seed", 0, 2**31 - 1)
    bench_languages: tuple[str, ...] = _f(
        ("en",), "GEdit-Bench instruction languages kept (en, cn; empty: all)"
    )
    bench_subset: str = _f(
        "full",
        "GEdit-Bench subset: every item or the Intersection_exist ones",
        choices=("full", "intersection"),
    )
    bench_bootstrap: int = _f(1000, "bootstrap resamples of each 95 % interval", 100, 100_000)
    tune_images: str = _f(
        "gcs",
        "Vertex tuning data: images as GCS fileData URIs or inline",
        choices=("gcs", "inline"),
    )
    tune_gcs_prefix: str = _f(
        "gs://BUCKET/nhr-tuning/images", "Vertex tuning data: the GCS folder of the images"
    )
    tune_validation_share: float = _f(
        0.1, "tuning data: share of the rated items held out for validation", 0.0, 0.9
    )

    @model_validator(mode="after")
    def _survival(self) -> EvaluationBlock:
        if self.eval_survival_min > self.eval_survival_max:
            raise ConfigError(
                f"eval_survival_min={self.eval_survival_min} is above "
                f"eval_survival_max={self.eval_survival_max}",
                "set EVAL_SURVIVAL_MIN <= EVAL_SURVIVAL_MAX",
            )
        return self


class ExportBlock(Block):
    """Stage 11: the exported dataset."""

    export_shard_rows: int = _f(
        1000, "rows per exported parquet shard (same rows, other files)", 1, 10**7, runtime=True
    )
    export_webdataset: bool = _f(
        True, "also write WebDataset .tar shards beside the parquet", runtime=True
    )
    export_webdataset_shard_rows: int = _f(
        1000, "samples per WebDataset shard (same samples, other files)", 1, 10**7, runtime=True
    )
    export_license: str = _f("cc-by-4.0", "licence id written in the dataset card")
    export_preference_pairs: int = _f(
        1, "rejected edits paired with each mined triplet in the preference config", 0, 100
    )
    export_test_share: float = _f(
        0.0,
        "share of sources whose triplets form the default config's test split (by source: "
        "no test source in train; 0: one train split)",
        0.0,
        0.9,
    )


class TrainBlock(Block):
    """LoRA fine-tuning of an editor's transformer on an export (``nhr.train``); each
    setting that shapes the LoRA is output-changing: a new training, a new run folder."""

    train_data: str = _f(
        "", "a run folder, an exported dataset folder or a hub dataset id ('': this run's)"
    )
    train_base: str = _f(
        "flux-kontext", "the editor trained", choices=("flux-kontext", "qwen-image-edit")
    )
    train_model: str = _f("", "its model id or local folder ('': the editor's default)")
    train_steps: int = _f(1000, "optimizer steps", 1, 10**8)
    train_batch: int = _f(1, "triplets per step on each device", 1, 4096)
    train_lr: float = _f(1e-4, "AdamW learning rate (constant)", 0.0, 1.0)
    train_rank: int = _f(16, "LoRA rank", 1, 1024)
    train_alpha: float = _f(0.0, "LoRA alpha (0: the rank)", 0.0, 4096.0)
    train_lora_layers: tuple[str, ...] = _f(
        ("to_k", "to_q", "to_v", "to_out.0"), "module names the LoRA wraps in the transformer"
    )
    train_max_area: int = _f(
        1024 * 1024, "pixels a triplet is trained at (its bucket scaled to this)", 64, 2**26
    )
    train_buckets: str = _f(
        "paper", "aspect buckets (a RESOLUTIONS set: paper, kontext)", choices=("paper", "kontext")
    )
    train_max_tokens: int = _f(512, "text tokens per instruction (T5 / Qwen)", 8, 1024)
    train_guidance: float = _f(1.0, "Kontext's distilled guidance during training", 0.0, 50.0)
    train_weighting: str = _f(
        "none",
        "timestep density and loss weighting (diffusers' SD3 schemes)",
        choices=("none", "logit_normal", "mode", "sigma_sqrt", "cosmap"),
    )
    train_precision: str = _f(
        "auto", "mixed precision (auto: bf16 on CUDA, else no)", choices=("auto", "no", "bf16")
    )
    train_gradient_checkpointing: bool = _f(False, "recompute activations to save memory")
    train_checkpoint_steps: int = _f(
        250, "a resumable checkpoint every this many steps", 1, 10**8, runtime=True
    )
    train_sample_steps: int = _f(
        250,
        "sample edits of the fixed items every this many steps (0: only at the end)",
        0,
        10**8,
        runtime=True,
    )
    train_sample_items: int = _f(4, "fixed items edited in each sample grid", 0, 64)
    train_sample_inference_steps: int = _f(28, "denoising steps of the sample edits", 1, 200)


class EngineBlock(Block):
    """What executes the chain: this process (``local``) or a Ray cluster (``ray``), and
    how the Ray engine places each stage (all runtime: they change where and how fast
    rows are made, never which)."""

    engine: str = _f(
        "local",
        "local: this process (threads, worker processes); ray: Ray Data on a cluster",
        choices=("local", "ray"),
        runtime=True,
    )
    ray_address: str = _f(
        "",
        "Ray cluster to join ('': the RAY_ADDRESS variable, else start a local one; "
        "auto: the one `ray start` made here; ray://host:10001 for Ray Client)",
        runtime=True,
    )
    ray_device_actors: int = _f(
        0,
        "actors per GPU stage (T2I, editor), a model resident in each "
        "(0: one per RAY_GPUS_PER_ACTOR GPUs of the cluster)",
        0,
        100_000,
        runtime=True,
    )
    ray_gpus_per_actor: float = _f(
        1.0, "GPUs each GPU-stage actor reserves (fractions share a GPU)", 0.01, 64.0, runtime=True
    )
    ray_io_actors: int = _f(
        2,
        "actors per API-bound stage (judges, writers); API_CONCURRENCY, API_RPM and "
        "API_TPM are split among them",
        1,
        10_000,
        runtime=True,
    )
    ray_cpu_tasks: int = _f(
        0,
        "concurrent Ray tasks per CPU-bound stage (low-level check, synthetic world; "
        "0: as many as the cluster's CPUs allow)",
        0,
        100_000,
        runtime=True,
    )
    ray_cpus_per_device_actor: float = _f(
        1.0, "logical CPUs each GPU-stage actor reserves", 0.0, 256.0, runtime=True
    )
    ray_cpus_per_io_actor: float = _f(
        0.25, "logical CPUs each API-stage actor reserves", 0.0, 256.0, runtime=True
    )
    ray_cpus_per_cpu_task: float = _f(
        1.0, "logical CPUs each CPU-stage task reserves", 0.01, 256.0, runtime=True
    )
    ray_window_rows: int = _f(
        20_000,
        "first-stage inputs per Ray dataset (the actors live across windows); a spent "
        "budget stops the run at the end of a window",
        1,
        10**9,
        runtime=True,
    )
    ray_local_cpus: int = _f(
        0,
        "logical CPUs of a local Ray cluster this run starts (0: the machine's cores)",
        0,
        100_000,
        runtime=True,
    )
    ray_driver_rows: int = _f(
        256,
        "a chain with no GPU stage and at most this many first-stage inputs runs on the "
        "driver, as ENGINE local would (0: every chain on the cluster)",
        0,
        10**9,
        runtime=True,
    )


# ------------------------------------------------------------------------ the whole config
BLOCKS: dict[str, type[Block]] = {
    "run": RunBlock,
    "prompts": PromptsBlock,
    "prompt_writer": PromptWriterBlock,
    "sources": SourcesBlock,
    "captions": CaptionsBlock,
    "images": ImagesBlock,
    "gate": GateBlock,
    "edits": EditsBlock,
    "search": SearchBlock,
    "filters": FiltersBlock,
    "validation": ValidationBlock,
    "synthetic": SyntheticBlock,
    "bootstrap": BootstrapBlock,
    "diffusers": DiffusersBlock,
    "api": ApiBlock,
    "gemini": GeminiBlock,
    "openai": OpenAIBlock,
    "evaluation": EvaluationBlock,
    "export": ExportBlock,
    "train": TrainBlock,
    "engine": EngineBlock,
}


def _field_table() -> dict[str, tuple[str, str]]:
    """Flat lower-case name -> (block, field). Flat names are unique across blocks, and
    a flat name may be a block's name only for a field of that block."""
    table: dict[str, tuple[str, str]] = {}
    for block, cls in BLOCKS.items():
        for name in cls.model_fields:
            if name in table or (name in BLOCKS and name != block):
                raise TypeError(f"config field {name!r} of {block} is not a unique flat name")
            table[name] = (block, name)
    return table


FIELDS: dict[str, tuple[str, str]] = _field_table()
# the role fields (backend names), each in the block of the stage that uses it
ROLE_BLOCK: dict[str, str] = {role: FIELDS[role][0] for role in names.ROLES}

_MINING_BLOCKS = tuple(b for b in BLOCKS if b not in ("evaluation", "train"))


class PipelineConfig(BaseModel):
    """Every tunable of the mining chain, in blocks; defaults are the paper's where it
    gives one. Read a field as ``cfg.<block>.<field>``; flat UPPER_CASE names map onto
    blocks through ``FIELDS``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: RunBlock = RunBlock()
    prompts: PromptsBlock = PromptsBlock()
    prompt_writer: PromptWriterBlock = PromptWriterBlock()
    sources: SourcesBlock = SourcesBlock()
    captions: CaptionsBlock = CaptionsBlock()
    images: ImagesBlock = ImagesBlock()
    gate: GateBlock = GateBlock()
    edits: EditsBlock = EditsBlock()
    search: SearchBlock = SearchBlock()
    filters: FiltersBlock = FiltersBlock()
    validation: ValidationBlock = ValidationBlock()
    synthetic: SyntheticBlock = SyntheticBlock()
    bootstrap: BootstrapBlock = BootstrapBlock()
    diffusers: DiffusersBlock = DiffusersBlock()
    api: ApiBlock = ApiBlock()
    gemini: GeminiBlock = GeminiBlock()
    openai: OpenAIBlock = OpenAIBlock()
    evaluation: EvaluationBlock = EvaluationBlock()
    export: ExportBlock = ExportBlock()
    train: TrainBlock = TrainBlock()
    engine: EngineBlock = EngineBlock()

    @model_validator(mode="before")
    @classmethod
    def _group_flat_names(cls, data: Any) -> Any:
        """Accept flat names too (``PipelineConfig(editor="flux-kontext")``), grouped into
        their blocks; a block given whole (a dict or a Block) is taken as it is."""
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        flat: dict[str, dict[str, Any]] = {}
        for name, value in data.items():
            if name in BLOCKS and isinstance(value, dict | Block):
                out[name] = value
            elif name.lower() in FIELDS:
                block, fld = FIELDS[name.lower()]
                flat.setdefault(block, {})[fld] = value
            else:
                raise ConfigError(
                    f"unknown parameter {name!r}",
                    f"use one of: {', '.join(sorted(k.upper() for k in FIELDS))}",
                )
        for block, values in flat.items():
            given = out.get(block, {})
            base = given.model_dump() if isinstance(given, Block) else dict(given)
            out[block] = {**base, **values}
        return out

    @model_validator(mode="after")
    def _editor_levers(self) -> PipelineConfig:
        """Refuse, before any model loads, the editor speed levers that cannot work."""
        from nhr.backends.diffusers_levers import EDITOR_PIPELINES, Levers, check

        edits = self.edits
        pipeline = EDITOR_PIPELINES.get(edits.editor)
        if pipeline is None:  # not a diffusers editor: the levers are not read
            return self
        lora = bool(edits.editor_lora) or "+lora=" in edits.editor_model
        levers = Levers.from_block(self.diffusers)
        check(pipeline, levers, self.diffusers.diffusers_max_batch, edits.editor_scheduler, lora)
        return self

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Flat names of all fields, lower case."""
        return tuple(FIELDS)

    @classmethod
    def kind(cls, name: str) -> str:
        """``output`` or ``runtime`` for a flat field name (either case)."""
        block, fld = FIELDS[name.lower()]
        return BLOCKS[block].kind(fld)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PipelineConfig:
        """Build from flat UPPER_CASE (or lower case) names; unknown names are refused."""
        flat: dict[str, Any] = {}
        for name, value in params.items():
            if name.lower() not in FIELDS:
                raise ConfigError(
                    f"unknown parameter {name!r}",
                    f"use one of: {', '.join(sorted(k.upper() for k in FIELDS))}",
                )
            flat[name.lower()] = value
        try:
            return cls(**flat)
        except ValidationError as err:  # a type the checks above let through
            raise ConfigError(f"invalid config ({err})", "fix the named parameter") from None

    @classmethod
    def params_in(cls, namespace: dict[str, Any]) -> dict[str, Any]:
        """The UPPER_CASE names in a notebook's globals that are config fields."""
        known = {n.upper() for n in FIELDS}
        return {k: v for k, v in namespace.items() if k in known}

    def to_params(self) -> dict[str, Any]:
        """The config as flat UPPER_CASE literals (tuples as lists), as notebooks take them."""
        return {name.upper(): _plain(self.value(name)) for name in FIELDS}

    def value(self, name: str) -> Any:
        """A field by its flat name (either case), e.g. a role's backend name."""
        block, fld = FIELDS[name.lower()]
        return getattr(getattr(self, block), fld)

    def replace(self, **params: Any) -> PipelineConfig:
        """A copy with some flat fields changed (validated like ``from_params``)."""
        return type(self).from_params({**self.to_params(), **params})

    def backend_blocks(self, roles: tuple[str, ...]) -> tuple[str, ...]:
        """The backend-family blocks the backends of ``roles`` read, as configured."""
        out: list[str] = []
        for role in roles:
            for block in names.FAMILY_BLOCKS.get(self.value(role), ()):
                if block not in out:
                    out.append(block)
        return tuple(out)

    def stage_blocks(self, stage: str) -> tuple[str, ...]:
        """The blocks a stage (by its output table) reads: ``run``, its own blocks, its
        roles' blocks and the backend-family blocks of the backends configured for them
        (under SEARCH adaptive, those of the stages in ``ADAPTIVE_READS`` too).
        A stage missing from ``STAGES`` reads every block but ``evaluation`` and ``train``."""
        from nhr.steps import ADAPTIVE_READS, STAGES  # the step table imports the records

        blocks, roles = STAGES.get(stage, (_MINING_BLOCKS, names.ROLES))
        if self.search.search == "adaptive":
            for other in ADAPTIVE_READS.get(stage, ()):
                blocks, roles = blocks + STAGES[other][0], roles + STAGES[other][1]
        wanted = ["run", *blocks, *(ROLE_BLOCK[r] for r in roles), *self.backend_blocks(roles)]
        return tuple(dict.fromkeys(wanted))

    def stage_settings(self, stage: str) -> dict[str, dict[str, Any]]:
        """The output-changing fields of every block a stage reads, by block: what the
        stage's settings hash covers, so a new output field cannot be left out of it."""
        return {b: getattr(self, b).output_values() for b in self.stage_blocks(stage)}

    def table(self, *names_: str) -> Any:
        """The fields of the named blocks or stages (a stage: the blocks it reads; none
        given: all) as a DataFrame of block, parameter, value, kind (output or runtime) and
        doc: what a notebook shows of its config."""
        import pandas as pd

        from nhr.steps import STAGES

        chosen: list[str] = []
        for name in names_ or tuple(BLOCKS):
            if name in STAGES:
                chosen += self.stage_blocks(name)
            elif name in BLOCKS:
                chosen.append(name)
            else:
                raise ConfigError(
                    f"unknown config block or stage {name!r}",
                    f"use a block ({', '.join(BLOCKS)}) or a stage ({', '.join(STAGES)})",
                )
        rows = [row for b in dict.fromkeys(chosen) for row in getattr(self, b).rows(b)]
        return pd.DataFrame(rows).set_index(["block", "parameter"])

    def __repr_args__(self) -> Any:
        return [(b, getattr(self, b)) for b in BLOCKS]


# ------------------------------------------------------------------- run config and resume
class RunConfig(BaseModel):
    """A run config file: the run's name and folder, notebooks in order, and parameters."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    run_dir: Path | str  # a folder, or an object-store URL (``s3://bucket/run``)
    notebooks: tuple[Path, ...]
    pipeline: PipelineConfig
    source: Path | None = None
    tiny_models: Path | None = None  # write the tiny diffusers models here first if missing

    @classmethod
    def load(
        cls,
        path: Path,
        overrides: dict[str, Any] | None = None,
        run_dir: Path | str | None = None,
    ) -> RunConfig:
        """Read and validate a run config YAML, applying ``-p KEY VALUE`` overrides."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", "pass a file from configs/")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"{path} is not valid YAML{where}", "fix the syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a mapping", "see configs/demo.yaml for the shape")
        allowed = {"name", "run_dir", "notebooks", "params", "tiny_models"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(
                f"unknown top-level key(s) {sorted(unknown)} in {path}",
                f"use only {sorted(allowed)}",
            )
        name = data.get("name") or path.stem
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"run name {name!r} in {path}", "use letters, digits, - and _")
        notebooks = data.get("notebooks")
        if not notebooks or not isinstance(notebooks, list):
            raise ConfigError(f"{path} lists no notebooks", "add a `notebooks:` list")
        nb_paths = [find_notebook(Path(nb), path) for nb in notebooks]
        params = dict(data.get("params") or {})
        for key, value in (overrides or {}).items():
            params[key.upper()] = value
        pipeline = PipelineConfig.from_params(params)
        from nhr.store.files import location

        folder = run_dir or data.get("run_dir") or f"results/{name}"
        return cls(
            name=name,
            run_dir=location(folder),
            notebooks=tuple(nb_paths),
            pipeline=pipeline,
            source=path,
            tiny_models=Path(data["tiny_models"]) if data.get("tiny_models") else None,
        )


def repo_root() -> Path:
    """The folder holding the ``nhr`` package (the repository, in a checkout)."""
    return Path(__file__).resolve().parent.parent


def find_notebook(nb: Path, config: Path) -> Path:
    """A notebook a run config names: an absolute path as is; a relative one beside the
    config's folder (``configs/x.yaml`` → ``notebooks/...``), in the repository, in the
    current folder, or beside the config, the first that exists. The error names every
    path tried."""
    if nb.is_absolute():
        tried = [nb]
    else:
        here = config.resolve().parent
        tried = []
        for base in (here.parent, repo_root(), Path.cwd(), here):
            if base / nb not in tried:
                tried.append(base / nb)
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"notebook {nb} named in {config} does not exist (tried: "
        + ", ".join(str(t) for t in tried)
        + ")",
        "fix the path or restore the notebook from git",
    )


def reconcile(run_dir: Path | str, params: dict[str, Any]) -> PipelineConfig:
    """The config of a run folder, given (some of) its parameters.

    ``config.yaml`` in the run folder records every parameter given so far (``nhr run``
    gives them all at once; notebooks run by hand add theirs one by one). A runtime
    parameter may change on resume (the new value is recorded); an output-changing one that
    disagrees with the recorded value is refused, so one run folder never mixes outputs
    made with different settings. Parameters never given take the defaults.
    """
    from nhr.errors import RunFolderError
    from nhr.store import open_files

    full = PipelineConfig.from_params(params).to_params()
    given = {k.upper(): full[k.upper()] for k in params}
    files = open_files(run_dir)  # a path or an object-store URL
    path = files.describe("config.yaml")
    saved: dict[str, Any] = {}
    try:
        text: str | None = files.read_bytes("config.yaml").decode()
    except (FileNotFoundError, IsADirectoryError):
        text = None
    if text is not None:
        try:
            raw = yaml.safe_load(text) or {}
            canon = PipelineConfig.from_params(raw).to_params()
            saved = {k.upper(): canon[k.upper()] for k in raw}
        except (ConfigError, yaml.YAMLError, AttributeError) as err:
            raise RunFolderError(
                f"{path} is damaged or from another version ({err})",
                "use a new run folder, or delete this one to start over",
            ) from None
    changed = sorted(k for k in given if k in saved and saved[k] != given[k])
    refused = [k for k in changed if PipelineConfig.kind(k) == OUTPUT]
    if refused:
        shown = ", ".join(f"{k}: {saved[k]!r} → {given[k]!r}" for k in refused[:5])
        raise RunFolderError(
            f"{run_dir} was made with another config ({shown}), which changes outputs",
            f"keep {refused[0]}={saved[refused[0]]!r} to resume, or use a new run folder "
            "(--run-dir / RUN_DIR), or delete it to start over",
        )
    merged = {**saved, **given}
    if merged != saved or text is None:
        files.write_bytes("config.yaml", yaml.safe_dump(merged, sort_keys=True).encode())
    return PipelineConfig.from_params(merged)


def parse_override(value: str) -> Any:
    """Parse a ``-p KEY VALUE`` value as YAML (numbers, booleans, lists), else a string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value
