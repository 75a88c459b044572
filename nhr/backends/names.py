"""The backend names of each role and the config blocks each backend family reads.

This module imports nothing, so the config can check a role's backend name without
importing the registry (which imports the config). ``nhr.backends.registry`` refuses to
load when its factories and these names disagree, so the two cannot drift apart.
"""

from __future__ import annotations

ROLES: tuple[str, ...] = (
    "prompter",
    "t2i",
    "gate_judge",
    "editor",
    "prefilter_judge",
    "validator",
    "inverter",
    "captioner",
    "caption_writer",
)

_JUDGE = ("synthetic", "plumbing-accept-all", "gemini", "openai", "null")

BACKENDS: dict[str, tuple[str, ...]] = {
    "prompter": ("synthetic", "plumbing", "gemini", "openai", "null"),
    "t2i": ("synthetic", "diffusers", "null"),
    "gate_judge": _JUDGE,
    "editor": ("synthetic", "flux-kontext", "qwen-image-edit", "instruct-pix2pix", "null"),
    "prefilter_judge": _JUDGE,
    "validator": (*_JUDGE, "gemini-viescore", "openai-viescore", "openai-imgedit", "ensemble"),
    "inverter": ("synthetic", "plumbing", "gemini", "openai", "null"),
    "captioner": ("synthetic", "plumbing", "gemini", "openai"),
    "caption_writer": ("synthetic", "plumbing", "gemini", "openai"),
}

# config blocks (``nhr.config``) whose output-changing fields a backend's results depend on
FAMILY_BLOCKS: dict[str, tuple[str, ...]] = {
    "synthetic": ("synthetic",),
    "plumbing": (),
    "null": (),
    "plumbing-accept-all": (),
    "diffusers": ("diffusers",),
    "flux-kontext": ("diffusers",),
    "qwen-image-edit": ("diffusers",),
    "instruct-pix2pix": ("diffusers",),
    "gemini": ("api", "gemini"),
    "openai": ("api", "openai"),
    "gemini-viescore": ("api", "gemini"),
    "openai-viescore": ("api", "openai"),
    "openai-imgedit": ("api", "openai"),
    # an ensemble's members may be of any family
    "ensemble": ("synthetic", "api", "gemini", "openai"),
}


def known(role: str) -> tuple[str, ...]:
    """Backend names registered for a role."""
    return BACKENDS[role]


# the synthetic editor's named group spreads (``SYNTHETIC_GROUP_SPREAD``): intra-pair
# correlation of its successes and the scale of its chance of a correct edit; ``paper``
# is calibrated on the paper's funnel (``nhr.backends.synthetic.editor``)
SYNTHETIC_GROUP_SPREADS: dict[str, tuple[float, float]] = {"paper": (0.99, 0.72)}
