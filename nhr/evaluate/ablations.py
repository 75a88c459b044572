"""Ablations of the mining chain on the synthetic world: what each knob buys.

A grid changes one parameter of a base config at a time — N (source seeds), M (edit
seeds), the hard validator's threshold, the soft pre-filter off, the low-level check
off — and runs the chain up to argmax selection in its own run folder under
``EVAL_ABLATION_DIR`` (named after the change and a hash of the base, so a changed base
never mixes with an old run; a rerun resumes). Each run gives one row: yield (accepted
triplets per generated edit), precision against the world's truth (share of accepted
triplets that are truly correct), validator calls and edits per accepted triplet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nhr.config import PipelineConfig
from nhr.evaluate.truth import judge_vs_truth

if TYPE_CHECKING:
    import pandas as pd

    from nhr.pipeline import Pipeline

EVAL_PREFIX = "EVAL_"


@dataclass(frozen=True)
class Variant:
    """One run of the grid: the parameter it changes (``base`` for none) and its value."""

    parameter: str
    value: Any
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Folder-safe name, e.g. ``threshold-4.3``, ``prefilter-off``, ``base``."""
        if self.parameter == "base":
            return "base"
        value = ("on" if self.value else "off") if isinstance(self.value, bool) else self.value
        return f"{self.parameter}-{value}"


def mining_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The config's parameters that shape a mining run (the evaluation fields left out)."""
    return {k: v for k, v in cfg.to_params().items() if not k.startswith(EVAL_PREFIX)}


def ablation_grid(cfg: PipelineConfig) -> list[Variant]:
    """The base run and one run per changed value (values equal to the base are skipped)."""
    grid = [Variant("base", None)]
    axes = (
        ("n_source_seeds", cfg.evaluation.eval_ablation_n),
        ("m_edit_seeds", cfg.evaluation.eval_ablation_m),
        ("threshold", cfg.evaluation.eval_ablation_thresholds),
    )
    for name, values in axes:
        for v in values:
            if v != cfg.value(name):
                grid.append(Variant(name, v, {name.upper(): v}))
    for switch in cfg.evaluation.eval_ablation_switches:
        if cfg.value(switch):
            grid.append(Variant(switch, False, {switch.upper(): False}))
    return grid


def base_fingerprint(cfg: PipelineConfig) -> str:
    """A short hash of the base mining parameters."""
    blob = json.dumps(mining_params(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def run_variant(root: Path | str, cfg: PipelineConfig, variant: Variant) -> Pipeline:
    """Run (or resume) the chain up to argmax selection for one variant."""
    from nhr.pipeline import Pipeline

    folder = Path(root) / f"{variant.name}-{base_fingerprint(cfg)}"
    pipe = Pipeline.open(folder, {**mining_params(cfg), **variant.overrides}, progress=False)
    pipe.run_chain(until="select")
    return pipe


def measure(pipe: Pipeline, variant: Variant) -> dict[str, Any]:
    """One row of the ablation table from a finished variant run."""
    tables = pipe.tables
    candidates = tables.count("candidates")
    calls = tables.count("validator")
    mined = tables.count("mined")
    truth = judge_vs_truth(tables, pipe.backends.truth)
    return {
        "variant": variant.name,
        "parameter": variant.parameter,
        "value": variant.value,
        "run_dir": str(pipe.store.root),
        "sources_gated": tables.count_passed("plausibility"),
        "edits": candidates,
        "validator_calls": calls,
        "accepted": mined,
        "yield": round(mined / candidates, 4) if candidates else None,
        "precision": truth.get("mined_correct_share"),
        "validator_precision": truth.get("precision"),
        "validator_recall": truth.get("recall"),
        "calls_per_accepted": round(calls / mined, 3) if mined else None,
        "edits_per_accepted": round(candidates / mined, 3) if mined else None,
    }


def run_ablations(cfg: PipelineConfig, root: Path | str | None = None) -> pd.DataFrame:
    """Run every variant of ``cfg``'s grid and tabulate them (base first)."""
    rows = []
    for variant in ablation_grid(cfg):
        pipe = run_variant(root or cfg.evaluation.eval_ablation_dir, cfg, variant)
        rows.append(measure(pipe, variant))
    return ablation_table(rows)


def ablation_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame, with each metric's change against the base run."""
    import pandas as pd

    table = pd.DataFrame(rows)
    base = table[table["parameter"] == "base"]
    if len(base):
        for col in ("yield", "precision", "calls_per_accepted"):
            ref = base.iloc[0][col]
            table[f"{col}_vs_base"] = [
                None
                if v is None or ref is None or pd.isna(v) or pd.isna(ref)
                else round(v - ref, 4)
                for v in table[col]
            ]
    return table


def save_results(table: pd.DataFrame, figure: Any, folders: list[Path | str]) -> list[Path]:
    """Write ``ablations.json``, ``ablations.csv`` and ``ablations.png`` into each folder's
    ``plots/``; returns the JSON paths."""
    from nhr.evaluate.datasets import records
    from nhr.plots import save
    from nhr.store import atomic_write_bytes, atomic_write_json

    out = []
    for folder in dict.fromkeys(str(f) for f in folders):
        plots = Path(folder) / "plots"
        atomic_write_json(plots / "ablations.json", {"variants": records(table)})
        atomic_write_bytes(plots / "ablations.csv", table.to_csv(index=False).encode())
        save(figure, folder, "ablations")
        out.append(plots / "ablations.json")
    return out
