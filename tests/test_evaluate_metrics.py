"""Calibration numbers on hand-computable ratings, the survival threshold, bad ratings."""

import json

import pytest

from nhr.evaluate import calibration as cal
from nhr.evaluate import survival as sv

JUDGE = {"a": (5.0, 5.0), "b": (4.8, 4.9), "c": (3.0, 4.0), "d": (4.9, 2.0)}
ROWS = [
    {"item_id": "a", "rater": "r1", "adherence": 5, "aesthetic": 5},
    {"item_id": "b", "rater": "r1", "adherence": 4, "aesthetic": 5},
    {"item_id": "c", "rater": "r1", "adherence": 3, "aesthetic": 3},
    {"item_id": "d", "rater": "r1", "adherence": 5, "aesthetic": 2},
    {"item_id": "a", "rater": "r2", "adherence": 5, "aesthetic": 4},
    {"item_id": "b", "rater": "r2", "adherence": 5, "aesthetic": 5},
    {"item_id": "c", "rater": "r2", "adherence": 2, "aesthetic": 3},
    {"item_id": "d", "rater": "r2", "adherence": 4, "aesthetic": 2},
]
# rater means: a (5, 4.5), b (4.5, 5), c (2.5, 3), d (4.5, 2)


def test_calibration_on_known_ratings():
    r = cal.calibrate(JUDGE, cal.ratings_from_rows(ROWS), threshold=4.7, positive=4.0)
    assert r["items"] == 4 and r["ratings"] == 8
    assert r["per_dimension"]["adherence"]["mae"] == pytest.approx(0.3)  # (0+.3+.5+.4)/4
    assert r["per_dimension"]["aesthetic"]["mae"] == pytest.approx(0.4)  # (.5+.1+1+0)/4
    # ranks judge [4,2,1,3] vs human [4,2.5,1,2.5]: 4.5 / sqrt(5 * 4.5)
    assert r["per_dimension"]["adherence"]["spearman"] == pytest.approx(0.9487, abs=1e-4)
    at = r["at_threshold"]
    assert (at["tp"], at["fp"], at["fn"], at["tn"]) == (2, 0, 0, 2)
    assert at["precision"] == at["recall"] == at["f1"] == at["accuracy"] == 1.0
    by_t = {row["threshold"]: row for row in r["vs_threshold"]}
    assert by_t[4.85]["precision"] == 1.0 and by_t[4.85]["recall"] == 0.5  # b drops out
    assert by_t[4.85]["f1"] == pytest.approx(0.6667)
    assert by_t[5.0]["precision"] == 1.0 and by_t[5.0]["recall"] == 0.5  # only a (5, 5)
    _, judge, human = cal.paired(JUDGE, cal.ratings_from_rows(ROWS))
    none = cal.classify(judge, human, 5.5, 4.0)  # nothing passes: precision undefined
    assert none["precision"] is None and none["recall"] == 0.0 and none["f1"] is None
    buckets = {b["bucket"]: b for b in r["mae_by_bucket"]["adherence"]}
    assert buckets["2–3"] == {"bucket": "2–3", "n": 1, "mae": 0.5}
    assert buckets["4–5"]["n"] == 3 and buckets["4–5"]["mae"] == pytest.approx(0.2333)
    assert buckets["1–2"]["mae"] is None
    m = r["confusion"]["adherence"]  # human 4.5 rounds half up to 5
    assert m[4][4] == 3 and m[2][2] == 1 and sum(map(sum, m)) == 4
    ir = r["inter_rater"]
    assert ir["raters"] == 2 and ir["pairs"] == 1
    assert ir["adherence_mae"] == pytest.approx(0.75)  # r1 vs r2: 0, 1, 1, 1
    rows = cal.beside_paper(r)
    assert rows[0]["paper_spearman"] == 0.815 and rows[1]["paper_inter_rater_spearman"] == 0.41
    json.dumps(r)  # JSON-ready


def test_ratings_files_round_trip(tmp_path):
    ratings = cal.ratings_from_rows(ROWS)
    path = cal.write_ratings(tmp_path / "r.csv", ratings)
    assert cal.read_ratings(path) == ratings
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    assert cal.read_ratings(jsonl) == ratings


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"item_id": "a", "adherence": 6, "aesthetic": 4}], "not a score in [1, 5]"),
        ([{"item_id": "a", "adherence": "x", "aesthetic": 4}], "not a score in [1, 5]"),
        ([{"item_id": "a", "aesthetic": 4}], "no column(s) ['adherence']"),
        ([{"item_id": "zz", "adherence": 4, "aesthetic": 4}], "not scored by the validator"),
        (
            [{"item_id": "a", "adherence": 4, "aesthetic": 4}] * 2,
            "rated item 'a' twice",
        ),
    ],
)
def test_bad_ratings_are_refused_with_a_fix(rows, needle):
    with pytest.raises(cal.RatingsError) as err:
        cal.calibrate(JUDGE, cal.ratings_from_rows(rows))
    assert needle in str(err.value) and " — " in str(err.value)


def test_missing_or_malformed_ratings_file(tmp_path):
    with pytest.raises(cal.RatingsError, match="does not exist"):
        cal.read_ratings(tmp_path / "nope.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": "a"}\nnot json\n')
    with pytest.raises(cal.RatingsError, match="line 2 is not JSON"):
        cal.read_ratings(bad)


def _two_cliffs() -> list[tuple[float, float]]:
    scores = [(3.0 + 0.1 * (i % 14), 5.0) for i in range(140)]  # a slope from 3.0 to 4.3
    scores += [(4.45, 4.9)] * 500  # fall between 4.4 and 4.5
    scores += [(4.85, 4.95)] * 300  # fall between 4.8 and 4.9
    scores += [(4.95, 4.95)] * 60
    return scores


def test_survival_threshold_is_the_midpoint_of_two_cliffs():
    s = sv.survival(_two_cliffs(), 3.0, 4.9, 0.1)
    assert [c["threshold"] for c in s["cliffs"]] == [4.5, 4.9]
    assert s["threshold"] == 4.7 and s["rule"] == "midpoint of two cliffs"
    by_t = {r["threshold"]: r for r in s["curve"]}
    assert by_t[4.5]["drop"] == pytest.approx(1 - 360 / 860, abs=1e-4)
    assert by_t[4.9]["drop"] == pytest.approx(1 - 60 / 360, abs=1e-4)
    assert by_t[3.0]["share"] == 1.0
    shares = [r["share"] for r in s["curve"]]
    assert shares == sorted(shares, reverse=True)


def test_survival_with_one_cliff_or_none():
    one = [(4.85, 4.9)] * 90 + [(4.95, 5.0)] * 10
    s = sv.survival(one, 3.0, 4.9, 0.1)
    assert [c["threshold"] for c in s["cliffs"]] == [4.9] and s["threshold"] == 4.8
    flat = [(5.0, 5.0)] * 50
    s = sv.survival(flat, 3.0, 4.9, 0.1)
    assert s["cliffs"] == [] and s["threshold"] is None
