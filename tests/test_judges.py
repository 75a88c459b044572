"""Judge formats (VIEScore / EditScore, ImgEdit-Judge) and the ensemble validator, on the
fake OpenAI-compatible and Gemini servers: mapped scores, raw answers kept, and every
malformed answer an error verdict, never a pass."""

import json
import math

import pytest
from fakes import imgedit_judge, viescore_judge
from fakes.model_server import FakeModelServer
from fakes.remote import images, remote_backends, remote_config, use_fake

from nhr.backends.api_client import CallError
from nhr.backends.api_roles import image_part, model_for
from nhr.backends.judge_ensemble import EnsembleJudge, build_judge
from nhr.backends.judge_imgedit import parse_imgedit
from nhr.backends.judge_viescore import (
    check_range,
    parse_score_answer,
    to_validator_scale,
    viescore,
)
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

    t = PromptTemplate.load(template, 2)
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
@pytest.mark.parametrize(
    ("text", "scores", "reasoning"),
    [
        ('{\n"reasoning" : "done",\n"score" : [21, 18]\n}', (21.0, 18.0), "done"),
        ('```json\n{"reasoning": "ok", "score": [6, 0]}\n```', (6.0, 0.0), "ok"),
        ('Sure.\n{"reasoning": "it\'s fine", "score": [7.5, 8]}\nThanks!', (7.5, 8.0), "it's fine"),
        ("[6, 0]", (6.0, 0.0), ""),
        ("Scores: [25, 3]", (25.0, 3.0), ""),
        ("{reasoning: 'a', score: ['4', 5]}", (4.0, 5.0), "a"),
    ],
)
def test_viescore_answers_are_read_as_editscore_reads_them(text, scores, reasoning):
    got = parse_score_answer(text, 25)
    assert got.scores == scores and got.reasoning == reasoning


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"reasoning": "x"}', "schema_violation"),
        ('{"reasoning": "x", "score": [7]}', "schema_violation"),
        ('{"reasoning": "x", "score": 7}', "schema_violation"),
        ('{"reasoning": "x", "score": [7, 7, 7]}', "schema_violation"),
        ('{"reasoning": "x", "score": ["ten", "ten"]}', "schema_violation"),
        ('{"reasoning": "x", "score": [true, 5]}', "schema_violation"),
        ('{"reasoning": "x", "score": [11, 5]}', "out_of_range"),
        ('{"reasoning": "x", "score": [-1, 5]}', "out_of_range"),
        ('{"reasoning": "x", "score": [10', "schema_violation"),
        ("Prompt Compliance: 4\nVisual Naturalness: 4", "schema_violation"),
        ({"score": [5, 5]}, "schema_violation"),
    ],
)
def test_viescore_refuses_what_it_cannot_trust(text, kind):
    with pytest.raises(CallError) as err:
        parse_score_answer(text, 10)
    assert err.value.kind == kind


def test_viescore_formula_is_editscores():
    sc, pq, o = viescore((18.0, 22.0), (25.0, 20.0), 25)
    assert (sc, pq, o) == (18 / 2.5, 20 / 2.5, math.sqrt((18 / 2.5) * (20 / 2.5)))
    assert viescore((6.0, 0.0), (9.0, 8.0), 10) == (0.0, 8.0, 0.0)
    assert to_validator_scale(0) == 1.0 and to_validator_scale(9.25) == 4.7
    with pytest.raises(ConfigError):
        check_range(0)


@pytest.mark.parametrize(
    ("text", "scores", "labels"),
    [
        (  # ImgEdit's own example (basic_bench_readme.md)
            "Brief reasoning: No fur change; wrong subject; mainly butterfly retained with minor "
            "color alteration.\nPrompt Compliance: 1\nVisual Seamlessness: 4\n"
            "Physical & Detail Fidelity: 4",
            (1.0, 4.0, 4.0),
            ["Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"],
        ),
        (
            "**Prompt Compliance:** 5/5\n**Visual Naturalness:** 4\n- Physical & Detail "
            "Integrity: 4.5",
            (5.0, 4.0, 4.5),
            ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"],
        ),
        (
            "Brief reasoning: the cube: 5 of them, not 3.\nPrompt Compliance: 2\n"
            "Visual Naturalness: 5\nPhysical & Detail Integrity: 3",
            (2.0, 5.0, 3.0),
            ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"],
        ),
    ],
)
def test_imgedit_answers_are_read_as_imgedit_reads_them(text, scores, labels):
    s = parse_imgedit(text)
    assert (s.adherence, s.aesthetic) == (scores[0], (scores[1] + scores[2]) / 2)
    d = s.details
    assert (d["compliance"], d["naturalness"], d["physical"]) == scores
    assert d["labels"] == labels and d["overall"] == round(sum(scores) / 3, 4)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Prompt Compliance: 5\nVisual Naturalness: 5", "schema_violation"),
        ("Prompt Compliance: five\nVisual Naturalness: five\nPhysical: five", "schema_violation"),
        ("Prompt Compliance: 7\nVisual Naturalness: 5\nPhysical: 5", "out_of_range"),
        ("Prompt Compliance: 0\nVisual Naturalness: 5\nPhysical: 5", "out_of_range"),
        (
            "Prompt Compliance: 5\nVisual Naturalness: 5\nPhysical: 5\nPrompt Compliance: 2",
            "schema_violation",
        ),
        ("Score 1: 5\nReason: perfect.", "schema_violation"),
        ('{"reasoning": "x", "score": [25, 25]}', "schema_violation"),
        ("", "schema_violation"),
        ({"Prompt Compliance": 5}, "schema_violation"),
    ],
)
def test_imgedit_refuses_what_it_cannot_trust(text, kind):
    with pytest.raises(CallError) as err:
        parse_imgedit(text)
    assert err.value.kind == kind


# ---------------------------------------------------------------- on the fake servers
@pytest.mark.parametrize("backend", ["openai-viescore", "gemini-viescore"])
@pytest.mark.parametrize("style", ["json", "fenced", "bare"])
def test_viescore_judge_on_the_fake_server(srv, tmp_path, backend, style):
    srv.viescore_style = style
    api = "openai" if backend.startswith("openai") else "gemini"
    cfg = remote_config(srv, api, validator=backend, viescore_range=25)
    srcs, edit = images(3), images(1, (24, 32))[0]
    texts = ["make the cube red", "make the cube blue", "add a hat"]
    with remote_backends(cfg, tmp_path) as b:
        judge = b.validator
        out = judge.score(srcs, [edit] * 3, texts)
        logged = list({r["text"]: r for r in srv.requests(api)}.values())  # retries once
        assert len(logged) == 4  # three SC calls, one PQ call for the one edited image
        again = judge.score(srcs[:1], [edit], ["make the cube green"])[0]
        assert len({r["text"] for r in srv.requests(api)}) == 5  # only the new SC call
        assert again.details["pq_scores"] == out[0].details["pq_scores"]
        asked = srv.count
        assert judge.score(srcs, [edit] * 3, texts) == out and srv.count == asked  # the cache
    assert judge.judge_id.endswith(":viescore") and judge.prompt_version == "viescore-v2-r25"
    pq_text = [r["text"] for r in logged if r["text"].count("img:") == 1]
    assert len(pq_text) == 1 and "scale from 0 to 25" in pq_text[0]
    pq_scores = viescore_judge.scores(pq_text[0], 1)
    for s in out:
        assert s.error is None
        d = s.details
        sc_scores = tuple(float(x) for x in d["sc_scores"])
        assert d["pq_scores"] == pq_scores and d["score_range"] == 25
        want = (min(sc_scores) / 2.5, min(pq_scores) / 2.5)  # EditScore's formula
        assert (d["sc"], d["pq"]) == want and d["overall"] == math.sqrt(want[0] * want[1])
        assert s.adherence == to_validator_scale(d["sc"])
        assert s.aesthetic == to_validator_scale(d["pq"])
        assert d["raw_sc"] and d["raw_pq"] == viescore_judge.answer(pq_text[0], 1, style)
    sc_text = {r["text"] for r in logged} - set(pq_text)
    assert sorted(tuple(s.details["sc_scores"]) for s in out) == sorted(
        tuple(viescore_judge.scores(t, 2)) for t in sc_text
    )


def test_imgedit_judge_asks_for_free_text_and_parses_it(srv, tmp_path):
    cfg = remote_config(srv, "openai", validator="openai-imgedit")
    srcs, edits = images(4), images(4, (24, 32))
    instructions = [f"make object {i} blue" for i in range(4)]
    with remote_backends(cfg, tmp_path) as b:
        scores = b.validator.score(srcs, edits, instructions)
    logged = srv.requests("openai")
    assert len(logged) == 4 and all(r["fields"] == "" for r in logged)  # no response schema
    assert all("Physical & Detail Integrity: A number from 1 to 5." in r["text"] for r in logged)
    for s, src, edit, text in zip(scores, srcs, edits, instructions, strict=True):
        raw = imgedit_judge.answer(_user_text(text, src, edit, "imgedit"))
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
    assert not verdict.passed and verdict.reason == "judge_error" and verdict.error
    details = json.loads(verdict.details)
    assert details["judge_style"] in ("viescore", "imgedit")
    parsed = fault in ("schema", "range", "ambiguous", "malformed")
    if parsed:  # an answer the parser refused is kept; blocked or cut-off ones never reach it
        assert details["raw_sc" if backend == "openai-viescore" else "raw"]


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
    "spec",
    [
        "nope",
        "synthetic:noise=9",
        "synthetic:seed=1",
        "ensemble",
        "plumbing-accept-all:x",
        "openai-viescore:m,range=x",
        "openai-viescore:m,range=0",
        "openai-viescore:a,b",
        "openai-viescore:m,seed=1",
        "openai-imgedit:m,range=25",
        "openai:m,range=25",
    ],
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
    assert srv.requests("openai")[-1]["fields"] == ""  # free text, as the model was trained
    assert judge.prompt_version == "viescore-v2-r10"
    ranged = build_judge(
        ctx, "openai-viescore:EditScore/EditScore-7B,range=25", REGISTRY["validator"]
    )
    assert ranged.judge_id == judge.judge_id and ranged.prompt_version == "viescore-v2-r25"
    default = build_judge(ctx, "openai-viescore:range=25", REGISTRY["validator"])
    assert default.model == model_for(ctx.cfg, "openai", "validator")
    assert default.prompt_version == "viescore-v2-r25"
    for obj in ctx._shared.values():
        obj.close()
