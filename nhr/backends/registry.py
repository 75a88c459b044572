"""Builds the backends a config names, from one registry per role.

Each role (``prompter``, ``t2i``, ``gate_judge``, ``editor``, ``prefilter_judge``,
``validator``, ``inverter``, and for photo sources ``captioner`` and ``caption_writer``)
maps backend names to factories. A factory takes the build
context and returns an object implementing the role's protocol (``nhr.backends.base``);
heavy dependencies are imported inside the factory, so an unused backend costs nothing
and a missing one fails with the extra to install. Adding a backend is adding an entry
here and its name in ``nhr.backends.names`` (where the config checks backend names
without importing this module; a mismatch stops this module from loading).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nhr.backends import names
from nhr.config import PipelineConfig
from nhr.errors import BackendError
from nhr.store.files import join, location


@dataclass
class BuildContext:
    """What a factory gets: the config, the run folder, and a memo for shared objects
    (one synthetic world, one API client) across roles."""

    cfg: PipelineConfig
    run_dir: Path | str  # a folder, or an object-store URL
    _shared: dict[str, Any] = field(default_factory=dict)

    def shared(self, name: str, make: Callable[[], Any]) -> Any:
        """The object called ``name``, made once per build."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]


Factory = Callable[[BuildContext], Any]


def _world(ctx: BuildContext) -> Any:
    """The embedded synthetic world, with its truth folder inside the run."""
    from nhr.backends.synthetic import SyntheticWorld

    return ctx.shared(
        "synthetic-world",
        lambda: SyntheticWorld(
            truth_dir=join(ctx.run_dir, "truth"),
            seed=ctx.cfg.run.seed,
            implausible_rate=ctx.cfg.synthetic.synthetic_implausible_rate,
            judge_noise=ctx.cfg.synthetic.synthetic_judge_noise,
            hard_share=ctx.cfg.synthetic.synthetic_hard_share,
            group_spread=ctx.cfg.synthetic.synthetic_group_spread,
        ),
    )


def _no_lora(ctx: BuildContext) -> None:
    """Refuse EDITOR_LORA for an editor that cannot load one (rather than ignore it)."""
    if ctx.cfg.edits.editor_lora:
        raise BackendError(
            f"EDITOR_LORA={ctx.cfg.edits.editor_lora!r} with EDITOR={ctx.cfg.edits.editor}, "
            "which loads no LoRA",
            "use a diffusers editor (flux-kontext, qwen-image-edit) or clear EDITOR_LORA",
        )


def _synthetic_editor(ctx: BuildContext) -> Any:
    """The synthetic world's editor; with SYNTHETIC_GPU_SECONDS > 0 the same editor on a
    simulated GPU (same pixels, that many seconds per image, one call at a time)."""
    _no_lora(ctx)
    seconds = ctx.cfg.synthetic.synthetic_gpu_seconds
    if not seconds:
        return _world(ctx).editor
    from nhr.backends.synthetic.gpu import SimulatedGpuEditor

    return ctx.shared(
        "synthetic-gpu-editor",
        lambda: SimulatedGpuEditor(
            _world(ctx).truth,
            seconds,
            ctx.cfg.synthetic.synthetic_hard_share,
            ctx.cfg.synthetic.synthetic_group_spread,
        ),
    )


def _synthetic_inverter() -> Any:
    """The synthetic world's template inverse/compose writer."""
    from nhr.backends.synthetic.inverter import SyntheticInverter

    return SyntheticInverter()


REGISTRY: dict[str, dict[str, Factory]] = {
    "prompter": {"synthetic": lambda ctx: _world(ctx).prompter},
    "t2i": {"synthetic": lambda ctx: _world(ctx).renderer},
    "gate_judge": {"synthetic": lambda ctx: _world(ctx).judge},
    "editor": {"synthetic": _synthetic_editor},
    "prefilter_judge": {"synthetic": lambda ctx: _world(ctx).judge},
    "validator": {"synthetic": lambda ctx: _world(ctx).judge},
    "inverter": {"synthetic": lambda ctx: _synthetic_inverter()},
}

# --- diffusers backends ---
DIFFUSERS_RESIDENCY = "diffusers-residency"  # shared name: one diffusers model on the GPU


def _lora(ctx: BuildContext) -> dict[str, Any]:
    """The editor's LoRA (EDITOR_LORA at EDITOR_LORA_SCALE; '': none) and scheduler."""
    edits = ctx.cfg.edits
    return {
        "lora": edits.editor_lora,
        "lora_scale": edits.editor_lora_scale,
        "scheduler": edits.editor_scheduler,
    }


def _diffusers_kwargs(ctx: BuildContext) -> dict[str, Any]:
    """Options and the shared one-model-on-the-GPU residency of the diffusers backends."""
    from nhr.backends.diffusers_runtime import DiffusersOptions, Residency

    return {
        "options": DiffusersOptions.from_config(ctx.cfg),
        "residency": ctx.shared(DIFFUSERS_RESIDENCY, Residency),
    }


def _edit_buckets(ctx: BuildContext) -> Any:
    """The buckets a diffusers editor works at (RESOLUTIONS; None: free)."""
    from nhr.resolutions import resolution_set

    return resolution_set(ctx.cfg.sources.resolutions)


def _make_diffusers_t2i(ctx: BuildContext) -> Any:
    from nhr.backends.diffusers_t2i import DiffusersTextToImage

    return DiffusersTextToImage(ctx.cfg.sources.t2i_model, **_diffusers_kwargs(ctx))


def _make_kontext(ctx: BuildContext) -> Any:
    from nhr.backends.diffusers_kontext import KontextEditor

    return KontextEditor(
        ctx.cfg.edits.editor_model,
        max_area=ctx.cfg.edits.edit_max_area,
        preferred_resolutions=ctx.cfg.edits.edit_preferred_resolutions,
        buckets=_edit_buckets(ctx),
        **_diffusers_kwargs(ctx),
        **_lora(ctx),
    )


def _make_qwen_edit(ctx: BuildContext) -> Any:
    from nhr.backends.diffusers_qwen_edit import QwenImageEditor

    return QwenImageEditor(
        ctx.cfg.edits.editor_model,
        max_area=ctx.cfg.edits.edit_max_area,
        buckets=_edit_buckets(ctx),
        **_diffusers_kwargs(ctx),
        **_lora(ctx),
    )


def _make_pix2pix(ctx: BuildContext) -> Any:
    from nhr.backends.diffusers_pix2pix import Pix2PixEditor

    return Pix2PixEditor(
        ctx.cfg.edits.editor_model,
        max_area=ctx.cfg.edits.edit_max_area,
        image_guidance=ctx.cfg.edits.pix2pix_image_guidance,
        buckets=_edit_buckets(ctx),
        **_diffusers_kwargs(ctx),
        **_lora(ctx),
    )


def _plumbing(ctx: BuildContext, role: str) -> Any:
    """Plumbing-check backends (accept-all judge, templates): for tiny random models."""
    from nhr.backends import plumbing

    make = {"judge": plumbing.AcceptAllJudge, "prompter": plumbing.PlumbingPrompter}
    return ctx.shared(f"plumbing-{role}", make.get(role, plumbing.PlumbingInverter))


REGISTRY["t2i"]["diffusers"] = _make_diffusers_t2i
REGISTRY["editor"]["flux-kontext"] = _make_kontext
REGISTRY["editor"]["qwen-image-edit"] = _make_qwen_edit
REGISTRY["editor"]["instruct-pix2pix"] = _make_pix2pix
REGISTRY["prompter"]["plumbing"] = lambda ctx: _plumbing(ctx, "prompter")
REGISTRY["inverter"]["plumbing"] = lambda ctx: _plumbing(ctx, "inverter")
for _role in ("gate_judge", "prefilter_judge", "validator"):
    REGISTRY[_role]["plumbing-accept-all"] = lambda ctx: _plumbing(ctx, "judge")
# --- end diffusers backends ---


# --- remote model APIs ---
def _remote(backend: str, role: str) -> Factory:
    """The factory of a role on a remote model API (``nhr.backends.api_roles``)."""

    def make(ctx: BuildContext) -> Any:
        from nhr.backends.api_roles import build_role

        return build_role(ctx, backend, role)

    return make


for _backend in ("gemini", "openai"):
    for _role in ("prompter", "gate_judge", "prefilter_judge", "validator", "inverter"):
        REGISTRY[_role][_backend] = _remote(_backend, _role)
# --- end remote model APIs ---


# --- the null world (instant backends for engine benchmarks) ---
def _null(role: str) -> Factory:
    """The factory of a role in the run's one null world (``nhr.backends.null``)."""

    def make(ctx: BuildContext) -> Any:
        from nhr.backends.null import NullWorld

        return ctx.shared("null-world", NullWorld).backend(role)

    return make


for _role in REGISTRY:
    REGISTRY[_role]["null"] = _null(_role)
# --- end null world ---


# --- photos and images: the captioner and the caption instruction writer ---
PHOTO_ROLES = ("captioner", "caption_writer")


def synthetic_world(ctx: BuildContext) -> Any:
    """The run's synthetic world (made on first use), e.g. to render stand-in photos."""
    return _world(ctx)


def _remote_photo(backend: str, role: str) -> Factory:
    """The factory of a photo-source role on a remote model API."""

    def make(ctx: BuildContext) -> Any:
        from nhr.backends.api_photo_roles import build_photo_role

        return build_photo_role(ctx, backend, role)

    return make


def _plumbing_photo(role: str) -> Factory:
    """The factory of a photo-source role of the plumbing backends."""

    def make(ctx: BuildContext) -> Any:
        from nhr.backends import plumbing

        cls = plumbing.PlumbingCaptioner if role == "captioner" else plumbing.PlumbingCaptionWriter
        return ctx.shared(f"plumbing-{role}", cls)

    return make


for _role in PHOTO_ROLES:
    REGISTRY[_role] = {
        "synthetic": lambda ctx, _r=_role: getattr(_world(ctx), _r),
        "plumbing": _plumbing_photo(_role),
        **{b: _remote_photo(b, _role) for b in ("gemini", "openai")},
    }
# --- end photos and images ---


# --- judges: judge formats and the ensemble (validator role) ---
def _judge_style(transport: str, style: str) -> Factory:
    """The factory of a judge-format validator (VIEScore, ImgEdit) over a transport."""

    def make(ctx: BuildContext) -> Any:
        from nhr.backends.judge_ensemble import build_style

        return build_style(ctx, transport, style)

    return make


def _ensemble(ctx: BuildContext) -> Any:
    """The ensemble validator over the validator registry's members."""
    from nhr.backends.judge_ensemble import build_ensemble

    return build_ensemble(ctx, REGISTRY["validator"])


REGISTRY["validator"]["gemini-viescore"] = _judge_style("gemini", "viescore")
REGISTRY["validator"]["openai-viescore"] = _judge_style("openai", "viescore")
REGISTRY["validator"]["openai-imgedit"] = _judge_style("openai", "imgedit")
REGISTRY["validator"]["ensemble"] = _ensemble
# --- end judges ---


def _check_names() -> None:
    """Refuse to load when the factories and ``nhr.backends.names`` (which the config
    checks backend names against) disagree."""
    for role in names.ROLES:
        declared, built = set(names.known(role)), set(REGISTRY.get(role, {}))
        if declared != built or set(REGISTRY) != set(names.ROLES):
            raise RuntimeError(
                f"backends of {role!r}: nhr.backends.names declares {sorted(declared)}, "
                f"the registry builds {sorted(built)}; add the name to both"
            )
        for name in built:
            if name not in names.FAMILY_BLOCKS:
                raise RuntimeError(
                    f"backend {name!r} has no entry in nhr.backends.names.FAMILY_BLOCKS"
                )


_check_names()


def known(role: str) -> tuple[str, ...]:
    """Backend names registered for a role."""
    return tuple(REGISTRY[role])


@dataclass
class Backends:
    """The backends of a run; ``truth`` is set only when a synthetic world is in use."""

    ctx: BuildContext
    _built: dict[str, Any] = field(default_factory=dict)

    def get(self, role: str) -> Any:
        """The backend of a role, built on first use."""
        if role not in self._built:
            name = self.ctx.cfg.value(role)
            factories = REGISTRY[role]
            if name not in factories:
                raise BackendError(
                    f"unknown backend {name!r} for {role.upper()}",
                    f"use one of: {', '.join(factories)}",
                )
            self._built[role] = factories[name](self.ctx)
        return self._built[role]

    def __getattr__(self, role: str) -> Any:
        if role in REGISTRY:
            return self.get(role)
        raise AttributeError(role)

    @property
    def truth(self) -> Any | None:
        """The synthetic world's truth when any role uses the synthetic world, else None."""
        cfg = self.ctx.cfg
        unused = ("prompter", "t2i") if cfg.sources.sources == "photos" else PHOTO_ROLES
        roles = [r for r in REGISTRY if r not in unused]
        uses_world = any(cfg.value(role) == "synthetic" for role in roles)
        return _world(self.ctx).truth if uses_world else None


def build_backends(cfg: PipelineConfig, run_dir: Path | str) -> Backends:
    """The backends of a config; each is built when a stage first asks for it."""
    return Backends(BuildContext(cfg, location(run_dir)))
