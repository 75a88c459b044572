"""Tuning data from rated items: teach a judge to answer as people rated.

Each rated item becomes one example: the hard validator's own prompt
(``validator_v1.txt``: the system text, then SOURCE image, EDITED image and the
instruction) and, as the answer, the validator's JSON with the raters' mean scores
(``{"InstructionAdherence": 4.5, "ImageAesthetic": 5.0}``), so a tuned model answers
exactly what the validator backend parses. Two formats:

- **Vertex AI Gemini supervised tuning** (the paper's route): JSON lines of
  ``{"systemInstruction": {"role", "parts": [{"text"}]}, "contents": [{"role": "user",
  "parts": [...]}, {"role": "model", "parts": [{"text": answer}]}]}``. Images are
  ``fileData`` parts (``{"mimeType": "image/png", "fileUri": "gs://..."}``; the images
  are written beside the file, named by their sha256, for upload to that prefix: the
  form the Vertex tuning docs give) or ``inlineData`` parts (``{"mimeType", "data":
  base64}``, the Gemini API's inline form). Vertex allows at most 30 images per example
  and 20 MB per image; an example here has 2.
- **Chat format for an open VLM judge**: TRL's conversational vision format
  (``{"messages": [{"role", "content": [{"type": "image"} | {"type": "text", "text"}]}],
  "images": [paths]}``, as TRL's ``SFTTrainer`` takes it for Qwen2.5-VL and others),
  and LLaMA-Factory's sharegpt/OpenAI-style multimodal format (``{"messages": [{"role",
  "content": "... <image> ..."}], "images": [paths]}``, one ``<image>`` per image, with
  the ``dataset_info.json`` entry that registers it).

A seeded share of the items goes to a validation file (Vertex and TRL both take one).
Every line written is schema-checked first (``check_vertex``, ``check_trl``,
``check_llamafactory``).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nhr.backends.api_client import ImagePart
from nhr.backends.api_roles import PromptTemplate, image_part
from nhr.evaluate.calibration import Rating, RatingsError
from nhr.evaluate.rating import ScoredEdit
from nhr.store import atomic_write_bytes

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline

MIME = "image/png"
VERTEX_MAX_IMAGES = 30
IMAGE_TOKEN = "<image>"


class TuningFormatError(ValueError):
    """A tuning line does not follow its format (a bug: lines are checked before writing)."""


@dataclass(frozen=True)
class TuningExample(ScoredEdit):
    """One rated item as a training example: images, instruction, the raters' scores."""

    def answer(self) -> str:
        """The validator's JSON answer with the raters' scores."""
        return json.dumps(
            {"InstructionAdherence": self.adherence, "ImageAesthetic": self.aesthetic}
        )


def examples(pipe: Pipeline, ratings: Sequence[Rating]) -> list[TuningExample]:
    """One example per rated item of the run (the raters' mean, rounded to 0.1)."""
    by_item: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_item[r.item_id].append(r)
    cands = {c.candidate_id: c for c in pipe.rows("candidates") if c.candidate_id in by_item}
    unknown = sorted(set(by_item) - set(cands))
    if unknown:
        raise RatingsError(
            f"{len(unknown)} rated item(s) are not candidates of {pipe.store.root}, "
            f"e.g. {unknown[:3]}",
            "rate items of this run (its candidate ids)",
        )
    out = []
    for item_id in sorted(by_item):
        c, rs = cands[item_id], by_item[item_id]
        out.append(
            TuningExample(
                item_id,
                c.source_image,
                c.image,
                c.instruction,
                round(float(np.mean([r.adherence for r in rs])), 1),
                round(float(np.mean([r.aesthetic for r in rs])), 1),
            )
        )
    return out


def split(
    items: Sequence[TuningExample], validation_share: float, seed: int = 0
) -> tuple[list[TuningExample], list[TuningExample]]:
    """(train, validation): a seeded share of the examples held out."""
    rng = np.random.default_rng([seed, 13])
    held = rng.random(len(items)) < validation_share
    return (
        [e for e, h in zip(items, held, strict=True) if not h],
        [e for e, h in zip(items, held, strict=True) if h],
    )


# ---------------------------------------------------------------- rendering
def _rendered(
    pipe: Pipeline, ex: TuningExample, max_side: int
) -> tuple[str, tuple[str | ImagePart, ...]]:
    """The validator's system text and user parts for one example."""
    blobs = pipe.store.blobs
    images = {
        "source": image_part(blobs.get(ex.source_image), max_side),
        "edited": image_part(blobs.get(ex.edited_image), max_side),
    }
    return PromptTemplate.load("validator").render({"instruction": ex.instruction}, images)


def _save_image(folder: Path, part: ImagePart) -> str:
    """Write an image once, named by its sha256; returns its file name."""
    name = f"{part.sha256}.png"
    path = folder / name
    if not path.is_file():
        atomic_write_bytes(path, part.data)
    return name


def _write_jsonl(path: Path, lines: Sequence[dict[str, Any]]) -> Path:
    atomic_write_bytes(path, "".join(json.dumps(x) + "\n" for x in lines).encode())
    return path


# ---------------------------------------------------------------- Vertex AI Gemini
def vertex_line(
    system: str,
    parts: Sequence[str | ImagePart],
    answer: str,
    image_uri: Any = None,
) -> dict[str, Any]:
    """One Vertex tuning example; ``image_uri(part)`` gives a fileData URI (None: inline)."""
    user: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ImagePart):
            if image_uri is None:
                user.append(
                    {"inlineData": {"mimeType": MIME, "data": base64.b64encode(p.data).decode()}}
                )
            else:
                user.append({"fileData": {"mimeType": MIME, "fileUri": image_uri(p)}})
        else:
            user.append({"text": p})
    return {
        "systemInstruction": {"role": "system", "parts": [{"text": system}]},
        "contents": [
            {"role": "user", "parts": user},
            {"role": "model", "parts": [{"text": answer}]},
        ],
    }


def check_vertex(line: dict[str, Any]) -> None:
    """Raise TuningFormatError unless ``line`` is a Vertex Gemini tuning example."""
    if set(line) - {"systemInstruction", "contents"} or "contents" not in line:
        raise TuningFormatError(f"keys {sorted(line)}: want contents (+ systemInstruction)")
    si = line.get("systemInstruction")
    if si is not None and not (
        isinstance(si, dict) and si.get("parts") and all(set(p) == {"text"} for p in si["parts"])
    ):
        raise TuningFormatError("systemInstruction must hold text parts")
    contents = line["contents"]
    if not isinstance(contents, list) or len(contents) < 2:
        raise TuningFormatError("contents must hold a user turn and a model turn")
    roles = [c.get("role") for c in contents]
    if roles[-1] != "model" or any(r not in ("user", "model") for r in roles):
        raise TuningFormatError(f"roles {roles}: user/model turns, the last the model's")
    images = 0
    for c in contents:
        if not c.get("parts"):
            raise TuningFormatError(f"a {c.get('role')} turn without parts")
        for p in c["parts"]:
            if len(p) != 1:
                raise TuningFormatError(f"a part must hold one field, got {sorted(p)}")
            ((kind, value),) = p.items()
            if kind == "text":
                if not isinstance(value, str):
                    raise TuningFormatError("text must be a string")
            elif kind == "fileData":
                if set(value) != {"mimeType", "fileUri"} or not str(value["fileUri"]).startswith(
                    ("gs://", "http://", "https://")
                ):
                    raise TuningFormatError(
                        f"fileData {value}: mimeType + gs:// or http(s) fileUri"
                    )
                images += 1
            elif kind == "inlineData":
                if set(value) != {"mimeType", "data"}:
                    raise TuningFormatError("inlineData must hold mimeType and data")
                base64.b64decode(value["data"], validate=True)
                images += 1
            else:
                raise TuningFormatError(f"unknown part kind {kind!r}")
            if c["role"] == "model" and kind != "text":
                raise TuningFormatError("the model turn must be text")
    if images > VERTEX_MAX_IMAGES:
        raise TuningFormatError(f"{images} images in one example (Vertex allows 30)")


def write_vertex(
    pipe: Pipeline,
    items: Sequence[TuningExample],
    out_dir: Path | str,
    images: str = "gcs",
    gcs_prefix: str = "gs://BUCKET/nhr-tuning/images",
    max_side: int = 1024,
    validation_share: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """``vertex_train.jsonl`` (and ``vertex_validation.jsonl``) in ``out_dir``; with
    ``images="gcs"`` the images go to ``out_dir/images`` for upload to ``gcs_prefix``."""
    if images not in ("gcs", "inline"):
        raise ValueError(f"images must be 'gcs' or 'inline', got {images!r}")
    out = Path(out_dir)
    folder = out / "images"
    prefix = gcs_prefix.rstrip("/")

    def uri(part: ImagePart) -> str:
        return f"{prefix}/{_save_image(folder, part)}"

    files: dict[str, Any] = {}
    for name, subset in zip(
        ("train", "validation"), split(items, validation_share, seed), strict=True
    ):
        if not subset:
            continue
        lines = []
        for ex in subset:
            system, parts = _rendered(pipe, ex, max_side)
            line = vertex_line(system, parts, ex.answer(), uri if images == "gcs" else None)
            check_vertex(line)
            lines.append(line)
        files[name] = str(_write_jsonl(out / f"vertex_{name}.jsonl", lines))
    files["examples"] = len(items)
    if images == "gcs":
        files["upload"] = f"gcloud storage cp {folder}/*.png {prefix}/"
    return files


# ---------------------------------------------------------------- TRL and LLaMA-Factory
def trl_line(
    system: str, parts: Sequence[str | ImagePart], answer: str, paths: Sequence[str]
) -> dict[str, Any]:
    """One TRL conversational vision example (images as placeholders + an images list)."""
    content: list[dict[str, Any]] = [
        {"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p}
        for p in parts
    ]
    return {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": list(paths),
    }


def llamafactory_line(
    system: str, parts: Sequence[str | ImagePart], answer: str, paths: Sequence[str]
) -> dict[str, Any]:
    """One LLaMA-Factory sharegpt (OpenAI-style) multimodal example."""
    text = "\n".join(IMAGE_TOKEN if isinstance(p, ImagePart) else p for p in parts)
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ],
        "images": list(paths),
    }


def _check_turns(messages: Any) -> list[str]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise TuningFormatError("messages must hold at least a user and an assistant turn")
    roles = [m.get("role") for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if body[-1] != "assistant" or any(
        r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body)
    ):
        raise TuningFormatError(f"roles {roles}: (system,) user/assistant alternating")
    return roles


def check_trl(line: dict[str, Any]) -> None:
    """Raise TuningFormatError unless ``line`` is a TRL conversational vision example."""
    if set(line) != {"messages", "images"}:
        raise TuningFormatError(f"keys {sorted(line)}: want messages and images")
    _check_turns(line["messages"])
    placeholders = 0
    for m in line["messages"]:
        if not isinstance(m.get("content"), list):
            raise TuningFormatError("content must be a list of typed parts")
        for part in m["content"]:
            if part.get("type") == "image" and set(part) == {"type"}:
                placeholders += 1
            elif part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise TuningFormatError(f"part {part}: {{type: image}} or {{type: text, text}}")
    if placeholders != len(line["images"]) or not all(isinstance(p, str) for p in line["images"]):
        raise TuningFormatError(f"{placeholders} image placeholders, {len(line['images'])} images")


def check_llamafactory(line: dict[str, Any]) -> None:
    """Raise TuningFormatError unless ``line`` is a LLaMA-Factory multimodal example."""
    if set(line) != {"messages", "images"}:
        raise TuningFormatError(f"keys {sorted(line)}: want messages and images")
    _check_turns(line["messages"])
    if not all(isinstance(m.get("content"), str) for m in line["messages"]):
        raise TuningFormatError("content must be a string")
    tokens = sum(m["content"].count(IMAGE_TOKEN) for m in line["messages"])
    if tokens != len(line["images"]):
        raise TuningFormatError(f"{tokens} {IMAGE_TOKEN} tokens, {len(line['images'])} images")


def llamafactory_dataset_info(file_name: str, name: str = "nhr_judge") -> dict[str, Any]:
    """The ``dataset_info.json`` entry registering the file with LLaMA-Factory."""
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }


def write_chat(
    pipe: Pipeline,
    items: Sequence[TuningExample],
    out_dir: Path | str,
    max_side: int = 1024,
    validation_share: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """``trl_{train,validation}.jsonl``, ``llamafactory_{train,validation}.jsonl`` and
    ``dataset_info.json`` in ``out_dir``; images in ``out_dir/images`` (paths relative to
    ``out_dir``, where both tools are pointed)."""
    out = Path(out_dir)
    files: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name, subset in zip(
        ("train", "validation"), split(items, validation_share, seed), strict=True
    ):
        if not subset:
            continue
        trl, lf = [], []
        for ex in subset:
            system, parts = _rendered(pipe, ex, max_side)
            paths = [
                f"images/{_save_image(out / 'images', p)}"
                for p in parts
                if isinstance(p, ImagePart)
            ]
            a, b = (
                trl_line(system, parts, ex.answer(), paths),
                llamafactory_line(system, parts, ex.answer(), paths),
            )
            check_trl(a)
            check_llamafactory(b)
            trl.append(a)
            lf.append(b)
        files[f"trl_{name}"] = str(_write_jsonl(out / f"trl_{name}.jsonl", trl))
        files[f"llamafactory_{name}"] = str(_write_jsonl(out / f"llamafactory_{name}.jsonl", lf))
        info.update(llamafactory_dataset_info(f"llamafactory_{name}.jsonl", f"nhr_judge_{name}"))
    atomic_write_bytes(out / "dataset_info.json", json.dumps(info, indent=2).encode())
    files["dataset_info"] = str(out / "dataset_info.json")
    files["examples"] = len(items)
    return files
