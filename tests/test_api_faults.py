"""The judges under 10 % injected faults of every kind, through the runner: nothing is
lost, no faulty response is counted as a pass, a rerun makes zero new requests, and the
API key appears nowhere in the run folder."""

import base64
import json

import pytest
from fakes.model_server import ALL_FAULTS, FakeModelServer
from fakes.remote import KEY, images, remote_backends, remote_config, use_fake

from nhr.records import CandidateRow, SourceRow, Verdict, from_table
from nhr.runner import Runner
from nhr.stages.filters import PrefilterStage
from nhr.stages.gate import PlausibilityStage
from nhr.stages.validator import ValidatorStage
from nhr.store import RunStore

N = 96
KINDS = {
    "malformed_json",
    "schema_violation",
    "out_of_range",
    "blocked",
    "bad_finish",
    "empty_response",
    "timeout",
    "retries_exhausted",
    "http_error",
}


def _answer(schema, text):
    """Clean answers: subjects named 'good' pass every judge, 'bad' ones fail."""
    good = "good" in text
    props = schema.get("properties", {})
    if "answer" in props:
        return {"answer": "yes" if good else "no"}
    score = 5.0 if good else 2.0
    out = {"InstructionAdherence": score, "ImageAesthetic": score}
    if "UnwantedModifications" in props:
        out |= {"UnwantedModifications": "no", "AestheticallyAcceptable": "yes"}
    return out


def _rows(store):
    imgs = images(N)
    blobs = [store.blobs.put(im) for im in imgs]
    sources, cands = [], []
    for i in range(N):
        tag = "good" if i % 2 == 0 else "bad"
        sources.append(
            SourceRow(
                f"s{i}",
                "p0",
                f"a {tag} scene number {i}",
                "photo",
                i,
                32,
                24,
                blobs[i],
                "synthetic",
                1,
                0.0,
                0.0,
            )
        )
        cands.append(
            CandidateRow(
                f"c{i}",
                f"s{i}",
                "p0",
                f"p0-i{i}",
                f"a {tag} edit number {i}",
                "add",
                "photo",
                blobs[i],
                blobs[(i + 1) % N],
                32,
                24,
                i,
                1,
                2.5,
                "ed",
                0.0,
            )
        )
    return sources, cands


def _last_fault(srv, text, fields):
    quoted = json.dumps(text)  # as the prompt quotes it: "number 2" is not "number 20"
    hits = [r for r in srv.requests() if quoted in r["text"] and r["fields"] == fields]
    assert hits, text
    return hits[-1]["fault"]


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_judges_under_faults(tmp_path, monkeypatch, backend):
    srv = FakeModelServer(
        fault_rate=0.10, seed=3, retry_after="0.02", slow_seconds=2.0, answer=_answer
    ).start()
    try:
        use_fake(monkeypatch, srv)
        srv.queue(*ALL_FAULTS, "leak")  # every kind at least once, then 10 % at random
        cfg = remote_config(
            srv,
            backend,
            api_timeout_seconds=1.0,
            api_attempts=3,
            api_content_retries=1,
            batch_size=16,
            workers=2,
        )
        store = RunStore(tmp_path / "run")
        sources, cands = _rows(store)

        def run_all():
            with remote_backends(cfg, store.root) as b:
                runner = Runner(store, cfg.run.batch_size, cfg.run.workers, progress=False)
                return [
                    runner.run(PlausibilityStage(b.gate_judge, store.blobs), sources),
                    runner.run(PrefilterStage(b.prefilter_judge, store.blobs, 3.0), cands),
                    runner.run(ValidatorStage(b.validator, store.blobs, 4.7), cands),
                ]

        results = run_all()
        served = {r["fault"] for r in srv.requests()} - {None}
        assert served >= {*ALL_FAULTS, "leak"}
        n_errors = 0
        fields = (
            "answer",
            "AestheticallyAcceptable,ImageAesthetic,InstructionAdherence,UnwantedModifications",
            "ImageAesthetic,InstructionAdherence",
        )
        for res, subjects, task in zip(results, (sources, cands, cands), fields, strict=True):
            by_id = {v.subject_id: v for v in from_table(store.tables.read(res.table), Verdict)}
            assert res.stats["rows_out"] == res.stats["rows_in"] == N  # nothing lost
            for subj in subjects:
                v = by_id[subj.id]
                text = subj.prompt if isinstance(subj, SourceRow) else subj.instruction
                fault = _last_fault(srv, text, task)
                # an error exactly when the last answer the subject got was faulty
                assert (v.error is not None) == (fault is not None), (v, fault)
                assert v.passed == (fault is None and "good" in text), (v, fault)
                if v.error:
                    assert v.reason == "judge_error" and KEY not in v.error
            errors = res.stats["errors_by_kind"]
            assert set(errors) <= KINDS
            assert sum(errors.values()) == res.stats["drops_by_reason"].get("judge_error", 0)
            n_errors += sum(errors.values())
            assert res.stats["usage"]["calls"] >= N
        assert 0 < n_errors < 0.2 * 3 * N

        before = srv.count
        rerun = run_all()
        assert srv.count == before  # a rerun makes zero new requests
        assert [r.stats["rows_out"] for r in rerun] == [N, N, N]

        _assert_no_secret(store.root)
    finally:
        srv.stop()


def _assert_no_secret(root):
    """No file of the run folder holds the key, plainly or base64-encoded."""
    needles = [KEY.encode(), base64.b64encode(KEY.encode()), KEY[-12:].encode()]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "api_cache.sqlite" for p in files)
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # SQLite's -shm/-wal files come and go with connections
            continue
        for needle in needles:
            assert needle not in data, f"the API key leaked into {path}"


def test_secret_scan_catches_a_leak(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "api_cache.sqlite").write_bytes(b"")
    (tmp_path / "a" / "log.json").write_text(json.dumps({"key": KEY}))
    with pytest.raises(AssertionError, match="leaked"):
        _assert_no_secret(tmp_path)
