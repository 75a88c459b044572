"""Gemini Batch API mode: submit, poll, collect; resumable after a crash in between."""

import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import images, remote_backends, remote_config, use_fake

from nhr.backends.api_client import RequestCache


@pytest.fixture
def srv(monkeypatch):
    with FakeModelServer() as server:
        use_fake(monkeypatch, server)
        yield server


def _cfg(srv, **kw):
    return remote_config(
        srv, gemini_batch_roles=["validator"], gemini_batch_poll_seconds=0.02, **kw
    )


def test_batch_submit_poll_collect(srv, tmp_path):
    args = (images(5), images(5)[::-1], [f"edit {i}" for i in range(5)])
    with remote_backends(_cfg(srv), tmp_path) as b:
        scores = b.validator.score(*args)
        usage = b.validator.usage()
    assert all(s.error is None and 1 <= s.adherence <= 5 for s in scores)
    assert len(srv.requests("batch_create")) == 1 and not srv.requests("gemini")
    assert usage["batch_jobs"] == 1 and usage["calls"] == 5
    # batch calls are priced at the batch discount
    assert usage["cost_usd"] == pytest.approx(
        0.5 * (usage["tokens_in"] * 0.30 + usage["tokens_out"] * 2.50) / 1e6
    )
    with remote_backends(_cfg(srv), tmp_path) as b:
        assert b.validator.score(*args) == scores
    assert len(srv.requests("batch_create")) == 1  # answered from the cache


def test_batch_resumes_after_a_crash_between_submit_and_collect(srv, tmp_path):
    args = (images(4), images(4), [f"edit {i}" for i in range(4)])
    srv.batch_pending_polls = 10**9  # the job never finishes while the first process waits
    with remote_backends(_cfg(srv, gemini_batch_max_wait_seconds=0.2), tmp_path) as b:
        first = b.validator.score(*args)
    assert all(s.error and s.error.startswith("batch_timeout: ") for s in first)
    jobs = (
        RequestCache(tmp_path / "api_cache.sqlite")
        ._db.execute("SELECT job_name, state FROM batch_jobs")
        .fetchall()
    )
    assert jobs == [("batches/b0001", "SUBMITTED")]
    # the next process finds the submitted job and collects it without submitting again
    srv.batch_pending_polls = 0
    with remote_backends(_cfg(srv), tmp_path) as b:
        second = b.validator.score(*args)
        assert b.validator.usage()["batch_jobs_resumed"] == 1
    assert all(s.error is None for s in second)
    assert len(srv.requests("batch_create")) == 1 and not srv.requests("gemini")


def test_batch_item_faults_are_errors_and_polls_are_retried(srv, tmp_path):
    srv.queue("503")  # the create call fails once, then is retried
    srv.fault_rate, srv.fault_kinds = 1.0, ("safety",)  # every item comes back blocked
    with remote_backends(_cfg(srv), tmp_path) as b:
        scores = b.validator.score(images(3), images(3), ["a", "b", "c"])
    assert all(s.error.startswith("blocked: ") for s in scores)
    assert [r["fault"] for r in srv.requests("batch_create")] == ["503", None]
