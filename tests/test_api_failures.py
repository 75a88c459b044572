"""Each failure kind of a remote judge, on both backends: retried where that can help,
else an answer with ``error`` set ("kind: detail"), never a pass and never a crash."""

import time

import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import KEY, images, remote_backends, remote_config, use_fake

from nhr.backends.api_client import parse_retry_after
from nhr.errors import BackendError

BACKENDS = ("gemini", "openai")


@pytest.fixture
def srv(monkeypatch):
    with FakeModelServer(slow_seconds=3.0, answer=lambda s, t: _answer(s)) as server:
        use_fake(monkeypatch, server)
        yield server


def _answer(schema):
    props = schema.get("properties", {})
    if "InstructionAdherence" in props:
        return {"InstructionAdherence": 2.0, "ImageAesthetic": 2.0}  # a clean fail
    return None


def _score(srv, tmp_path, backend, **params):
    # answers come in milliseconds, "slow" ones after 3 s: a busy machine (the suite runs
    # on two workers) must not turn an answer into a timeout
    params.setdefault("api_timeout_seconds", 2.0)
    cfg = remote_config(srv, backend, **params)
    with remote_backends(cfg, tmp_path) as b:
        scores = b.validator.score(images(1), images(1), ["make the cube red"])
        return scores[0], b.validator.usage()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("malformed", "malformed_json"),
        ("schema", "schema_violation"),
        ("range", "out_of_range"),
        ("safety", "blocked"),
        ("truncated", "bad_finish"),
        ("empty", "empty_response"),
    ],
)
def test_content_faults_become_errors(srv, tmp_path, backend, fault, kind):
    srv.queue(fault)
    s, usage = _score(srv, tmp_path, backend)
    assert s.error is not None and s.error.startswith(f"{kind}: "), s.error
    assert (s.adherence, s.aesthetic) == (0.0, 0.0)  # the faulty answer looked like 5/5
    assert usage["errors"] == 1 and usage["calls"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_content_fault_is_asked_again(srv, tmp_path, backend):
    srv.queue("safety")
    s, usage = _score(srv, tmp_path, backend, api_content_retries=1)
    assert s.error is None and (s.adherence, s.aesthetic) == (2.0, 2.0)
    assert usage["calls"] == 2 and usage["errors"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_transient_statuses_are_retried_honouring_retry_after(srv, tmp_path, backend):
    srv.retry_after = "0.4"
    srv.queue("429", "500", "503")
    t0 = time.monotonic()
    s, usage = _score(srv, tmp_path, backend, api_attempts=4)
    assert s.error is None and s.adherence == 2.0
    assert usage["calls"] == 4 and usage["retries"] == 3
    log = srv.requests()
    assert log[1]["t"] - log[0]["t"] >= 0.38  # waited for Retry-After, not the 0.01 s backoff
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_retries_exhausted(srv, tmp_path, backend):
    srv.queue("503", "429", "500")
    s, usage = _score(srv, tmp_path, backend, api_attempts=3)
    assert s.error.startswith("retries_exhausted: "), s.error
    assert "after 3 attempts" in s.error and usage["calls"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout(srv, tmp_path, backend):
    srv.queue("slow", "slow")
    s, usage = _score(srv, tmp_path, backend, api_attempts=2, api_timeout_seconds=1.0)
    assert s.error.startswith("timeout: "), s.error
    assert usage["calls"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_then_answer(srv, tmp_path, backend):
    srv.queue("slow")
    s, _ = _score(srv, tmp_path, backend, api_attempts=2)
    assert s.error is None and s.adherence == 2.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_request_is_an_error_without_the_key(srv, tmp_path, backend):
    srv.queue("leak")
    s, _ = _score(srv, tmp_path, backend)
    assert s.error.startswith("http_error: 400")
    assert KEY not in s.error and "***" in s.error


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("status", ["401", "403", "404"])
def test_configuration_errors_stop_the_run(srv, tmp_path, backend, status):
    srv.queue(status)
    with pytest.raises(BackendError, match=status):
        _score(srv, tmp_path, backend)


def test_gate_and_prefilter_errors_never_pass(srv, tmp_path):
    cfg = remote_config(srv, "gemini")
    srv.queue("safety", "range")
    with remote_backends(cfg, tmp_path) as b:
        gate = b.gate_judge.plausibility(images(1), ["a red cube"])[0]
        pre = b.prefilter_judge.prefilter(images(1), images(1), ["make it red"])[0]
    assert gate.error.startswith("blocked: ") and gate.answer is False
    assert pre.error.startswith("out_of_range: ") and pre.unwanted_changes
    assert not pre.aesthetic_ok and pre.scores.error


def test_inverse_with_a_banned_word_is_an_error(srv, tmp_path, monkeypatch):
    srv.answer = lambda s, t: {"instruction": "turn the car back to blue"}
    cfg = remote_config(srv, "gemini")
    with remote_backends(cfg, tmp_path) as b:
        ans = b.inverter.invert(["make the car red"], ["a blue car"])[0]
    assert ans.error.startswith("banned_word: ") and ans.text == ""


def test_missing_credentials_name_the_fix(tmp_path, monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(var, raising=False)
    from nhr.backends.registry import build_backends
    from nhr.config import PipelineConfig

    b = build_backends(PipelineConfig(validator="gemini"), tmp_path)
    with pytest.raises(BackendError, match="GEMINI_API_KEY"):
        b.validator  # noqa: B018


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None
