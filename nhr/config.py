"""The run configuration: one frozen, validated dataclass, and the YAML run config.

Notebooks expose each field they use as an UPPER_CASE literal in their ``parameters``
cell; ``PipelineConfig.from_parameters(globals())`` turns those literals into a validated
config. A run config YAML names the notebooks of a run, in order, and the parameters to
pass them; ``nhr run`` validates it whole before anything runs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nhr.errors import ConfigError


def _f(
    default: Any,
    doc: str,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
    role: bool = False,
) -> Any:
    """A config field with its documentation, allowed range or choices; ``role`` marks a
    backend name, checked against the backend registry."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "role": role}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PipelineConfig:
    """Every tunable of the mining chain; defaults are the paper's where it gives one."""

    seed: int = _f(0, "master seed of the run", 0, 2**31 - 1)
    # stage 1: prompts
    prompter: str = _f("synthetic", "prompt writer backend", role=True)
    n_prompts: int = _f(100, "text-to-image prompts to write", 1, 10_000_000)
    k_instructions: int = _f(5, "edit instructions written per prompt (k)", 1, 50)
    # stage 2: sources
    t2i: str = _f("synthetic", "text-to-image backend", role=True)
    n_source_seeds: int = _f(10, "source images per prompt (N)", 1, 1000)
    long_side_min: int = _f(860, "smallest long side of a source, px", 16, 8192)
    long_side_max: int = _f(2200, "largest long side of a source, px", 16, 8192)
    aspect_max: float = _f(6.0, "most extreme aspect ratio (1:x to x:1)", 1.0, 16.0)
    t2i_steps: int = _f(4, "text-to-image denoising steps", 1, 200)
    t2i_guidance: float = _f(0.0, "text-to-image guidance scale", 0.0, 50.0)
    # stage 3: plausibility gate
    gate_judge: str = _f("synthetic", "plausibility gate backend", role=True)
    # stage 4: edits
    editor: str = _f("synthetic", "image editor backend", role=True)
    m_edit_seeds: int = _f(5, "edit seeds per (source, instruction) (M)", 1, 100)
    edit_steps_min: int = _f(18, "fewest edit denoising steps", 1, 200)
    edit_steps_max: int = _f(28, "most edit denoising steps", 1, 200)
    edit_guidance: tuple[float, ...] = _f((2.5,), "guidance values; each job draws one", 0.0, 50.0)
    max_edit_jobs: int = _f(0, "cap on edit jobs drawn from the N×k×M grid (0: no cap)", 0, 10**9)
    edit_budget_seconds: float = _f(0.0, "cap on editor seconds (0: no cap)", 0.0, 1e9)
    # stages 5–7: filters and the hard validator
    prefilter_judge: str = _f("synthetic", "soft pre-filter backend", role=True)
    prefilter: bool = _f(True, "run the soft pre-filter")
    prefilter_min_score: float = _f(
        3.0, "soft pre-filter: drop if either score is below this", 1.0, 5.0
    )
    lowlevel: bool = _f(True, "run the low-level check")
    diff_threshold: int = _f(40, "low-level check: |Ie−I0| above this is a changed pixel", 0, 255)
    min_component_share: float = _f(
        0.005, "low-level check: drop if largest component < this share of changed pixels", 0.0, 1.0
    )
    validator: str = _f("synthetic", "hard validator backend", role=True)
    threshold: float = _f(4.7, "hard validator: pass iff both scores >= this", 1.0, 5.0)
    # the synthetic world (used by every role named "synthetic")
    synthetic_judge_noise: float = _f(
        1.0, "synthetic judge: scale of its VLM-like scoring noise (0: none)", 0.0, 3.0
    )
    synthetic_implausible_rate: float = _f(
        0.4, "synthetic renderer: share of renders that are implausible", 0.0, 1.0
    )
    # bootstrapping (stages 8-10)
    inverter: str = _f("synthetic", "inverse/composed instruction writer backend", role=True)
    inversion: bool = _f(True, "write inverse triplets and check backward consistency")
    composition: bool = _f(True, "compose pairs of accepted edits of one source")
    compose_validate: bool = _f(True, "score composed triplets with the hard validator")
    compose_max_pairs: int = _f(4, "composed pairs drawn per source at most", 0, 1000)
    dedup: bool = _f(True, "drop exact and near-duplicate triplets")
    dedup_max_distance: int = _f(
        4, "dedup: perceptual-hash bits two near-duplicate images may differ in", 0, 32
    )
    # model ids per role ("" = the backend's default model)
    prompter_model: str = _f("", "prompt writer model id")
    t2i_model: str = _f("", "text-to-image model id or local folder")
    gate_model: str = _f("", "plausibility gate model id")
    editor_model: str = _f("", "editor model id or local folder")
    prefilter_model: str = _f("", "soft pre-filter model id")
    validator_model: str = _f("", "hard validator model id (a tuned endpoint too)")
    inverter_model: str = _f("", "inverse/composed instruction writer model id")
    # --- diffusers backends (issue 4) ---
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
    )
    diffusers_vae_tiling: bool = _f(False, "decode/encode in tiles (less memory at high res)")
    diffusers_compile: bool = _f(False, "torch.compile the denoiser (faster after a warm-up)")
    diffusers_max_batch: int = _f(8, "most images per diffusers call (less: less memory)", 1, 1024)
    edit_max_area: int = _f(
        0, "pixels the editor works at, result resized to the source (0: model's own)", 0, 2**26
    )
    edit_preferred_resolutions: bool = _f(
        True, "Kontext: edit at its nearest trained resolution (else at the source's aspect)"
    )
    pix2pix_image_guidance: float = _f(1.5, "InstructPix2Pix image guidance scale", 0.0, 50.0)
    hf_token_env: str = _f("HF_TOKEN", "environment variable holding a Hugging Face token")
    # --- end diffusers backends ---
    # --- remote model APIs (issue 5) ---
    api_concurrency: int = _f(16, "remote model calls in flight at once, per backend", 1, 4096)
    api_rpm: float = _f(0.0, "requests per minute cap, per backend (0: none)", 0.0, 1e9)
    api_tpm: float = _f(0.0, "tokens per minute cap, per backend (0: none)", 0.0, 1e12)
    api_timeout_seconds: float = _f(60.0, "timeout of one remote call, s", 0.01, 3600.0)
    api_attempts: int = _f(
        6, "tries per call on 408/429/5xx, timeouts and dropped connections", 1, 100
    )
    api_backoff_seconds: float = _f(
        1.0, "first retry wait when the server sends no Retry-After, s", 0.0, 600.0
    )
    api_backoff_max_seconds: float = _f(
        60.0, "longest retry wait (a longer Retry-After is capped to this), s", 0.0, 3600.0
    )
    api_content_retries: int = _f(
        1, "re-asks after a malformed, blocked, empty or out-of-range answer", 0, 10
    )
    api_cache: bool = _f(True, "cache answered requests, so a rerun makes no new calls")
    api_cache_dir: str = _f("", "folder of api_cache.sqlite ('': the run folder)")
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
    )
    api_batch_discount: float = _f(0.5, "price factor of Gemini Batch API calls", 0.0, 1.0)
    gemini_thinking_budget: int = _f(
        0, "Gemini thinking tokens (0: none, as the validator wants; -1: model default)", -1, 65536
    )
    gemini_batch_roles: tuple[str, ...] = _f(
        (),
        "judge roles sent through the Gemini Batch API (half price, minutes to hours; "
        "use a large BATCH_SIZE)",
        choices=("gate_judge", "prefilter_judge", "validator"),
    )
    gemini_batch_poll_seconds: float = _f(30.0, "Gemini batch job poll interval, s", 0.01, 3600.0)
    gemini_batch_max_wait_seconds: float = _f(
        86400.0, "give up waiting for a batch job after this (rerun collects it), s", 0.1, 1e7
    )
    openai_base_url: str = _f(
        "http://127.0.0.1:8000/v1", "base URL of the OpenAI-compatible endpoint (vLLM, SGLang)"
    )
    openai_default_model: str = _f(
        "Qwen/Qwen2.5-VL-7B-Instruct", "model of the openai backend where a *_MODEL is ''"
    )
    openai_key_env: str = _f(
        "OPENAI_API_KEY", "environment variable holding the endpoint's key (may be unset)"
    )
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
    # --- end remote model APIs ---
    # --- evaluation (issue 6) ---
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
    eval_ablation_dir: str = _f("results/ablations", "folder of the ablation runs, one each")
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
    # --- end evaluation ---
    # --- photos and images ---
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
    captioner: str = _f("synthetic", "VLM that describes each photo (SOURCES photos)", role=True)
    captioner_model: str = _f("", "captioner model id")
    caption_writer: str = _f(
        "synthetic", "writes k edit instructions from a photo's caption", role=True
    )
    caption_writer_model: str = _f("", "caption instruction writer model id")
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
    export_webdataset: bool = _f(True, "also write WebDataset .tar shards beside the parquet")
    export_webdataset_shard_rows: int = _f(1000, "samples per WebDataset shard", 1, 10**7)
    export_license: str = _f("cc-by-4.0", "licence id written in the dataset card")
    # --- end photos and images ---
    # running
    batch_size: int = _f(16, "rows per batch (and per output shard)", 1, 100_000)
    workers: int = _f(1, "batches processed at once (for API-bound stages)", 1, 1024)
    # stage 11: export
    export_shard_rows: int = _f(1000, "rows per exported parquet shard", 1, 10**7)
    export_preference_pairs: int = _f(
        1, "rejected edits paired with each mined triplet in the preference config", 0, 100
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(f.name, value, hints[f.name], f.metadata)
        if self.long_side_min > self.long_side_max:
            raise ConfigError(
                f"long_side_min={self.long_side_min} is above long_side_max={self.long_side_max}",
                "set LONG_SIDE_MIN <= LONG_SIDE_MAX",
            )
        if self.edit_steps_min > self.edit_steps_max:
            raise ConfigError(
                f"edit_steps_min={self.edit_steps_min} is above "
                f"edit_steps_max={self.edit_steps_max}",
                "set EDIT_STEPS_MIN <= EDIT_STEPS_MAX",
            )
        if not self.edit_guidance:
            raise ConfigError("edit_guidance is empty", "give at least one value, e.g. [2.5]")
        from nhr.images import parse_colour

        try:
            parse_colour(self.image_background)
        except ValueError as err:
            raise ConfigError(
                f"IMAGE_BACKGROUND={self.image_background!r}: {err}", "use e.g. '#ffffff'"
            ) from None
        if self.sources == "photos" and not self.photos:
            raise ConfigError(
                "SOURCES is photos but PHOTOS is empty",
                "set PHOTOS to a folder, parquet, WebDataset shards or a hub id",
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all fields, lower case."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PipelineConfig:
        """Build from UPPER_CASE (or lower case) parameter names; unknown names are refused."""
        known = set(cls.field_names())
        values = {}
        for name, value in params.items():
            key = name.lower()
            if key not in known:
                raise ConfigError(
                    f"unknown parameter {name!r}",
                    f"use one of: {', '.join(sorted(k.upper() for k in known))}",
                )
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    @classmethod
    def params_in(cls, namespace: dict[str, Any]) -> dict[str, Any]:
        """The UPPER_CASE names in a notebook's globals that are config fields."""
        known = {n.upper() for n in cls.field_names()}
        return {k: v for k, v in namespace.items() if k in known}

    def to_params(self) -> dict[str, Any]:
        """The config as UPPER_CASE literals (tuples as lists), as notebooks take them."""
        return {
            f.name.upper(): list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }


def _check(name: str, value: Any, hint: Any, meta: Any) -> None:
    """Validate one field's type and range, raising a ConfigError naming the fix."""
    upper = name.upper()
    origin = typing.get_origin(hint)
    items = value if origin is tuple else (value,)
    base = typing.get_args(hint)[0] if origin is tuple else hint
    if origin is tuple and not isinstance(value, tuple):
        raise ConfigError(f"{upper}={value!r} is not a list", f"give {upper} as a list, e.g. [2.5]")
    for item in items:
        ok = isinstance(item, base) and not (base is not bool and isinstance(item, bool))
        if base is float and isinstance(item, int) and not isinstance(item, bool):
            ok = True
        if not ok:
            raise ConfigError(
                f"{upper}={value!r} is not of type {base.__name__}",
                f"give {upper} a {base.__name__} ({meta['doc']})",
            )
        choices = meta["choices"]
        if meta["role"]:
            from nhr.backends.registry import known

            choices = known(name)
        if choices is not None and item not in choices:
            what = "a known backend" if meta["role"] else "an allowed value"
            raise ConfigError(
                f"{upper}={item!r} is not {what}",
                f"use one of: {', '.join(map(str, choices))}",
            )
        lo, hi = meta["lo"], meta["hi"]
        if base in (int, float) and (
            (lo is not None and item < lo) or (hi is not None and item > hi)
        ):
            raise ConfigError(
                f"{upper}={item!r} is out of range",
                f"choose a value in [{lo}, {hi}] ({meta['doc']})",
            )


@dataclass(frozen=True)
class RunConfig:
    """A run config file: the run's name and folder, notebooks in order, and parameters."""

    name: str
    run_dir: Path
    notebooks: tuple[Path, ...]
    pipeline: PipelineConfig
    source: Path | None = None
    tiny_models: Path | None = None  # write the tiny diffusers models here first if missing

    @classmethod
    def load(
        cls,
        path: Path,
        overrides: dict[str, Any] | None = None,
        run_dir: Path | None = None,
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
        folder = run_dir or Path(data.get("run_dir") or f"results/{name}")
        tiny = data.get("tiny_models")
        return cls(
            name, Path(folder), tuple(nb_paths), pipeline, path, Path(tiny) if tiny else None
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


def reconcile(run_dir: Path, params: dict[str, Any]) -> PipelineConfig:
    """The config of a run folder, given (some of) its parameters.

    ``config.yaml`` in the run folder records every parameter given so far (``nhr run``
    gives them all at once; notebooks run by hand add theirs one by one). A parameter
    that disagrees with the recorded value is refused, so one run folder never mixes
    settings; parameters never given take the defaults.
    """
    from nhr.errors import RunFolderError
    from nhr.store import atomic_write_bytes

    full = PipelineConfig.from_params(params).to_params()
    given = {k.upper(): full[k.upper()] for k in params}
    path = Path(run_dir) / "config.yaml"
    saved: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            canon = PipelineConfig.from_params(raw).to_params()
            saved = {k.upper(): canon[k.upper()] for k in raw}
        except (ConfigError, yaml.YAMLError, AttributeError) as err:
            raise RunFolderError(
                f"{path} is damaged or from another version ({err})",
                "use a new run folder, or delete this one to start over",
            ) from None
    diff = sorted(k for k in given if k in saved and saved[k] != given[k])
    if diff:
        shown = ", ".join(f"{k}: {saved[k]!r} → {given[k]!r}" for k in diff[:5])
        raise RunFolderError(
            f"{run_dir} was made with another config ({shown})",
            "use a new run folder (--run-dir / RUN_DIR), or delete it to start over",
        )
    merged = {**saved, **given}
    if merged != saved or not path.is_file():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, yaml.safe_dump(merged, sort_keys=True).encode())
    return PipelineConfig.from_params(merged)


def parse_override(value: str) -> Any:
    """Parse a ``-p KEY VALUE`` value as YAML (numbers, booleans, lists), else a string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value
