"""The judge circuit breaker, alone and on a tiny chain whose validator is an EditScore
model (the fake server answering as one): SC, PQ and O recorded exactly as EditScore's
formula gives them; a judge that cannot be parsed stops the run within its window; the
rerun after the fix resumes and completes."""

import json
import math

import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import FAST, KEY, close_clients, use_fake

from nhr.judge_breaker import JudgeBreaker, JudgeFailing, error_kind, judge_error_shares, raw_answer
from nhr.pipeline import Pipeline
from nhr.records import Verdict


def _verdict(i, error=None, judge="openai:m:viescore", raw="x"):
    details = json.dumps({"judge_style": "viescore", "raw_sc": raw}) if error else "{}"
    return Verdict(f"c{i}", False, "judge_error" if error else "ok", None, None, details,
                   judge, "viescore-v2-r25", error)  # fmt: skip


def test_breaker_trips_in_the_first_window_once_it_is_certain(monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", KEY)
    breaker = JudgeBreaker(0.5, 10, key_envs=("MY_VLLM_KEY",))
    breaker.see("validator", [_verdict(i) for i in range(4)])
    bad = [_verdict(i, "schema_violation: SC answer: no JSON", raw=f"no {KEY}") for i in range(5)]
    breaker.see("validator", bad)  # 5 of 9: not yet more than half of 10
    with pytest.raises(JudgeFailing) as err:
        breaker.see("validator", [_verdict(9, "out_of_range: PQ answer: score 30")])
    text = str(err.value)
    assert "judge openai:m:viescore at stage validator: 6 of its first 10" in text
    assert "schema_violation ×5, out_of_range ×1" in text and "VIESCORE_RANGE" in text
    assert KEY not in text and "no ***" in text  # one raw answer, the key redacted
    assert "\n" not in text  # `nhr run` prints the first line


def test_breaker_slides_and_keeps_judges_and_stages_apart():
    breaker = JudgeBreaker(0.5, 4)
    rows = [_verdict(i, "blocked: finish reason SAFETY" if i % 2 else None) for i in range(40)]
    breaker.see("validator", rows)  # half in error: never more than half of any window
    breaker.see("backward", [_verdict(i, "blocked: x") for i in range(2)])
    breaker.see("validator", [_verdict(i, "blocked: x", judge="other") for i in range(2)])
    with pytest.raises(JudgeFailing, match=r"stage validator: 3 of its last 4 \(of 41\)"):
        breaker.see("validator", [_verdict(40, "blocked: x")])
    never = JudgeBreaker(1.0, 2)
    never.see("validator", [_verdict(i, "blocked: x") for i in range(10)])


def test_error_kinds_and_raw_answers_are_read_from_verdicts():
    assert error_kind("schema_violation: SC answer: x") == "schema_violation"
    assert error_kind("member openai:m:viescore: out_of_range: PQ answer: 30") == "out_of_range"
    assert error_kind("something odd") == "other"
    members = {"members": [{"details": {}}, {"details": {"raw": "Score 1: 9"}}]}
    assert raw_answer(json.dumps(members)) == "Score 1: 9"
    assert raw_answer("{}") is None


PARAMS = {
    "VALIDATOR": "openai-viescore",
    "VALIDATOR_MODEL": "EditScore/EditScore-7B",
    "VIESCORE_RANGE": 25,
    "JUDGE_ERROR_WINDOW": 4,
    "N_PROMPTS": 3,
    "K_INSTRUCTIONS": 2,
    "N_SOURCE_SEEDS": 2,
    "M_EDIT_SEEDS": 3,
    "LONG_SIDE_MIN": 64,
    "LONG_SIDE_MAX": 96,
    "BATCH_SIZE": 4,
    "WORKERS": 2,
    "COMPOSITION": False,
    **FAST,
    "API_TIMEOUT_SECONDS": 10.0,  # a busy test machine must not turn answers into errors
}


def _run(run_dir, srv):
    pipe = Pipeline.open(run_dir, {**PARAMS, "OPENAI_BASE_URL": srv.openai_url}, progress=False)
    try:
        pipe.run_chain()
        pipe.write_summary(with_truth=False)
    finally:
        close_clients(pipe.backends)
        pipe.close()
    return pipe


def test_a_chain_judged_by_editscore_stops_on_a_wrong_format_and_resumes(tmp_path, monkeypatch):
    # answers wait 2 s, so the edits, pre-filter and low-level check have done their
    # work (and batches none of whose rows reach the validator are committed) by the
    # time the breaker trips
    with FakeModelServer(viescore_style="unparseable", latency=2.0) as srv:
        use_fake(monkeypatch, srv)
        run_dir = tmp_path / "run"
        with pytest.raises(JudgeFailing) as err:
            _run(run_dir, srv)
        assert "judge openai:EditScore/EditScore-7B:viescore at stage validator" in str(err.value)
        assert "schema_violation ×" in str(err.value) and "Prompt Compliance" in str(err.value)
        pipe = Pipeline.open(run_dir, {**PARAMS, "OPENAI_BASE_URL": srv.openai_url})
        committed_errors = pipe.tables.count("validator")  # verdicts before the stop
        assert committed_errors == 0  # the failing stage's uncommitted verdicts are dropped
        before = {c.candidate_id: c.image for c in pipe.rows("candidates")}
        assert before  # edits were committed before the stop
        srv.viescore_style = "fenced"  # the fix: a model that speaks the protocol
        srv.latency = 0.0
        pipe = _run(run_dir, srv)
        after = {c.candidate_id: c.image for c in pipe.rows("candidates")}
        assert len(after) == pipe.tables.count("candidates") > len(before)
        assert {k: after[k] for k in before} == before  # resumed: nothing committed lost
        verdicts = pipe.rows("validator") + pipe.rows("backward")
        assert len(pipe.rows("validator")) == pipe.tables.survivors("lowlevel").num_rows > 0
        shares = judge_error_shares(pipe.tables)["validator"]
        judged = shares["openai:EditScore/EditScore-7B:viescore"]
        assert judged["errors"] == committed_errors == 0  # every candidate judged after the fix
        assert judged["verdicts"] > committed_errors  # the rest judged after the fix
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["judge_errors"]["validator"] == json.loads(json.dumps(shares))
        logged = srv.requests("openai")
        assert {r["text"].count("img:") for r in logged} == {1, 2}  # SC and PQ calls
    for v in verdicts:
        if v.error:
            continue
        d = json.loads(v.details)
        sc_scores = json.loads(d["raw_sc"].strip("`").removeprefix("json"))["score"]
        pq_scores = json.loads(d["raw_pq"].strip("`").removeprefix("json"))["score"]
        sc, pq = min(sc_scores) / (25 / 10), min(pq_scores) / (25 / 10)  # EditScore's formula
        assert (d["sc"], d["pq"], d["overall"]) == (sc, pq, math.sqrt(sc * pq))
        assert v.adherence == round(1 + 0.4 * sc, 4) and v.aesthetic == round(1 + 0.4 * pq, 4)
        assert v.prompt_version == "viescore-v2-r25"
