"""Cross-dataset evaluation: score random samples of any editing dataset with a validator.

The paper (Table 3) scores 5,000 random samples of each public dataset with its validator
and compares the mean instruction adherence, aesthetics and their geometric mean. Here a
dataset is a Hugging Face hub id (streamed, so a sample needs no full download), a local
parquet folder or file, an imagefolder (``metadata.jsonl`` or ``metadata.csv`` naming
image files), or an ``nhr`` export; a column mapping says which columns hold the source
image, the instruction and the edited image. The sample is drawn with a fixed seed and
stored in the run folder (``eval_samples`` table, images as blobs); the scores go through
the runner into the ``eval_scores`` table, so a rerun resumes and a remote validator's
answers come from its request cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from nhr.errors import NhrError
from nhr.images import ImageLimits, ImageRefused, open_image
from nhr.photo_collections import is_imagefolder, read_metadata
from nhr.records import Record, Verdict, from_table, to_table
from nhr.stages.validator import ValidatorStage, geometric_score
from nhr.store import BlobStore, RunStore

if TYPE_CHECKING:
    import pandas as pd

    from nhr.runner import Runner
    from nhr.tables import RunTables

SAMPLES_TABLE = "eval_samples"
SCORES_TABLE = "eval_scores"


class DatasetError(NhrError):
    """A dataset cannot be reached, read, or lacks a mapped column."""


@dataclass(frozen=True)
class ColumnMap:
    """Which columns of a dataset hold the source image, the instruction, the edited image."""

    source: str
    instruction: str
    edited: str

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """``'SOURCE,INSTRUCTION,EDITED'`` → a mapping."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3 or not all(parts):
            raise DatasetError(
                f"column mapping {text!r} does not name three columns",
                "write it as 'SOURCE,INSTRUCTION,EDITED', e.g. 'src_img,prompt,edited_img'",
            )
        return cls(*parts)


NHR_COLUMNS = ColumnMap("source_image", "instruction", "edited_image")


@dataclass(frozen=True)
class KnownDataset:
    """A public dataset: where it lives, its columns, and the paper's Table 3 figures.

    ``paper`` holds the paper's (adherence, aesthetic, geometric mean) where known here;
    ``None`` entries were not transcribed. ``note`` says what to do where the hub copy
    cannot be streamed as is (archives, URL lists): download and convert it, then pass
    ``NAME=PATH`` with the same columns.
    """

    hub_id: str
    columns: ColumnMap
    config: str | None = None
    split: str = "train"
    paper: tuple[float | None, float | None, float | None] = (None, None, None)
    note: str = ""


# Column names as published on each hub card; check a card before a large run (cards
# change). ``paper`` holds Table 3's geometric means (and NHR-Edit's two scores).
KNOWN_DATASETS: dict[str, KnownDataset] = {
    "nhr-edit": KnownDataset(
        "iitolstykh/NHR-Edit",
        ColumnMap("source_image", "instruction", "edited_image"),
        paper=(4.56, 4.52, 4.53),
        note="images + metadata.jsonl: download it and pass nhr-edit=PATH if streaming fails",
    ),
    "omniedit": KnownDataset(
        "TIGER-Lab/OmniEdit-Filtered-1.2M",
        ColumnMap("src_img", "edited_prompt_list", "edited_img"),
        paper=(None, None, 4.23),
    ),
    "ultraedit": KnownDataset(
        "BleachNick/UltraEdit",
        ColumnMap("source_image", "edit_prompt", "edited_image"),
        paper=(None, None, 2.92),
    ),
    "hq-edit": KnownDataset(
        "UCSC-VLAA/HQ-Edit",
        ColumnMap("input_image", "edit", "output_image"),
        paper=(None, None, 3.45),
    ),
    "magicbrush": KnownDataset(
        "osunlp/MagicBrush",
        ColumnMap("source_img", "instruction", "target_img"),
        paper=(None, None, 3.38),
    ),
    "instructpix2pix": KnownDataset(
        "timbrooks/instructpix2pix-clip-filtered",
        ColumnMap("original_image", "edit_prompt", "edited_image"),
        paper=(None, None, 3.30),
    ),
    "anyedit": KnownDataset(
        "Bin1117/AnyEdit",
        ColumnMap("image_file", "edit_instruction", "edited_file"),
        paper=(None, None, 3.44),
    ),
    "imgedit": KnownDataset(
        "sysuyy/ImgEdit",
        ColumnMap("source_image", "instruction", "edited_image"),
        paper=(None, None, 3.49),
        note="tar archives + JSON: extract to an imagefolder and pass imgedit=PATH",
    ),
    "seed-data-edit": KnownDataset(
        "AILab-CVC/SEED-Data-Edit",
        ColumnMap("source_image", "instruction", "target_image"),
        note="tar archives + JSONL: extract to an imagefolder and pass seed-data-edit=PATH; "
        "Table 3 scores its parts apart: Part 2 3.09, Unsplash 3.28, OpenImages 3.50, "
        "Part 3 4.13",
    ),
    "pico-banana-400k": KnownDataset(
        "apple/pico-banana-400k",
        ColumnMap("source_image", "text", "edited_image"),
        note="a list of image URLs: fetch the images into an imagefolder and pass its PATH",
    ),
    "gpt-image-edit": KnownDataset(
        "UCSC-VLAA/GPT-Image-Edit-1.5M",
        ColumnMap("input_image", "instruction", "output_image"),
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to score: a name, where it is, and its columns."""

    name: str
    location: str
    columns: ColumnMap
    config: str | None = None
    split: str = "train"

    @property
    def paper(self) -> tuple[float | None, float | None, float | None]:
        """The paper's Table 3 figures for this dataset, where known."""
        known = KNOWN_DATASETS.get(self.name)
        return known.paper if known else (None, None, None)


def parse_specs(entries: Iterable[str], column_entries: Iterable[str] = ()) -> list[DatasetSpec]:
    """Datasets from ``EVAL_DATASETS`` entries and ``EVAL_COLUMNS`` mappings.

    An entry is a registry name (``omniedit``), ``NAME=PATH_OR_HUB_ID``, or a bare path
    (named after its folder). A local folder without a mapping gets the ``nhr`` export's
    columns; a registry name keeps its own unless ``EVAL_COLUMNS`` overrides it.
    """
    columns: dict[str, ColumnMap] = {}
    for entry in column_entries:
        name, sep, text = entry.partition("=")
        if not sep or not name.strip():
            raise DatasetError(
                f"column mapping entry {entry!r} has no NAME=",
                "write EVAL_COLUMNS entries as 'NAME=SOURCE,INSTRUCTION,EDITED'",
            )
        columns[name.strip()] = ColumnMap.parse(text)
    specs = []
    for entry in entries:
        name, sep, location = entry.partition("=")
        name, location = name.strip(), location.strip()
        if not sep:
            location = name
            name = name if name in KNOWN_DATASETS else Path(name.rstrip("/")).name
        known = KNOWN_DATASETS.get(name)
        if known and (not sep or location == known.hub_id):
            spec = DatasetSpec(name, known.hub_id, known.columns, known.config, known.split)
        else:
            default = known.columns if known else NHR_COLUMNS
            spec = DatasetSpec(name, location, default)
        if name in columns:
            spec = DatasetSpec(spec.name, spec.location, columns[name], spec.config, spec.split)
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DatasetError(f"dataset names repeat in {names}", "give each dataset its own NAME=")
    unused = sorted(set(columns) - set(names))
    if unused:
        raise DatasetError(
            f"EVAL_COLUMNS names {unused}, which no EVAL_DATASETS entry has",
            "spell the NAME as in EVAL_DATASETS",
        )
    return specs


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class SampleRow(Record):
    """One sampled triplet of a dataset, images stored as blobs of the evaluation run."""

    key: ClassVar[str] = "sample_id"
    sample_id: str
    dataset: str
    index: int
    source_image: str
    edited_image: str
    instruction: str


def _is_hub_id(location: str) -> bool:
    """Whether ``location`` looks like ``owner/name`` and is not a local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", location)) and not Path(location).exists()


def _image(
    value: Any, base: Path | None, where: str, limits: ImageLimits | None = None
) -> Image.Image:
    """A cell holding an image (PIL, bytes dict, bytes, or a path) → an RGB image, through
    the one loader. An unreadable or refused image raises ``ImageRefused`` (the caller
    skips the row and counts the reason); a cell of another type is a mapping error."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (str, bytes, bytearray)) and not value):
        raise ImageRefused("missing", f"{where}: the image cell is empty", "")
    if isinstance(value, str) and base is not None:
        value = base / value
    if isinstance(value, (Image.Image, bytes, bytearray, Path)):
        return open_image(value, limits, where)
    raise DatasetError(
        f"{where}: the cell is a {type(value).__name__}, not an image",
        "map the column that holds the image (EVAL_COLUMNS)",
    )


def _instruction(value: Any) -> str:
    """An instruction cell (a string, or a list of paraphrases: the first) → text."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return str(value or "").strip()


def _check_columns(spec: DatasetSpec, present: Iterable[str]) -> None:
    """Refuse a dataset that lacks a mapped column, naming the ones it has."""
    have = list(present)
    missing = [c for c in (spec.columns.source, spec.columns.instruction, spec.columns.edited)]
    missing = [c for c in missing if c not in have]
    if missing:
        raise DatasetError(
            f"dataset {spec.name} ({spec.location}) has no column(s) {missing}; it has {have}",
            f"map its columns with EVAL_COLUMNS ['{spec.name}=SOURCE,INSTRUCTION,EDITED']",
        )


def _sample_indices(total: int, n: int, seed: int) -> list[int]:
    """A fixed-seed random sample of ``n`` of ``total`` row indices, in order."""
    return sorted(random.Random(seed).sample(range(total), min(n, total)))


def read_sample(spec: DatasetSpec, n: int, seed: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, row) of a fixed-seed random sample of ``n`` rows of a dataset.

    Every dataset is sampled uniformly: ``n`` of all its row indices, drawn with the seed.
    A local one is read by index; a hub one is streamed in one pass that yields the rows
    at the drawn indices (``_hub_sample``), so no image but the sampled ones is decoded.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(spec.location)
    if is_imagefolder(path):
        rows = read_metadata(path, DatasetError)
        if rows:
            _check_columns(spec, rows[0])
        for i in _sample_indices(len(rows), n, seed):
            yield i, {**rows[i], "_base": path}
        return
    if path.exists():
        ds = _load_local(spec, path)
        _check_columns(spec, ds.column_names)
        for i in _sample_indices(len(ds), n, seed):
            yield i, ds[i]
        return
    if not _is_hub_id(spec.location):
        raise DatasetError(
            f"dataset {spec.name}: {spec.location} is neither a local path nor a hub id",
            "give an existing folder or file, or a Hugging Face id like owner/name",
        )
    try:
        yield from _hub_sample(spec, n, seed)
    except DatasetError:
        raise
    except Exception as err:  # the hub client raises many kinds; all mean "cannot read it"
        known = KNOWN_DATASETS.get(spec.name)
        hint = f" ({known.note})" if known and known.note else ""
        raise DatasetError(
            f"dataset {spec.name}: {spec.location} cannot be read from the Hugging Face hub "
            f"({type(err).__name__}: {str(err)[:200]})",
            "check the id, your network and HF_TOKEN, or download it and pass NAME=PATH" + hint,
        ) from None


def _hub_stream(spec: DatasetSpec, columns: list[str] | None = None) -> Any:
    """The dataset streamed from the hub, image columns left undecoded (the loader decodes
    the sampled ones), optionally only some columns."""
    import datasets

    stream = datasets.load_dataset(spec.location, spec.config, split=spec.split, streaming=True)
    features = getattr(stream, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            stream = stream.cast_column(name, datasets.Image(decode=False))
    if columns:
        stream = stream.select_columns(columns)
    return stream


def _hub_length(spec: DatasetSpec) -> int | None:
    """The split's row count from the dataset's metadata, when the hub records it."""
    import datasets

    try:
        info = datasets.load_dataset_builder(spec.location, spec.config).info
        split = (info.splits or {}).get(spec.split)
        return int(split.num_examples) if split and split.num_examples else None
    except Exception:  # no metadata: count instead
        return None


def pick_rows(
    rows: Iterable[dict[str, Any]], indices: list[int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, row) of the rows at sorted ``indices`` of a stream, in one pass that stops
    after the last one."""
    want = iter(indices)
    target = next(want, None)
    for i, row in enumerate(rows):
        if target is None:
            return
        if i == target:
            yield i, row
            target = next(want, None)


def _hub_sample(spec: DatasetSpec, n: int, seed: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """A uniform fixed-seed sample of a hub dataset, streamed.

    Every row is equally likely: the split's length comes from the hub's metadata (or,
    where it records none, from one pass over the instruction column alone), ``n``
    indices are drawn from all of it without replacement, and one streaming pass yields
    the rows at those indices, images undecoded until the loader reads the chosen ones.
    (A shuffle buffer over the head of the stream would favour the first rows.)
    """
    total = _hub_length(spec)
    if total is None:
        total = sum(1 for _ in _hub_stream(spec, [spec.columns.instruction]))
    first = True
    for i, row in pick_rows(_hub_stream(spec), _sample_indices(total, n, seed)):
        if first:
            _check_columns(spec, row)
            first = False
        yield i, row


def _load_local(spec: DatasetSpec, path: Path) -> Any:
    """A local parquet file or folder, or an ``nhr`` export (a card declaring configs)."""
    import datasets

    try:
        if path.is_dir() and (path / "README.md").is_file():
            return datasets.load_dataset(str(path), spec.config, split=spec.split)
        files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
        if not files:
            raise DatasetError(
                f"dataset {spec.name}: {path} holds no parquet files and no metadata.jsonl",
                "point at a parquet folder, an imagefolder or an nhr export (<run>/dataset)",
            )
        return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"dataset {spec.name}: {path} cannot be loaded ({type(err).__name__}: {err})",
            "check that it is a parquet folder, an imagefolder or an nhr export",
        ) from None


def sample_dataset(
    spec: DatasetSpec,
    n: int,
    seed: int,
    blobs: BlobStore,
    store: Any,
    limits: ImageLimits | None = None,
) -> list[SampleRow]:
    """The stored sample of a dataset, drawing and storing it on first use.

    The sample is one shard of the ``eval_samples`` table, named after the dataset, its
    location, columns, ``n``, ``seed`` and the image limits: a rerun reads it back without
    touching the source, and a changed setting draws a new one. A sampled row whose image
    the loader cannot read or refuses, or whose instruction is empty, is skipped and
    counted by reason (``image_<reason>``, ``no_instruction``) in the shard's metadata and
    in ``stats/eval_samples.json``: one bad image never stops a dataset.
    """
    limits = limits or ImageLimits()
    key = json.dumps(
        [spec.name, spec.location, vars(spec.columns), spec.config, n, seed, repr(limits)]
    )
    shard = hashlib.sha256(key.encode()).hexdigest()[:20]
    stored = store.tables.read_part(SAMPLES_TABLE, shard)
    if stored is not None:
        _record_skips(store, spec.name, store.tables.part_info(SAMPLES_TABLE, shard) or {})
        return from_table(stored, SampleRow)
    rows = []
    skips: Counter[str] = Counter()
    sampled = 0
    c = spec.columns
    for index, row in read_sample(spec, n, seed):
        sampled += 1
        where = f"dataset {spec.name} row {index}"
        base = row.get("_base")
        text = _instruction(row[c.instruction])
        if not text:
            skips["no_instruction"] += 1
            continue
        try:
            source = _image(row[c.source], base, f"{where} {c.source}", limits)
            edited = _image(row[c.edited], base, f"{where} {c.edited}", limits)
        except ImageRefused as err:
            skips[f"image_{err.reason}"] += 1
            continue
        rows.append(
            SampleRow(
                sample_id=f"{spec.name}:{index}",
                dataset=spec.name,
                index=index,
                source_image=blobs.put(source),
                edited_image=blobs.put(edited),
                instruction=text,
            )
        )
    if not sampled:
        raise DatasetError(
            f"dataset {spec.name} ({spec.location}) has no rows",
            "check the split and the location",
        )
    info = {
        "dataset": spec.name,
        "location": spec.location,
        "n": n,
        "seed": seed,
        "sampled": sampled,
        "kept": len(rows),
        "skipped_by_reason": dict(sorted(skips.items())),
    }
    store.tables.write_part(
        SAMPLES_TABLE, shard, to_table(rows, SampleRow), [r.sample_id for r in rows], info
    )
    _record_skips(store, spec.name, info)
    return rows


def _record_skips(store: Any, name: str, info: dict[str, Any]) -> None:
    """Add one dataset's sampled/kept/skipped counts to ``stats/eval_samples.json`` (its
    ``drops_by_reason`` sums every dataset's skips, so ``summary.json`` shows them)."""
    stats = store.read_stats(SAMPLES_TABLE) or {"stage": SAMPLES_TABLE, "datasets": {}}
    stats["datasets"][name] = {
        k: info.get(k) for k in ("location", "sampled", "kept", "skipped_by_reason")
    }
    total: Counter[str] = Counter()
    for d in stats["datasets"].values():
        total.update(d.get("skipped_by_reason") or {})
    stats["rows_in"] = sum(int(d.get("sampled") or 0) for d in stats["datasets"].values())
    stats["rows_out"] = sum(int(d.get("kept") or 0) for d in stats["datasets"].values())
    stats["drops_by_reason"] = dict(sorted(total.items()))
    store.write_stats(SAMPLES_TABLE, stats)


def sample_skips(store: Any, name: str) -> dict[str, int]:
    """The skipped rows of a dataset's stored sample, by reason."""
    stats = store.read_stats(SAMPLES_TABLE) or {}
    return dict((stats.get("datasets", {}).get(name) or {}).get("skipped_by_reason") or {})


class DatasetScoreStage(ValidatorStage):
    """The hard validator over sampled dataset triplets (``eval_scores``)."""

    name = SCORES_TABLE
    input_type = SampleRow


# ---------------------------------------------------------------- scoring
def score_datasets(
    runner: Runner, validator: Any, cfg: Any, specs: list[DatasetSpec]
) -> pd.DataFrame:
    """Sample and score each dataset with the run's validator; one table row per dataset.

    Columns: dataset, samples, skipped (sampled rows whose image could not be read or was
    refused, or with no instruction) and skipped_by_reason, scored (without judge errors),
    adherence, aesthetic, geometric_mean (√ of the two means, the ranking), mean_score
    (mean of each sample's √(adh·aes)), pass_rate (both ≥ THRESHOLD), and the paper's
    Table 3 figures beside.
    """
    import pandas as pd

    store = runner.store
    samples = []
    for spec in specs:
        samples += sample_dataset(
            spec,
            cfg.evaluation.eval_samples,
            cfg.evaluation.eval_sample_seed,
            store.blobs,
            store,
            ImageLimits.from_config(cfg),
        )
    stage = DatasetScoreStage(validator, store.blobs, cfg.validation.threshold)
    runner.run(stage, samples)
    scored = from_table(store.tables.read(SCORES_TABLE, Verdict.schema()), Verdict)
    verdicts = {v.subject_id: v for v in scored}
    rows = []
    for spec in specs:
        mine = [verdicts[s.sample_id] for s in samples if s.dataset == spec.name]
        rows.append(summarize(spec, mine, sample_skips(store, spec.name)))
    table = pd.DataFrame(rows)
    return table.sort_values("geometric_mean", ascending=False, ignore_index=True)


def summarize(
    spec: DatasetSpec, verdicts: list[Any], skipped: dict[str, int] | None = None
) -> dict[str, Any]:
    """One dataset's row of the comparison table, from its verdicts and the sampled rows
    it skipped (by reason)."""
    ok = [v for v in verdicts if v.error is None]
    adh = sum(v.adherence for v in ok) / len(ok) if ok else math.nan
    aes = sum(v.aesthetic for v in ok) / len(ok) if ok else math.nan
    paper = spec.paper
    return {
        "dataset": spec.name,
        "samples": len(verdicts),
        "skipped": sum((skipped or {}).values()),
        "skipped_by_reason": dict(skipped or {}),
        "scored": len(ok),
        "adherence": round(adh, 4),
        "aesthetic": round(aes, 4),
        "geometric_mean": round(math.sqrt(adh * aes), 4) if ok else math.nan,
        "mean_score": round(sum(geometric_score(v.adherence, v.aesthetic) for v in ok) / len(ok), 4)
        if ok
        else math.nan,
        "pass_rate": round(sum(v.passed for v in ok) / len(ok), 4) if ok else math.nan,
        "paper_adherence": paper[0],
        "paper_aesthetic": paper[1],
        "paper_geometric_mean": paper[2],
    }


# ---------------------------------------------------------------- contrast datasets
def write_parquet_dataset(folder: Path, rows: list[tuple[Image.Image, str, Image.Image]]) -> Path:
    """Write (source, instruction, edited) rows as a parquet folder with the nhr columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nhr.store import encode_png

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "source_image": [{"bytes": encode_png(s), "path": None} for s, _, _ in rows],
            "instruction": [t for _, t, _ in rows],
            "edited_image": [{"bytes": encode_png(e), "path": None} for _, _, e in rows],
        }
    )
    pq.write_table(table, folder / "data" / "train-00000.parquet")
    return folder


def write_imagefolder(folder: Path, rows: list[tuple[Image.Image, str, Image.Image]]) -> Path:
    """Write (source, instruction, edited) rows as PNG files and a ``metadata.jsonl``."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (src, text, edit) in enumerate(rows):
        s, e = f"images/{i:06d}_source.png", f"images/{i:06d}_edited.png"
        src.save(folder / s)
        edit.save(folder / e)
        lines.append(json.dumps({"source_image": s, "instruction": text, "edited_image": e}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def build_contrast_datasets(tables: RunTables, out_dir: Path, n: int = 200) -> dict[str, Path]:
    """Two datasets of known worse quality made from a finished run, to check a ranking:

    ``rejected`` (an imagefolder): candidates the hard validator rejected;
    ``shuffled`` (a parquet folder): accepted triplets whose instructions are shuffled
    among them, so each edit answers another image's instruction.
    """
    import pyarrow.compute as pc

    from nhr.records import CandidateRow, TripletRow

    blobs = tables.store.blobs
    rng = random.Random(0)
    verdicts = tables.read("validator", ["subject_id", "passed", "error"])
    scored = verdicts.filter(pc.is_null(verdicts.column("error")))
    failed = scored.column("subject_id").filter(pc.invert(scored.column("passed")))
    cands = tables.read("candidates")
    cands = cands.filter(pc.is_in(cands.column("candidate_id"), value_set=failed.combine_chunks()))
    picks = rng.sample(range(cands.num_rows), min(n, cands.num_rows))
    rejected = from_table(cands.take(picks), CandidateRow)
    every = tables.triplets()
    triplets = from_table(
        every.take(rng.sample(range(every.num_rows), min(n, every.num_rows))), TripletRow
    )
    if len(rejected) < 2 or len(triplets) < 2:
        raise DatasetError(
            f"run {tables.store.root} has too few rejected candidates or triplets to contrast",
            "run the chain with more prompts, or set EVAL_CONTRAST False",
        )
    texts = [t.instruction for t in triplets]
    shift = texts[1:] + texts[:1]  # a derangement: no triplet keeps its own instruction
    out = Path(out_dir)
    return {
        "rejected": write_imagefolder(
            out / "rejected",
            [(blobs.get(c.source_image), c.instruction, blobs.get(c.image)) for c in rejected],
        ),
        "shuffled": write_parquet_dataset(
            out / "shuffled",
            [
                (blobs.get(t.source_image), text, blobs.get(t.edited_image))
                for t, text in zip(triplets, shift, strict=True)
            ],
        ),
    }


def contrast_dir(store: RunStore) -> Path:
    """Where the contrast datasets of an evaluation run go: its ``contrast/`` folder, or
    for a run folder on an object store a local folder named after it (they are read
    back from local disk)."""
    local = store.files.local_path("contrast")
    if local is not None:
        return Path(local)
    digest = hashlib.sha256(str(store.root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"nhr-contrast-{digest}"


def evaluation_specs(
    cfg: Any, evaluated: RunTables | None, out: RunStore | Path | str
) -> list[DatasetSpec]:
    """The datasets a notebook scores: the evaluated run's export (named after its
    folder; a local one) first, then ``EVAL_DATASETS``, then, with ``EVAL_CONTRAST``, the
    two worse datasets made from the evaluated run (written under ``out``: a folder, or
    the evaluation run's ``contrast_dir``)."""
    entries = list(cfg.evaluation.eval_datasets)
    if evaluated is not None:
        export = evaluated.store.files.local_path("dataset")
        if export is not None and Path(export).is_dir():
            if str(export) not in {e.partition("=")[2] for e in entries}:
                entries.insert(0, f"{Path(export).parent.name}={export}")
        if cfg.evaluation.eval_contrast:
            out_dir = contrast_dir(out) if isinstance(out, RunStore) else Path(out)
            made = build_contrast_datasets(evaluated, out_dir, cfg.evaluation.eval_samples)
            entries += [f"{name}={path}" for name, path in made.items()]
    if not entries:
        raise DatasetError(
            "no dataset to score", "set EVAL_DATASETS, or EVAL_RUN_DIR to a run with a dataset"
        )
    return parse_specs(entries, cfg.evaluation.eval_columns)


def write_result(store: RunStore, table: pd.DataFrame, cfg: Any, judge_id: str) -> dict[str, Any]:
    """Write ``plots/dataset_scores.json`` of an evaluation run (through its store: a
    folder or an object store) and return it: the validator, the sample, the ranking,
    each dataset's figures and skips."""
    rows = records(table)
    result = {
        "validator": judge_id,
        "samples_per_dataset": cfg.evaluation.eval_samples,
        "seed": cfg.evaluation.eval_sample_seed,
        "ranking": list(table["dataset"]),
        "datasets": rows,
        "skipped": {row["dataset"]: row["skipped_by_reason"] for row in rows},
    }
    store.write_json("plots/dataset_scores.json", result)
    return result


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A table's rows as JSON-ready dicts (NaN becomes None)."""
    return [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in table.to_dict("records")
    ]


def scored_samples(
    tables: RunTables, specs: list[DatasetSpec], per_dataset: int = 3
) -> tuple[list[SampleRow], dict[str, tuple[float | None, float | None, str]]]:
    """The first few stored samples of each dataset, in ``specs`` order, and their
    scores (adherence, aesthetic, reason) by sample id, for a sample grid."""

    store = tables.store.tables
    samples = from_table(store.read(SAMPLES_TABLE, SampleRow.schema()), SampleRow)
    verdicts = from_table(store.read(SCORES_TABLE, Verdict.schema()), Verdict)
    scores = {v.subject_id: (v.adherence, v.aesthetic, v.reason) for v in verdicts}
    shown = []
    for spec in specs:
        mine = sorted((s for s in samples if s.dataset == spec.name), key=lambda s: s.index)
        shown += mine[:per_dataset]
    return shown, scores
