"""Judge formats (VIEScore / EditScore, ImgEdit-Judge) and the ensemble validator, on the
fake OpenAI-compatible and Gemini servers: mapped scores, raw answers kept, and every
malformed answer an error verdict, never a pass."""

import json
import math

import pytest
from fakes.model_server import FakeModelServer, imgedit_answer, viescore_answer
from fakes.remote import images, remote_backends, remote_config, use_fake

from nhr.backends.api_client import CallError
from nhr.backends.api_roles import image_part
from nhr.backends.judge_ensemble import EnsembleJudge, build_judge
from nhr.backends.judge_imgedit import parse_imgedit
from nhr.backends.judge_viescore import parse_viescore, to_validator_scale
from nhr.backends.registry import REGISTRY, BuildContext
from nhr.config import PipelineConfig
from nhr.errors import ConfigError
from nhr.stages.validator import ValidatorStage
from nhr.store import BlobStore


@pytest.fixture
def srv(monkeypatch):
    with FakeModelServer() as server:
        use_fake(monkeypatch, server)
        yield server


def _user_text(instruction, srcs, edits, template):
    """The user text the fake server sees (images by the hash of their data URL)."""
    import base64
    import hashlib

    from nhr.backends.api_roles import PromptTemplate

    t = PromptTemplate.load(template)
    parts = t.render(
        {"instruction": instruction},
        {"source": image_part(srcs, 1024), "edited": image_part(edits, 1024)},
    )[1]
    bits = []
    for p in parts:
        if isinstance(p, str):
            bits.append(p)
        else:
            url = "data:image/png;base64," + base64.b64encode(p.data).decode()
            bits.append("img:" + hashlib.sha256(url.encode()).hexdigest()[:12])
    return "\n".join(bits)


# ---------------------------------------------------------------- parsing
def test_viescore_mapping_is_the_stated_one():
    s = parse_viescore(
        {"reasoning": "ok", "prompt_following": 9, "consistency": 6, "perceptual_quality": 10}
    )
    assert (s.adherence, s.aesthetic) == (3.4, 5.0)  # SC = min(9, 6) → 1 + 0.4·6; PQ = 10 → 5
    assert s.details["sc"] == 6 and s.details["pq"] == 10
    assert s.details["overall"] == round(math.sqrt(60), 4)
    assert to_validator_scale(0) == 1.0 and to_validator_scale(9.25) == 4.7
    assert parse_viescore(
        {"reasoning": "", "prompt_following": "8", "consistency": 8, "perceptual_quality": 8.5}
    ).adherence == pytest.approx(4.2)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ({"prompt_following": 9, "consistency": 9, "perceptual_quality": 9}, "schema_violation"),
        (
            {"reasoning": "x", "prompt_following": 11, "consistency": 9, "perceptual_quality": 9},
            "out_of_range",
        ),
        (
            {"reasoning": "x", "prompt_following": True, "consistency": 9, "perceptual_quality": 9},
            "schema_violation",
        ),
        (
            {
                "reasoning": "x",
                "prompt_following": "ten",
                "consistency": 9,
                "perceptual_quality": 9,
            },
            "schema_violation",
        ),
        ({"reasoning": "x", "consistency": 9, "perceptual_quality": 9}, "schema_violation"),
        ([9, 9, 9], "schema_violation"),
    ],
)
def test_viescore_refuses_what_it_cannot_trust(answer, kind):
    with pytest.raises(CallError) as err:
        parse_viescore(answer)
    assert err.value.kind == kind


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ("Score 1: 4\nReason: done.\nScore 2: 3\nReason: a seam.", (4.0, 3.0)),
        (
            "**Score 1 (Prompt Compliance):** 5/5\n**Score 2 (Visual Quality):** 4 out of 5",
            (5.0, 4.0),
        ),
        ("Prompt Compliance: 3\nVisual Naturalness: 2", (3.0, 2.0)),
        ("score 1 = 4.5; SCORE 2 = 5", (4.5, 5.0)),
        ("Score 1: 2\nReason: the red cube is still red, not 5 as asked.\nScore 2: 5", (2.0, 5.0)),
    ],
)
def test_imgedit_text_is_read_robustly(text, scores):
    s = parse_imgedit(text)
    assert (s.adherence, s.aesthetic) == scores


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Score 1: 5\nReason: perfect.", "schema_violation"),
        ("Score 1: five\nScore 2: five", "schema_violation"),
        ("Score 1: 7\nScore 2: 5", "out_of_range"),
        ("Score 1: 0\nScore 2: 5", "out_of_range"),
        ("Score 1: 5\nScore 1: 2\nScore 2: 5", "schema_violation"),
        ("", "schema_violation"),
        ({"Score 1": 5}, "schema_violation"),
    ],
)
def test_imgedit_refuses_what_it_cannot_trust(text, kind):
    with pytest.raises(CallError) as err:
        parse_imgedit(text)
    assert err.value.kind == kind


# ---------------------------------------------------------------- on the fake servers
@pytest.mark.parametrize("backend", ["openai-viescore", "gemini-viescore"])
def test_viescore_judge_on_the_fake_server(srv, tmp_path, backend):
    cfg = remote_config(
        srv, "openai" if backend.startswith("openai") else "gemini", validator=backend
    )
    src, edit = images(2)
    with remote_backends(cfg, tmp_path) as b:
        judge = b.validator
        s = judge.score([src], [edit], ["make the cube red"])[0]
    assert judge.judge_id.endswith(":viescore") and judge.prompt_version == "viescore-v1"
    assert s.error is None
    raw = json.loads(s.details["raw"])
    assert set(raw) == {"reasoning", "prompt_following", "consistency", "perceptual_quality"}
    sc = min(raw["prompt_following"], raw["consistency"])
    assert s.adherence == pytest.approx(1 + 0.4 * sc)
    assert s.aesthetic == pytest.approx(1 + 0.4 * raw["perceptual_quality"])
    if backend.startswith("openai"):
        expected = viescore_answer(_user_text("make the cube red", src, edit, "viescore"))
        assert raw == expected  # the answer the server gave, parsed as is


def test_imgedit_judge_asks_for_free_text_and_parses_it(srv, tmp_path):
    cfg = remote_config(srv, "openai", validator="openai-imgedit")
    srcs, edits = images(4), images(4, (24, 32))
    instructions = [f"make object {i} blue" for i in range(4)]
    with remote_backends(cfg, tmp_path) as b:
        scores = b.validator.score(srcs, edits, instructions)
    logged = srv.requests("openai")
    assert len(logged) == 4 and all(r["fields"] == "" for r in logged)  # no response schema
    for s, src, edit, text in zip(scores, srcs, edits, instructions, strict=True):
        raw = imgedit_answer(_user_text(text, src, edit, "imgedit"))
        assert s.error is None and s.details["raw"] == raw
        assert (s.adherence, s.aesthetic) == (
            parse_imgedit(raw).adherence,
            parse_imgedit(raw).aesthetic,
        )


@pytest.mark.parametrize("backend", ["openai-viescore", "openai-imgedit"])
@pytest.mark.parametrize(
    "fault", ["malformed", "schema", "range", "safety", "truncated", "empty", "ambiguous"]
)
def test_malformed_judge_answers_are_error_verdicts(srv, tmp_path, backend, fault):
    cfg = remote_config(srv, "openai", validator=backend)
    blobs = BlobStore(tmp_path / "run")
    src, edit = images(2)
    with remote_backends(cfg, tmp_path) as b:
        stage = ValidatorStage(b.validator, blobs, 4.7)
        from nhr.records import CandidateRow

        row = CandidateRow(
            "c1",
            "s1",
            "p1",
            "i1",
            "make the cube red",
            "recolour",
            "photo",
            blobs.put(src),
            blobs.put(edit),
            32,
            24,
            0,
            20,
            2.5,
            "m",
            0.0,
        )
        srv.queue(fault)
        verdict = stage.process_batch([row])[0]
    if fault == "ambiguous" and backend == "openai-viescore":
        assert verdict.error is None  # a JSON judge has no such fault: a clean answer
        return
    assert not verdict.passed and verdict.reason == "judge_error" and verdict.error
    details = json.loads(verdict.details)
    assert details["judge_style"] in ("viescore", "imgedit")
    parsed = fault in ("schema", "range", "ambiguous") or (
        fault == "malformed" and backend == "openai-imgedit"
    )
    if parsed:  # an answer the parser refused is kept; blocked or cut-off ones never reach it
        assert details["raw"]


# ---------------------------------------------------------------- the ensemble
def _ctx(srv, tmp_path, **params):
    cfg = remote_config(srv, "openai", **params)
    return BuildContext(cfg, tmp_path)


def test_ensemble_combines_and_votes(srv, tmp_path):
    ctx = _ctx(srv, tmp_path)
    members = [
        build_judge(ctx, name, REGISTRY["validator"])
        for name in ("openai-viescore", "openai-imgedit")
    ]
    srcs, edits = images(6), images(6, (24, 32))
    texts = [f"make object {i} red" for i in range(6)]
    each = [m.score(srcs, edits, texts) for m in members]
    assert all(s.error is None for e in each for s in e)
    for combine in ("mean", "min"):
        for rule in ("combined", "all", "majority"):
            judge = EnsembleJudge(members, combine, rule, threshold=4.5)
            out = judge.score(srcs, edits, texts)
            for i, s in enumerate(out):
                adh = [e[i].adherence for e in each]
                want = sum(adh) / 2 if combine == "mean" else min(adh)
                assert s.adherence == pytest.approx(want, abs=1e-4)
                passes = [min(e[i].adherence, e[i].aesthetic) >= 4.5 for e in each]
                need = {"combined": 0, "all": 2, "majority": 2}[rule]
                assert (s.veto == "ensemble_vote") == (sum(passes) < need)
                assert [m["judge_id"] for m in s.details["members"]] == [
                    m.judge_id for m in members
                ]
    for obj in ctx._shared.values():
        obj.close()


def test_ensemble_member_error_is_an_error(srv, tmp_path):
    cfg = remote_config(
        srv,
        "openai",
        validator="ensemble",
        judge_ensemble_members=("openai-viescore", "openai-imgedit"),
        judge_ensemble_combine="min",
        judge_ensemble_pass="all",
    )
    with remote_backends(cfg, tmp_path) as b:
        judge = b.validator
        assert judge.judge_id.startswith("ensemble-min-all(openai:")
        srv.queue("range")
        s = judge.score(images(1), images(1), ["make the cube red"])[0]
    assert s.error and s.error.startswith("member openai:") and "out_of_range" in s.error
    assert s.error.split(":")[2] == "viescore"  # the first member got the fault
    assert s.details["members"][1]["error"] is None  # the other answered, kept too


@pytest.mark.parametrize(
    "spec", ["nope", "synthetic:noise=9", "synthetic:seed=1", "ensemble", "plumbing-accept-all:x"]
)
def test_bad_judge_specs_name_the_fix(tmp_path, spec):
    ctx = BuildContext(PipelineConfig(), tmp_path)
    with pytest.raises(ConfigError):
        build_judge(ctx, spec, REGISTRY["validator"])


def test_judge_spec_overrides_the_model(srv, tmp_path):
    ctx = _ctx(srv, tmp_path)
    judge = build_judge(ctx, "openai-viescore:EditScore/EditScore-7B", REGISTRY["validator"])
    plain = build_judge(ctx, "openai:my-tuned-judge", REGISTRY["validator"])
    assert judge.judge_id == "openai:EditScore/EditScore-7B:viescore"
    assert plain.judge_id == "openai:my-tuned-judge"
    judge.score(images(1), images(1), ["make it red"])
    assert srv.requests("openai")[-1]["fields"].startswith("consistency,perceptual_quality")
    for obj in ctx._shared.values():
        obj.close()
