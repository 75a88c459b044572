"""One object bundling the synthetic world's backends around a shared truth folder."""

from __future__ import annotations

from pathlib import Path

from nhr.store.files import location

from .captioner import SyntheticCaptioner, SyntheticCaptionWriter
from .editor import SyntheticEditor
from .judge import SyntheticJudge
from .prompter import SyntheticPrompter
from .renderer import SyntheticRenderer
from .truth import SyntheticTruth

# A world like the paper's funnel, as run parameters: (source, instruction) pairs of their
# own difficulty (the ``paper`` group spread: 15.3 % of edits pass the hard validator, the
# argmax step drops 31 % of the passes under the paper's scheduler) and the paper's gate
# share (516k of 1.17M sources, 44 %). The default world stays the independent one.
PAPER_WORLD: dict[str, float | str] = {
    "SYNTHETIC_GROUP_SPREAD": "paper",
    "SYNTHETIC_IMPLAUSIBLE_RATE": 0.55,
}


class SyntheticWorld:
    """Prompter, renderer, editor, judge, captioner and truth of one synthetic world.

    ``truth_dir`` is where rendered images' layouts are recorded (only evaluation and the
    editor read it; the judge never does). ``seed`` is kept for provenance: every backend
    is deterministic in its own inputs (prompt seeds, render seeds, edit seeds).
    """

    def __init__(
        self,
        truth_dir: Path | str,
        seed: int = 0,
        implausible_rate: float = 0.4,
        compound_share: float = 0.18,
        judge_noise: float = 1.0,
        hard_share: float = 0.0,
        group_spread: float | str = 0.0,
    ) -> None:
        if not isinstance(truth_dir, (str, Path)) or not str(truth_dir):
            raise ValueError(f"truth_dir must be a non-empty path, got {truth_dir!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if not 0.0 <= float(implausible_rate) <= 1.0:
            raise ValueError(f"implausible_rate must be in [0, 1], got {implausible_rate!r}")
        if not 0.0 <= float(compound_share) < 1.0:
            raise ValueError(f"compound_share must be in [0, 1), got {compound_share!r}")
        if not 0.0 <= float(hard_share) <= 1.0:
            raise ValueError(f"hard_share must be in [0, 1], got {hard_share!r}")
        if not 0.0 <= float(judge_noise) <= 3.0:
            raise ValueError(f"judge_noise must be in [0, 3], got {judge_noise!r}")
        self.truth_dir = location(truth_dir)  # a folder, or an object-store URL
        local = isinstance(self.truth_dir, Path)
        if local and self.truth_dir.exists() and not self.truth_dir.is_dir():
            raise ValueError(f"truth_dir {self.truth_dir} exists and is not a folder")
        self.seed = seed
        self.truth = SyntheticTruth(self.truth_dir)
        self.prompter = SyntheticPrompter(compound_share=float(compound_share))
        self.renderer = SyntheticRenderer(self.truth, implausible_rate=float(implausible_rate))
        self.editor = SyntheticEditor(self.truth, hard_share=float(hard_share), spread=group_spread)
        self.judge = SyntheticJudge(noise=float(judge_noise))
        self.captioner = SyntheticCaptioner()
        self.caption_writer = SyntheticCaptionWriter(self.prompter)
