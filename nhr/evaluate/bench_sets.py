"""The benchmark sets an editor is scored on, read into one item shape.

A set is named by a ``BENCH_SETS`` entry:

- ``gedit`` (hub ``stepfun-ai/GEdit-Bench``, split ``train``) or ``gedit=PATH`` (a local
  parquet file or folder with its columns ``task_type, key, instruction,
  instruction_language, input_image, input_image_raw, Intersection_exist``);
  ``BENCH_LANGUAGES`` keeps some languages (``en``, ``cn``), ``BENCH_SUBSET``
  ``intersection`` keeps the rows with ``Intersection_exist``;
- ``imgedit-basic=PATH``: ImgEdit-Bench's basic set, a folder holding ``basic_edit.json``
  (key → ``{id, prompt, edit_type}``) and the images at ``PATH/<id>`` (or under
  ``PATH/singleturn/``, as ``Benchmark.tar`` unpacks);
- ``kris`` (hub ``wukeming11/kris-bench``, its images in ``ori_images``; the instruction
  and task columns are looked up by name: ``ins_en``/``instruction``,
  ``category``/``task``) or ``kris=PATH``: a parquet copy, or the ``KRIS_Bench`` folder
  as its scripts read it, ``<category>/annotation.json`` mapping an id to ``{ori_img,
  ins_en, explain_en}`` with ``ori_img`` beside it;
- ``split=RUN_DIR``: the ``test`` split of a run's export (``EXPORT_TEST_SHARE``);
- ``synthetic``: the synthetic world's own benchmark: world pictures rendered here and
  one instruction each, task type = edit type, with truth;
- ``NAME=PATH_OR_HUB_ID`` (or a registry name of ``nhr.evaluate.datasets``): any dataset
  through ``EVAL_COLUMNS`` mappings, its source image and instruction columns.

Every set becomes ``BenchItem`` rows (source image stored as a blob) in the
``bench_items`` table, one part per set and selection, so a rerun reads them back
without touching the source. ``BENCH_MAX_ITEMS`` draws a seeded sample stratified per
task type (each type keeps its share, at least one item).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from nhr.evaluate.datasets import (
    ColumnMap,
    DatasetError,
    DatasetSpec,
    _image,
    _instruction,
    _is_hub_id,
    _load_local,
    parse_specs,
)
from nhr.images import ImageLimits, ImageRefused
from nhr.records import Record, from_table, to_table
from nhr.seeds import derive_seed

ITEMS_TABLE = "bench_items"
GEDIT_HUB = "stepfun-ai/GEdit-Bench"
KRIS_HUB = "wukeming11/kris-bench"
GEDIT_COLUMNS = (
    "task_type",
    "key",
    "instruction",
    "instruction_language",
    "input_image",
    "Intersection_exist",
)
SET_KINDS = ("gedit", "imgedit-basic", "kris", "split", "synthetic")


@dataclass(frozen=True)
class BenchItem(Record):
    """One benchmark item: a source image (a blob of this run) and an instruction."""

    key: ClassVar[str] = "item_id"
    item_id: str  # "<set>:<key>:<language>"
    set: str
    item_key: str
    task_type: str
    language: str
    instruction: str
    source_image: str
    intersection: bool


@dataclass(frozen=True)
class SetSpec:
    """One ``BENCH_SETS`` entry: the set's name, its kind and where it is."""

    name: str
    kind: str  # one of SET_KINDS, or "dataset"
    location: str
    columns: ColumnMap | None = None

    @property
    def standard(self) -> str:
        """The benchmark whose protocol the set follows (gedit, imgedit, kris, nhr)."""
        return {"gedit": "gedit", "imgedit-basic": "imgedit", "kris": "kris"}.get(self.kind, "nhr")


def parse_sets(
    entries: tuple[str, ...] | list[str], columns: tuple[str, ...] = ()
) -> list[SetSpec]:
    """The sets ``BENCH_SETS`` names (see the module docstring)."""
    out: list[SetSpec] = []
    for entry in entries:
        name, sep, location = (p.strip() for p in entry.partition("="))
        if name == "gedit":
            out.append(SetSpec("gedit", "gedit", location or GEDIT_HUB))
        elif name == "kris":
            out.append(SetSpec("kris", "kris", location or KRIS_HUB))
        elif name == "imgedit-basic":
            if not location:
                raise DatasetError(
                    "BENCH_SETS entry imgedit-basic names no folder",
                    "unpack ImgEdit's Benchmark.tar and write imgedit-basic=PATH (the folder "
                    "with basic_edit.json)",
                )
            out.append(SetSpec("imgedit-basic", "imgedit-basic", location))
        elif name == "split":
            if not location:
                raise DatasetError(
                    "BENCH_SETS entry split names no run folder",
                    "write split=RUN_DIR (a run exported with EXPORT_TEST_SHARE > 0)",
                )
            out.append(SetSpec(f"split-{Path(location.rstrip('/')).name}", "split", location))
        elif name == "synthetic" and not sep:
            out.append(SetSpec("synthetic", "synthetic", ""))
        else:
            spec = parse_specs([entry], [c for c in columns if c.partition("=")[0] == name])[0]
            out.append(SetSpec(spec.name, "dataset", spec.location, spec.columns))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise DatasetError(f"benchmark sets repeat in {names}", "name each set once")
    return out


# ---------------------------------------------------------------- raw rows per kind
@dataclass
class RawItem:
    """An item as read, before its image is stored."""

    key: str
    task_type: str
    language: str
    instruction: str
    image: Any  # a cell the loader reads (PIL, bytes, dict, path)
    intersection: bool = False
    base: Path | None = None


def _table_rows(location: str, name: str, hub: str) -> Any:
    """A parquet file or folder, or the hub copy, as a ``datasets.Dataset``."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(location)
    if path.exists():
        return _load_local(DatasetSpec(name, location, ColumnMap("", "", "")), path)
    if not _is_hub_id(location):
        raise DatasetError(
            f"benchmark {name}: {location} is neither a local path nor a hub id",
            "give the parquet file or folder of a local copy",
        )
    try:
        return datasets.load_dataset(location, split="train")
    except Exception as err:  # the hub client raises many kinds; all mean "cannot read it"
        raise DatasetError(
            f"benchmark {name}: {location} cannot be read from the hub "
            f"({type(err).__name__}: {str(err)[:200]})",
            f"check your network and HF_TOKEN, or download {hub} and pass {name}=PATH",
        ) from None


def _gedit(spec: SetSpec, languages: tuple[str, ...], subset: str) -> Iterator[RawItem]:
    ds = _table_rows(spec.location, "gedit", GEDIT_HUB)
    missing = [c for c in GEDIT_COLUMNS if c not in ds.column_names]
    if missing:
        raise DatasetError(
            f"benchmark gedit ({spec.location}) lacks column(s) {missing}; it has "
            f"{ds.column_names}",
            "point gedit=PATH at a copy of stepfun-ai/GEdit-Bench (its parquet files)",
        )
    meta = ds.remove_columns([c for c in ds.column_names if "image" in c])
    for i, row in enumerate(meta):
        lang = str(row["instruction_language"])
        if languages and lang not in languages:
            continue
        inter = bool(row["Intersection_exist"])
        if subset == "intersection" and not inter:
            continue
        yield RawItem(
            str(row["key"]),
            str(row["task_type"]),
            lang,
            _instruction(row["instruction"]),
            lambda i=i: ds[i]["input_image"],
            inter,
        )


def _imgedit(spec: SetSpec) -> Iterator[RawItem]:
    folder = Path(spec.location)
    meta = folder / "basic_edit.json"
    if not meta.is_file():
        raise DatasetError(
            f"benchmark imgedit-basic: {meta} does not exist",
            "point imgedit-basic=PATH at the folder holding basic_edit.json and the images",
        )
    for key, value in json.loads(meta.read_text()).items():
        rel = str(value["id"])
        base = folder / "singleturn" if (folder / "singleturn" / rel).exists() else folder
        yield RawItem(
            str(key), str(value["edit_type"]), "en", _instruction(value["prompt"]), rel, base=base
        )


def _first(row: dict[str, Any], names: tuple[str, ...], what: str, where: str) -> Any:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    raise DatasetError(
        f"{where}: no {what} column (looked for {list(names)}; it has {sorted(row)})",
        "give a copy of KRIS-Bench with its columns",
    )


def _kris(spec: SetSpec) -> Iterator[RawItem]:
    folder = Path(spec.location)
    if folder.is_dir() and any(folder.glob("*/annotation.json")):
        for ann in sorted(folder.glob("*/annotation.json")):
            entries = json.loads(ann.read_text())
            items = entries.items() if isinstance(entries, dict) else enumerate(entries)
            for key, value in items:
                image = _first(value, ("ori_img", "ori_images", "image"), "image", str(ann))
                image = image[0] if isinstance(image, list) else image
                text = _first(value, ("ins_en", "instruction"), "instruction", str(ann))
                yield RawItem(
                    f"{ann.parent.name}/{key}",
                    ann.parent.name,
                    "en",
                    _instruction(text),
                    image,
                    base=ann.parent,
                )
        return
    ds = _table_rows(spec.location, "kris", KRIS_HUB)
    for i, row in enumerate(ds.remove_columns([])):
        where = f"kris row {i}"
        task = str(_first(row, ("category", "task", "task_type"), "task", where))
        image = _first(row, ("ori_images", "ori_img", "image", "input_image"), "image", where)
        image = image[0] if isinstance(image, list) else image
        text = _first(row, ("ins_en", "instruction", "prompt"), "instruction", where)
        key = str(row.get("id", row.get("key", i)))
        yield RawItem(f"{task}/{key}", task, "en", _instruction(text), image)


def _split(spec: SetSpec) -> Iterator[RawItem]:
    from nhr.stages.export import load_export

    folder = Path(spec.location) / "dataset"
    if not (folder / "README.md").is_file():
        raise DatasetError(
            f"benchmark {spec.name}: {folder} holds no export",
            f"run the chain (07_export) in {spec.location} first",
        )
    try:
        ds = load_export(folder, "default", "test")
    except ValueError as err:
        raise DatasetError(
            f"benchmark {spec.name}: {err}",
            f"export {spec.location} again with EXPORT_TEST_SHARE > 0 (e.g. 0.1)",
        ) from None
    meta = ds.remove_columns(["source_image", "edited_image"])
    for i, row in enumerate(meta):
        yield RawItem(
            str(row["triplet_id"]),
            str(row["edit_type"] or "other"),
            "en",
            _instruction(row["instruction"]),
            lambda i=i: ds[i]["source_image"],
        )


def _dataset(spec: SetSpec, n: int, seed: int) -> Iterator[RawItem]:
    """A uniform seeded sample of ``n`` rows (one task type: nothing to stratify), read
    as notebook 08 reads datasets (a hub dataset streamed, only the sampled rows kept)."""
    from nhr.evaluate.datasets import read_sample

    assert spec.columns is not None
    ds_spec = DatasetSpec(spec.name, spec.location, spec.columns)
    for index, row in read_sample(ds_spec, n or 10**9, derive_seed("bench-sample", seed)):
        yield RawItem(
            str(index),
            "all",
            "en",
            _instruction(row[spec.columns.instruction]),
            row[spec.columns.source],
            base=row.get("_base"),
        )


def synthetic_items(world: Any, n: int, seed: int, long_side: tuple[int, int]) -> Iterator[RawItem]:
    """The synthetic world's benchmark: ``n`` plausible world pictures rendered here,
    each with one instruction the prompter writes for it (task type = its edit type)."""
    from nhr.backends.base import PromptRequest

    rng = random.Random(derive_seed("bench-synthetic", seed))
    made = tries = 0
    while made < n and tries < 20 * n:
        tries += 1
        draft = world.prompter.write([PromptRequest(f"b{tries:06d}", rng.randrange(2**31), 1)])[0]
        if not draft.instructions:
            continue
        long = rng.randrange(long_side[0] // 8, long_side[1] // 8 + 1) * 8
        short = max(64, int(long / rng.uniform(1.0, 1.5)) // 8 * 8)
        size = (long, short) if rng.random() < 0.5 else (short, long)
        image = world.renderer.generate([draft.text], [rng.randrange(2**31)], [size], 1, 0.0)[0]
        if not world.truth.source(image).plausible:
            continue  # a benchmark's sources depict their scene
        first = draft.instructions[0]
        yield RawItem(f"{made:05d}", first.edit_type, "en", first.text, image)
        made += 1


# ---------------------------------------------------------------- sampling and storing
def stratified(items: list[RawItem], n: int, seed: int) -> list[RawItem]:
    """A seeded sample of ``n`` items stratified by task type: each type keeps its share
    (largest remainders), at least one item while ``n`` allows; order as given."""
    if n <= 0 or n >= len(items):
        return items
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_type[item.task_type].append(i)
    types = sorted(by_type)
    exact = {t: n * len(by_type[t]) / len(items) for t in types}
    take = {t: min(len(by_type[t]), max(1, int(exact[t]))) for t in types}
    while sum(take.values()) > n:  # more types than n: drop the smallest shares
        t = min((t for t in types if take[t] > 0), key=lambda t: (exact[t], t))
        take[t] -= 1
    rest = sorted(types, key=lambda t: (-(exact[t] - int(exact[t])), t))
    while sum(take.values()) < n:
        grew = False
        for t in rest:
            if sum(take.values()) < n and take[t] < len(by_type[t]):
                take[t] += 1
                grew = True
        if not grew:
            break
    rng = random.Random(derive_seed("bench-sample", seed))
    chosen = sorted(i for t in types for i in rng.sample(by_type[t], take[t]))
    return [items[i] for i in chosen]


def load_set(
    spec: SetSpec,
    store: Any,
    blobs: Any,
    max_items: int,
    seed: int,
    languages: tuple[str, ...] = (),
    subset: str = "full",
    limits: ImageLimits | None = None,
    world: Any = None,
    long_side: tuple[int, int] = (128, 256),
) -> list[BenchItem]:
    """The stored items of a set, reading and storing them on first use (one part of
    ``bench_items`` per set and selection). An item whose image the loader refuses or
    whose instruction is empty is skipped and counted (``stats/bench_items.json``)."""
    limits = limits or ImageLimits()
    key = json.dumps(
        [
            spec.name,
            spec.kind,
            spec.location,
            max_items,
            seed,
            list(languages),
            subset,
            repr(limits),
            list(long_side),
        ]
    )
    part = hashlib.sha256(key.encode()).hexdigest()[:20]
    stored = store.tables.read_part(ITEMS_TABLE, part)
    if stored is not None:
        return from_table(stored, BenchItem)
    if spec.kind == "synthetic":
        if world is None:
            raise DatasetError(
                "the synthetic benchmark set needs the synthetic world", "run it with nhr"
            )
        raw = list(synthetic_items(world, max_items or 60, seed, long_side))
    elif spec.kind == "gedit":
        raw = list(_gedit(spec, languages, subset))
    elif spec.kind == "imgedit-basic":
        raw = list(_imgedit(spec))
    elif spec.kind == "kris":
        raw = list(_kris(spec))
    elif spec.kind == "split":
        raw = list(_split(spec))
    else:
        raw = list(_dataset(spec, max_items, seed))
    if not raw:
        raise DatasetError(
            f"benchmark {spec.name} ({spec.location or 'synthetic'}) has no items "
            f"(languages {list(languages) or 'all'}, subset {subset})",
            "check the location, BENCH_LANGUAGES and BENCH_SUBSET",
        )
    chosen = stratified(raw, max_items, seed)
    items, skips = [], Counter()
    for r in chosen:
        where = f"benchmark {spec.name} item {r.key}"
        if not r.instruction:
            skips["no_instruction"] += 1
            continue
        try:
            cell = r.image() if callable(r.image) else r.image
            image = cell if isinstance(cell, Image.Image) else _image(cell, r.base, where, limits)
        except ImageRefused as err:
            skips[f"image_{err.reason}"] += 1
            continue
        items.append(
            BenchItem(
                item_id=f"{spec.name}:{r.key}:{r.language}",
                set=spec.name,
                item_key=r.key,
                task_type=r.task_type,
                language=r.language,
                instruction=r.instruction,
                source_image=blobs.put(image.convert("RGB")),
                intersection=r.intersection,
            )
        )
    info = {
        "set": spec.name,
        "read": len(raw),
        "sampled": len(chosen),
        "kept": len(items),
        "skipped_by_reason": dict(sorted(skips.items())),
    }
    store.tables.write_part(
        ITEMS_TABLE, part, to_table(items, BenchItem), [i.item_id for i in items], info
    )
    stats = store.read_stats(ITEMS_TABLE) or {"stage": ITEMS_TABLE, "sets": {}}
    stats["sets"][spec.name] = info
    store.write_stats(ITEMS_TABLE, stats)
    return items
