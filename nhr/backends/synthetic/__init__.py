"""The synthetic world: a CPU-only, offline, deterministic stand-in for every model.

Prompter, text-to-image, editor and judge for a toy world of coloured shapes, with a
hidden truth (:class:`SyntheticTruth`) that only evaluation reads.
"""

from .editor import SyntheticEditor, outcome_probabilities
from .judge import SyntheticJudge
from .language import EDIT_TYPES, invert_instruction, parse_instruction, parse_prompt
from .prompter import TOPICS, SyntheticPrompter
from .renderer import SyntheticRenderer
from .scene import BACKGROUNDS, COLOURS, KINDS, STYLES, Layout
from .truth import SourceTruth, SyntheticTruth, TripletTruth, pixel_hash
from .world import SyntheticWorld

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "EDIT_TYPES",
    "KINDS",
    "STYLES",
    "TOPICS",
    "Layout",
    "SourceTruth",
    "SyntheticEditor",
    "SyntheticJudge",
    "SyntheticPrompter",
    "SyntheticRenderer",
    "SyntheticTruth",
    "SyntheticWorld",
    "TripletTruth",
    "invert_instruction",
    "outcome_probabilities",
    "parse_instruction",
    "parse_prompt",
    "pixel_hash",
]
