"""Stage logic that needs no world: resolution sampler, low-level check, selection."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from nhr.records import (
    CandidateRow,
    PromptRow,
    SourceRow,
    TripletRow,
    Verdict,
    from_table,
    to_table,
)
from nhr.seeds import rng_for
from nhr.stages.filters import LowLevelStage, change_components, change_components_of
from nhr.stages.sources import sample_size
from nhr.stages.validator import select_argmax
from nhr.store import RunStore


@pytest.mark.parametrize(("lo", "hi", "aspect", "mult"), [(860, 2200, 6.0, 16), (128, 256, 3.0, 8)])
def test_resolution_sampler_stays_in_the_papers_ranges(lo, hi, aspect, mult):
    sizes = [sample_size(rng_for("t", i), lo, hi, aspect, mult) for i in range(2000)]
    for w, h in sizes:
        assert w % mult == 0 and h % mult == 0
        assert lo <= max(w, h) <= hi
        assert max(w, h) / min(w, h) <= aspect + 1e-9
    ratios = [math.log(w / h) for w, h in sizes]
    assert min(ratios) < -math.log(aspect) * 0.8 and max(ratios) > math.log(aspect) * 0.8
    assert sum(w > h for w, h in sizes) > 600 and sum(w < h for w, h in sizes) > 600


def _pair(changed: np.ndarray) -> tuple[Image.Image, Image.Image]:
    a = np.full((*changed.shape, 3), 100, np.uint8)
    b = a.copy()
    b[changed] = 200
    return Image.fromarray(a), Image.fromarray(b)


def test_lowlevel_counts_four_connected_components():
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: two 4-connected components
    mask[5:8, 5:8] = True
    assert change_components(*_pair(mask), threshold=40) == (11, 3, 9)
    a, b = _pair(mask)
    b = Image.fromarray((np.asarray(a).astype(int) + 40).astype(np.uint8))  # |diff| == 40
    assert change_components(a, b, 40) == (0, 0, 0)


def test_lowlevel_counts_a_stack_of_pairs_as_each_pair_alone():
    """Pairs of mixed sizes, measured as stacks, count exactly as one by one: labels of
    one pair never join the next's (a block touching the border, noise, no change)."""
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(60):
        w, h = (16, 16) if i % 3 else tuple(int(x) for x in rng.integers(1, 20, 2))
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        b = a.copy()
        if i % 4 == 1:
            b[rng.random((h, w)) < 0.3] += 100
        elif i % 4 == 2:
            b[: h // 2 + 1, -(w // 2 + 1) :] = 255 - b[: h // 2 + 1, -(w // 2 + 1) :]
        elif i % 4 == 3:
            b = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pairs.append((Image.fromarray(a), Image.fromarray(b)))
    alone = [change_components_of([pair], 40)[0] for pair in pairs]
    assert change_components_of(pairs, 40) == alone
    assert sum(n > 0 for n, _, _ in alone) > 30 and max(c for _, c, _ in alone) > 5
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = mask[2, 2] = True
    mask[5:8, 5:8] = True
    assert change_components_of([_pair(mask)] * 3, 40) == [(11, 3, 9)] * 3


def _candidate(cid: str, src: str, img: str, w: int, h: int) -> CandidateRow:
    return CandidateRow(
        cid, "s", "p", "p-i0", "x", "add", "flat", src, img, w, h, 1, 20, 2.5, "m", 0.0
    )


def test_lowlevel_drops_scattered_noise_and_no_change(tmp_path):
    store = RunStore(tmp_path)
    rng = np.random.default_rng(0)
    noise = rng.random((200, 200)) < 0.3  # many tiny components: largest << 0.5 %
    blob = np.zeros((200, 200), bool)
    blob[50:90, 50:90] = True
    rows = []
    for name, mask in (("noise", noise), ("blob", blob), ("none", np.zeros_like(blob))):
        a, b = _pair(mask)
        rows.append(_candidate(name, store.blobs.put(a), store.blobs.put(b), 200, 200))
    verdicts = {v.subject_id: v for v in LowLevelStage(store.blobs).process_batch(rows)}
    assert verdicts["noise"].reason == "fragmented_change"
    assert verdicts["blob"].passed and json.loads(verdicts["blob"].details)["largest_share"] == 1
    assert verdicts["none"].reason == "no_change"


def test_argmax_keeps_the_best_per_source_and_instruction():
    cands = [
        CandidateRow(
            f"c{i}",
            "s0",
            "p0",
            f"p0-i{i // 3}",
            "x",
            "add",
            "flat",
            "a",
            f"b{i}",
            8,
            8,
            i,
            20,
            2.5,
            "m",
            0.0,
        )
        for i in range(6)
    ]
    scores = [(4.8, 4.9), (5.0, 4.9), (4.9, 4.9), (4.0, 5.0), (4.75, 4.75), (4.9, 4.71)]
    verdicts = [
        Verdict(
            f"c{i}",
            min(s) >= 4.7,
            "ok" if min(s) >= 4.7 else "low_adherence",
            *s,
            "{}",
            "j",
            "v",
            None,
        )
        for i, s in enumerate(scores)
    ]
    sources = {"s0": SourceRow("s0", "p0", "t", "flat", 1, 8, 8, "a", "m", 4, 0.0, 0.0)}
    prompts = {"p0": PromptRow("p0", 1, "t", "flat", "x", ("x", "y"), ("add", "add"), "w", "v")}
    table, drops = select_argmax(
        to_table(cands, CandidateRow),
        to_table(verdicts, Verdict),
        to_table(list(sources.values()), SourceRow),
        to_table(list(prompts.values()), PromptRow),
    )
    triplets = from_table(table, TripletRow)
    assert [t.candidate_id for t in triplets] == ["c1", "c5"]
    assert drops == {"not_argmax": 3}
    assert triplets[1].score == pytest.approx(math.sqrt(4.9 * 4.71))
