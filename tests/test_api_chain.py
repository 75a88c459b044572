"""The chain on the synthetic world with Gemini (the fake server) for every judgement and
for inversion/composition, under 10 % faults: it completes, a rerun makes no request,
usage and cost land in the stage stats, and the key appears nowhere in the run folder."""

import json

import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import FAST
from fakes.remote import use_fake as _use_fake
from test_api_faults import _assert_no_secret

from nhr.pipeline import Pipeline

PARAMS = {
    "GATE_JUDGE": "gemini",
    "PREFILTER_JUDGE": "gemini",
    "VALIDATOR": "gemini",
    "INVERTER": "gemini",
    "N_PROMPTS": 3,
    "K_INSTRUCTIONS": 3,
    "N_SOURCE_SEEDS": 2,
    "LONG_SIDE_MIN": 64,
    "LONG_SIDE_MAX": 96,
    "M_EDIT_SEEDS": 3,
    "BATCH_SIZE": 8,
    "WORKERS": 2,
    **FAST,
    "API_TIMEOUT_SECONDS": 0.5,  # the fake's slow faults (0.6 s) time out
    "API_CONTENT_RETRIES": 1,
}


def _run(run_dir):
    pipe = Pipeline.open(run_dir, PARAMS, progress=False)
    pipe.run_chain()
    from fakes.remote import close_clients

    close_clients(pipe.backends)
    return pipe


@pytest.mark.parametrize("fault_rate", [0.1])
def test_chain_with_gemini_judges(tmp_path, monkeypatch, fault_rate):
    with FakeModelServer(
        fault_rate=fault_rate, seed=1, retry_after="0.02", slow_seconds=0.6
    ) as srv:
        _use_fake(monkeypatch, srv)
        run_dir = tmp_path / "run"
        pipe = _run(run_dir)
        calls = srv.count
        assert calls > 0
        stats = pipe.store.all_stats()
        for name in ("plausibility", "prefilter", "validator"):
            s = stats[name]
            assert s["rows_out"] == s["rows_in"]
            assert s["settings"]["judge"] == "gemini:gemini-2.5-flash"
            assert s["usage"]["calls"] > 0 and s["usage"]["cost_usd"] > 0
        assert stats["plausibility"]["settings"]["prompt_version"] == "gate-v1"
        assert stats["inversion"]["rows_in"] > 0 and stats["inversion"]["usage"]["calls"] > 0
        assert stats["backward"]["usage"]["calls"] > 0
        _run(run_dir)
        assert srv.count == calls  # the rerun asked nothing
        _assert_no_secret(run_dir)
        assert "GEMINI_API_KEY" not in json.dumps(pipe.cfg.to_params())
