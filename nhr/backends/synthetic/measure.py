"""Measure the synthetic world: gate agreement, editor outcomes, judge quality and speed.

Run ``python -m nhr.backends.synthetic.measure [n_prompts]``; prints one report.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from nhr.backends.base import PromptRequest

from .world import SyntheticWorld


def random_size(rng: np.random.Generator, max_aspect: float = 2.5) -> tuple[int, int]:
    """Long side 128–256, aspect ratio up to ``max_aspect``:1 either way."""
    long = int(rng.integers(128, 257))
    ar = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
    short = max(32, round(long / ar if ar >= 1 else long * ar))
    return (long, short) if ar >= 1 else (short, long)


def measure(
    n_prompts: int = 200,
    n_sources: int = 3,
    k: int = 3,
    n_seeds: int = 3,
    guidance: float = 3.5,
    truth_dir: Path | None = None,
    max_aspect: float = 2.5,
) -> dict[str, float]:
    """Run the chain on the synthetic world and return the figures."""
    tmp = tempfile.TemporaryDirectory() if truth_dir is None else None
    world = SyntheticWorld(Path(tmp.name) if tmp else truth_dir)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    drafts = world.prompter.write([PromptRequest(f"p{i}", i, k, None) for i in range(n_prompts)])
    t_render = t_edit = t_judge = t_pre = 0.0
    n_render = n_edit = 0
    gate_agree = plausible = 0
    rows = []
    for d in drafts:
        for j in range(n_sources):
            size = random_size(rng, max_aspect)
            t0 = time.perf_counter()
            (src,) = world.renderer.generate([d.text], [j], [size], 4, 0.0)
            t_render += time.perf_counter() - t0
            n_render += 1
            truth_ok = world.truth.source(src).plausible
            gate = world.judge.plausibility([src], [d.text])[0].answer
            plausible += truth_ok
            gate_agree += truth_ok == gate
            if not gate:
                continue
            for ins in d.instructions:
                for seed in range(n_seeds):
                    steps = int(rng.integers(18, 29))
                    t0 = time.perf_counter()
                    (ed,) = world.editor.edit([src], [ins.text], [seed], [steps], guidance)
                    t_edit += time.perf_counter() - t0
                    n_edit += 1
                    t0 = time.perf_counter()
                    (sc,) = world.judge.score([src], [ed], [ins.text])
                    t_judge += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    (pf,) = world.judge.prefilter([src], [ed], [ins.text])
                    t_pre += time.perf_counter() - t0
                    tr = world.truth.triplet(src, ins.text, ed)
                    rows.append((tr, sc, pf, ins.edit_type))
    correct = np.array([r[0].correct for r in rows])
    passed = np.array([r[1].adherence >= 4.7 and r[1].aesthetic >= 4.7 for r in rows])
    pre = np.array(
        [
            (not r[2].unwanted_changes) and r[2].aesthetic_ok and r[2].scores.adherence >= 3
            for r in rows
        ]
    )
    rho = stats.spearmanr([r[1].adherence for r in rows], [r[0].adherence for r in rows])[0]
    rho_aes = stats.spearmanr([r[1].aesthetic for r in rows], [r[0].aesthetic for r in rows])[0]
    out = {
        "sources": n_render,
        "share_plausible_truth": plausible / n_render,
        "gate_agreement": gate_agree / n_render,
        "candidates": len(rows),
        "share_correct": float(correct.mean()),
        "prefilter_pass_rate": float(pre.mean()),
        "prefilter_recall_of_correct": float(pre[correct].mean()),
        "score_pass_rate": float(passed.mean()),
        "precision": float(correct[passed].mean()) if passed.any() else float("nan"),
        "recall": float(passed[correct].mean()) if correct.any() else float("nan"),
        "spearman_adherence": float(rho),
        "spearman_aesthetic": float(rho_aes),
        "ms_per_render": 1000 * t_render / max(1, n_render),
        "ms_per_edit": 1000 * t_edit / max(1, n_edit),
        "ms_per_score": 1000 * t_judge / max(1, n_edit),
        "ms_per_prefilter": 1000 * t_pre / max(1, n_edit),
    }
    by = collections.defaultdict(lambda: [0, 0, 0])
    for (tr, _sc, _pf, _et), p, q in zip(rows, passed, pre, strict=True):
        by[tr.outcome][0] += 1
        by[tr.outcome][1] += int(p)
        by[tr.outcome][2] += int(q)
    for name, (n, p, q) in sorted(by.items()):
        out[f"outcome:{name}"] = n / len(rows)
        out[f"score_pass|{name}"] = p / n
        out[f"prefilter_pass|{name}"] = q / n
    by_type = collections.defaultdict(lambda: [0, 0, 0])
    for (tr, _sc, _pf, et), p in zip(rows, passed, strict=True):
        by_type[et][0] += 1
        by_type[et][1] += int(tr.correct)
        by_type[et][2] += int(p and tr.correct)
    for name, (n, c, pc) in sorted(by_type.items()):
        out[f"type:{name}:correct"] = c / n
        out[f"type:{name}:recall"] = pc / max(1, c)
    if tmp:
        tmp.cleanup()
    return out


def main() -> None:
    """Print the figures."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for key, value in measure(n_prompts=n).items():
        print(f"{key:36s} {value:.4f}" if isinstance(value, float) else f"{key:36s} {value}")


if __name__ == "__main__":
    main()
