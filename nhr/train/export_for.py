"""``nhr export-for diffsynth|musubi|ai-toolkit RUN_DIR OUT``: an export's training
triplets laid out as another trainer reads them, image files on disk (the export's own
bytes, not re-encoded) named by triplet id, and ``OUT/README.md`` with the command.

- ``diffsynth`` (DiffSynth-Studio, e.g. Qwen-Image-Edit LoRA): ``metadata.csv`` with
  ``image`` (the edited image, the target), ``edit_image`` (the source) and ``prompt``,
  paths relative to OUT (``--dataset_base_path OUT --dataset_metadata_path
  OUT/metadata.csv --data_file_keys image,edit_image --extra_inputs edit_image``).
- ``musubi`` (musubi-tuner): ``metadata.jsonl``, one ``{"image_path", "control_path",
  "caption"}`` a line (absolute paths; the control image is the source), and
  ``dataset_config.toml`` whose ``[[datasets]]`` names it as ``image_jsonl_file``.
- ``ai-toolkit``: ``target/<id>.<ext>`` with ``target/<id>.txt`` captions and
  ``control/<id>.<ext>`` under the same file names, and ``dataset.yaml``, the
  ``datasets:`` entry of its config (``folder_path``, ``control_path``, ``caption_ext``).

Rows stream from the export a few at a time, so OUT can be as large as the export.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nhr.errors import ConfigError
from nhr.train.data import TrainDataError, dataset_folder, iter_rows, split_files

COLUMNS = ("triplet_id", "source_image", "edited_image", "instruction")


def _ext(data: bytes) -> str:
    """The file extension of encoded image bytes (their magic number)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def _file(folder: Path, stem: str, cell: dict[str, Any] | None, key: str, column: str) -> Path:
    """Write an embedded image as ``folder/stem.<ext>`` (PNG when its format is rare)."""
    data = (cell or {}).get("bytes")
    if not data:
        raise TrainDataError(
            f"triplet {key}: {column} has no embedded image bytes", "re-export the run"
        )
    ext = _ext(data)
    if not ext:
        from PIL import Image

        buf = io.BytesIO()
        with Image.open(io.BytesIO(data)) as img:
            img.convert("RGB").save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    path = folder / f"{stem}.{ext}"
    path.write_bytes(data)
    return path


def _stem(key: str) -> str:
    """A file name of a triplet id (anything but letters, digits, - and _ becomes _)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _rows(data: Path) -> Iterator[dict[str, Any]]:
    return iter_rows(split_files(data, "train"), COLUMNS)


def _diffsynth(data: Path, out: Path) -> int:
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "edit_image").mkdir(exist_ok=True)
    n = 0
    with open(out / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "prompt", "edit_image"])
        writer.writeheader()
        for row in _rows(data):
            key, stem = row["triplet_id"], _stem(row["triplet_id"])
            target = _file(out / "image", stem, row["edited_image"], key, "edited_image")
            source = _file(out / "edit_image", stem, row["source_image"], key, "source_image")
            writer.writerow(
                {
                    "image": target.relative_to(out).as_posix(),
                    "prompt": row["instruction"],
                    "edit_image": source.relative_to(out).as_posix(),
                }
            )
            n += 1
    (out / "README.md").write_text(
        "# DiffSynth-Studio layout of an nhr export\n\n"
        "`metadata.csv`: `image` (the edited image, the target), `prompt` (the "
        "instruction), `edit_image` (the source), paths relative to this folder.\n\n"
        "```bash\naccelerate launch examples/qwen_image/model_training/train.py \\\n"
        f"  --dataset_base_path {out} \\\n"
        f"  --dataset_metadata_path {out}/metadata.csv \\\n"
        '  --data_file_keys "image,edit_image" --extra_inputs "edit_image" \\\n'
        "  --max_pixels 1048576 \\\n"
        '  --model_id_with_origin_paths "Qwen/Qwen-Image-Edit:transformer/'
        "diffusion_pytorch_model*.safetensors,Qwen/Qwen-Image:text_encoder/model*.safetensors,"
        'Qwen/Qwen-Image:vae/diffusion_pytorch_model.safetensors" \\\n'
        '  --lora_base_model "dit" --lora_rank 32 --learning_rate 1e-4 --num_epochs 5 \\\n'
        "  --output_path ./models/train/Qwen-Image-Edit_nhr_lora --use_gradient_checkpointing\n"
        "```\n"
    )
    return n


def _musubi(data: Path, out: Path) -> int:
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "control").mkdir(exist_ok=True)
    out = out.resolve()
    n = 0
    with open(out / "metadata.jsonl", "w") as fh:
        for row in _rows(data):
            key, stem = row["triplet_id"], _stem(row["triplet_id"])
            target = _file(out / "image", stem, row["edited_image"], key, "edited_image")
            source = _file(out / "control", stem, row["source_image"], key, "source_image")
            rec = {"image_path": str(target), "control_path": str(source)}
            fh.write(json.dumps({**rec, "caption": row["instruction"]}) + "\n")
            n += 1
    (out / "dataset_config.toml").write_text(
        "# musubi-tuner dataset config of an nhr export (the control image is the source)\n"
        "[general]\n"
        "resolution = [1024, 1024]\n"
        "batch_size = 1\n"
        "enable_bucket = true\n"
        "bucket_no_upscale = false\n\n"
        "[[datasets]]\n"
        f"image_jsonl_file = {json.dumps(str(out / 'metadata.jsonl'))}\n"
        f"cache_directory = {json.dumps(str(out / 'cache'))}\n"
    )
    (out / "README.md").write_text(
        "# musubi-tuner layout of an nhr export\n\n"
        "`metadata.jsonl`: `image_path` (the edited image), `control_path` (the source), "
        "`caption` (the instruction); `dataset_config.toml` names it.\n\n"
        "```bash\n"
        "python src/musubi_tuner/qwen_image_cache_latents.py --dataset_config "
        f"{out}/dataset_config.toml --vae VAE --edit\n"
        "python src/musubi_tuner/qwen_image_cache_text_encoder_outputs.py --dataset_config "
        f"{out}/dataset_config.toml --text_encoder TEXT_ENCODER --edit --batch_size 1\n"
        "accelerate launch --mixed_precision bf16 src/musubi_tuner/qwen_image_train_network.py "
        f"--dit DIT --vae VAE --text_encoder TEXT_ENCODER --edit --dataset_config "
        f"{out}/dataset_config.toml --network_module networks.lora_qwen_image "
        "--network_dim 16 --learning_rate 5e-5 --timestep_sampling shift --weighting_scheme "
        "none --gradient_checkpointing --sdpa --output_dir OUT --output_name nhr-lora\n"
        "```\n"
    )
    return n


def _ai_toolkit(data: Path, out: Path) -> int:
    (out / "target").mkdir(parents=True, exist_ok=True)
    (out / "control").mkdir(exist_ok=True)
    out = out.resolve()
    n = 0
    for row in _rows(data):
        key, stem = row["triplet_id"], _stem(row["triplet_id"])
        target = _file(out / "target", stem, row["edited_image"], key, "edited_image")
        control = _file(out / "control", stem, row["source_image"], key, "source_image")
        if control.name != target.name:  # the same file name, extension included
            control.rename(out / "control" / target.name)
        (out / "target" / f"{stem}.txt").write_text(row["instruction"])
        n += 1
    (out / "dataset.yaml").write_text(
        "# the datasets: entry of an ai-toolkit config (e.g. its FLUX.1 Kontext LoRA example)\n"
        "datasets:\n"
        f"  - folder_path: {json.dumps(str(out / 'target'))}\n"
        f"    control_path: {json.dumps(str(out / 'control'))}\n"
        '    caption_ext: "txt"\n'
        "    caption_dropout_rate: 0.05\n"
        "    cache_latents_to_disk: true\n"
        "    resolution: [512, 768, 1024]\n"
    )
    (out / "README.md").write_text(
        "# ai-toolkit layout of an nhr export\n\n"
        "`target/` holds the edited images with `.txt` captions (the instructions), "
        "`control/` the sources under the same file names. Paste `dataset.yaml` into the "
        "`datasets:` of a config such as ai-toolkit's "
        "`config/examples/train_lora_flux_kontext_24gb.yaml`, then:\n\n"
        "```bash\npython run.py config/your_kontext_lora.yaml\n```\n"
    )
    return n


FORMATS: dict[str, Callable[[Path, Path], int]] = {
    "diffsynth": _diffsynth,
    "musubi": _musubi,
    "ai-toolkit": _ai_toolkit,
}


def export_for(fmt: str, run_dir: str | Path, out: str | Path) -> int:
    """Write the training triplets of ``run_dir`` (a run folder, an export folder or a hub
    dataset id) in ``fmt``'s layout under ``out``; returns the triplets written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown trainer layout {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty", "give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return FORMATS[fmt](dataset_folder(str(run_dir), run_dir), out)
