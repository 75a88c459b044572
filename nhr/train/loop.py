"""The training loop: settings, the data order, checkpoints, samples, the loss curve and
the saved LoRA, for any ``EditorTrainer``.

Everything lands in ``<run>/train/``: ``cache/`` (``nhr.train.cache``), ``loss.jsonl``
(one line a step), ``checkpoints/step-NNNNNNN/`` (the LoRA's trainable tensors, the
optimizer state, the step), ``samples/step-NNNNNNN.png`` (source | base | this step |
target for fixed items), ``plots/loss.png``, and ``lora/`` (diffusers'
``pytorch_lora_weights.safetensors`` with a model card).

Order and randomness depend on the step alone, so a run killed at any point and rerun
continues from its last checkpoint to the same LoRA as a run never stopped: step ``s``
trains the ``s``-th batch of a plan made from the seed (each epoch shuffles the items
within their buckets, cuts batches of one bucket, and shuffles the batches), and draws
its noise and σ from a generator seeded with (seed, s, process).
Several GPUs: ``accelerate launch -m nhr.train RUN_DIR`` runs data parallel; each
process trains its slice of the step's global batch (TRAIN_BATCH rows per process).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nhr.config import PipelineConfig
from nhr.errors import BackendError
from nhr.resolutions import resolution_set
from nhr.train.cache import LatentCache
from nhr.train.data import count_rows, dataset_folder, iter_triplets, split_files
from nhr.train.trainers import EditorTrainer, trainer_for

KEEP_CHECKPOINTS = 2


@dataclass
class TrainResult:
    """What a training run left: its folder, LoRA folder, steps and losses."""

    folder: Path
    lora: Path
    steps: int
    losses: list[float]
    seconds_per_step: float
    resumed_from: int
    cached_now: int


def batch_plan(
    buckets: list[tuple[int, int]], batch: int, seed: int, epoch: int
) -> list[list[int]]:
    """One epoch's batches (item indices, one bucket each, ``batch`` items; a bucket's
    remainder is left out) in the order that epoch trains them."""
    rng = np.random.default_rng([seed, epoch])
    groups: dict[tuple[int, int], list[int]] = {}
    for i, b in enumerate(buckets):
        groups.setdefault(tuple(b), []).append(i)
    out: list[list[int]] = []
    for key in sorted(groups):
        idx = rng.permutation(groups[key]).tolist()
        out += [idx[i : i + batch] for i in range(0, len(idx) - batch + 1, batch)]
    order = rng.permutation(len(out)).tolist()
    return [out[i] for i in order]


class Plan:
    """The global batch of every step (epochs after one another)."""

    def __init__(self, buckets: list[tuple[int, int]], batch: int, seed: int) -> None:
        self.buckets, self.batch, self.seed = buckets, batch, seed
        self._epoch, self._batches = -1, []
        self.per_epoch = len(batch_plan(buckets, batch, seed, 0))
        if self.per_epoch == 0:
            raise BackendError(
                f"no bucket holds {batch} triplets, so no batch can be made",
                "lower TRAIN_BATCH (per device) or train on more triplets",
            )

    def step(self, s: int) -> list[int]:
        """Item indices of step ``s``'s global batch."""
        epoch, at = divmod(s, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = (
                epoch,
                batch_plan(self.buckets, self.batch, self.seed, epoch),
            )
        return self._batches[at]


def _fingerprint(cfg: PipelineConfig, files: list[Path], rows: int) -> dict[str, Any]:
    """What the cache depends on: the data files, the model and the encoding sizes."""
    t = cfg.train
    return {
        "files": [f.name for f in files],
        "rows": rows,
        "base": t.train_base,
        "model": t.train_model,
        "max_area": t.train_max_area,
        "buckets": t.train_buckets,
        "max_tokens": t.train_max_tokens,
    }


def _load_pipe(trainer: EditorTrainer, cfg: PipelineConfig, device: str, dtype: Any) -> Any:
    """The editor's pipeline through the diffusers runtime (clear load errors)."""
    import diffusers

    from nhr.backends.diffusers_runtime import DiffusersOptions, load_pipeline

    opts = DiffusersOptions(device=device, dtype=str(dtype).replace("torch.", ""))
    model = cfg.train.train_model or trainer.default_model
    pipe = load_pipeline(getattr(diffusers, trainer.pipeline_class), model, opts, "trained")
    return pipe


def _lora_state(transformer: Any) -> dict[str, Any]:
    """The LoRA tensors of a peft-injected transformer (diffusers' key names)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def add_lora(
    transformer: Any, rank: int, alpha: float, layers: tuple[str, ...] | list[str], seed: int
) -> list[Any]:
    """Freeze ``transformer`` and inject a LoRA (peft) into its ``layers``; the LoRA's
    down matrices start from ``seed`` (up matrices at zero: the base model's output),
    trained in float32 whatever the model's dtype. Returns the trainable parameters."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    transformer.requires_grad_(False)
    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha or rank,
            init_lora_weights="gaussian",
            target_modules=list(layers),
        )
    )
    cast_training_params(transformer, dtype=torch.float32)
    return [p for p in transformer.parameters() if p.requires_grad]


def _save_checkpoint(folder: Path, step: int, transformer: Any, optimizer: Any) -> None:
    """Trainable tensors, optimizer state and step, written whole or not at all."""
    import torch
    from safetensors.torch import save_file

    ckpt = folder / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    tmp = ckpt / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    params = {
        n: p.detach().cpu().contiguous()
        for n, p in transformer.named_parameters()
        if p.requires_grad
    }
    save_file(params, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    os.replace(tmp, ckpt / f"step-{step:07d}")
    for old in sorted(ckpt.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    done = sorted((folder / "checkpoints").glob("step-*"))
    return done[-1] if done else None


def _restore(path: Path, transformer: Any, optimizer: Any) -> int:
    """Load a checkpoint into the model and optimizer; returns its step."""
    import torch
    from safetensors.torch import load_file

    params = load_file(str(path / "trainable.safetensors"))
    named = dict(transformer.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            named[name].copy_(value.to(named[name].device, named[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(json.loads((path / "state.json").read_text())["step"])


def _read_losses(path: Path, upto: int) -> list[float]:
    """Losses of steps ``< upto`` from ``loss.jsonl``; the file is cut back to them."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] < upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return [r["loss"] for r in kept]


def write_model_card(folder: Path, cfg: PipelineConfig, data: str, steps: int, base: str) -> Path:
    """The LoRA's ``README.md``: base model, dataset, settings, and how to load it."""
    t = cfg.train
    settings = {k.upper(): v for k, v in t.model_dump().items()}
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: diffusers",
        "license: other",
        "tags: [lora, image-editing, nhr, text-to-image, diffusers]",
        "---",
        "",
        f"# LoRA of {base} trained by nhr",
        "",
        f"Trained on the triplets of `{data}` (the `train` split of its `default` config) "
        f"with nhr's LoRA trainer (`nhr.train`, {t.train_base}) for {steps} steps.",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{base}")',
        'pipe.load_lora_weights("PATH_TO_THIS_FOLDER")',
        "```",
        "",
        "Mine or benchmark with it: `EDITOR_LORA: PATH_TO_THIS_FOLDER` "
        f"(or `EDITOR_MODEL: {base}+lora=PATH_TO_THIS_FOLDER@1`).",
        "",
        "## Settings",
        "",
        *[f"- `{k}`: `{v}`" for k, v in settings.items()],
        f"- `SEED`: `{cfg.run.seed}`",
        "",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path


def _sample_items(folder: Path, files: list[Path], n: int, size_of: Callable) -> list[tuple]:
    """The fixed items of the sample grids: the first ``n`` triplets (test split when
    the export has one), at their training size; kept in ``samples/items/``."""
    from PIL import Image

    items_dir = folder / "samples" / "items"
    meta = items_dir / "items.json"
    if not meta.is_file():
        items_dir.mkdir(parents=True, exist_ok=True)
        recs = []
        for i, t in enumerate(iter_triplets(files, 0, n)):
            from nhr.train.data import fit_crop

            size = size_of(t.source.size)
            fit_crop(t.source, size).save(items_dir / f"{i}-source.png")
            fit_crop(t.edited, size).save(items_dir / f"{i}-target.png")
            recs.append({"key": t.key, "instruction": t.instruction})
        meta.write_text(json.dumps(recs))
    recs = json.loads(meta.read_text())
    return [
        (
            Image.open(items_dir / f"{i}-source.png").convert("RGB"),
            r["instruction"],
            Image.open(items_dir / f"{i}-target.png").convert("RGB"),
        )
        for i, r in enumerate(recs)
    ]


def _grid(rows: list[list[Any]]) -> Any:
    """Images in a grid, one list a row (cells padded to the largest)."""
    from PIL import Image

    cw = max(im.width for r in rows for im in r)
    ch = max(im.height for r in rows for im in r)
    grid = Image.new("RGB", (cw * max(len(r) for r in rows), ch * len(rows)), "white")
    for y, r in enumerate(rows):
        for x, im in enumerate(r):
            grid.paste(im, (x * cw, y * ch))
    return grid


def train(
    cfg: PipelineConfig,
    run_dir: Path | str,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) the LoRA TRAIN_* describe on TRAIN_DATA into ``run_dir/train``.

    ``stop_after`` ends the call after that many steps of this call (a test's stand-in
    for a killed run: nothing is saved beyond the checkpoints already written).
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    t = cfg.train
    folder = Path(run_dir) / "train"
    folder.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and cfg.diffusers.diffusers_device != "cpu"
    precision = t.train_precision if t.train_precision != "auto" else ("bf16" if cuda else "no")
    acc = Accelerator(mixed_precision=precision, cpu=not cuda)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    trainer = trainer_for(cfg)
    data = dataset_folder(t.train_data, run_dir)
    files = split_files(data, "train")
    rows = count_rows(files)
    if rows == 0:
        raise BackendError(f"the export in {data} has no training triplets", "mine more first")
    buckets = resolution_set(t.train_buckets)
    from nhr.train.data import bucket_size

    def size_of(size: tuple[int, int]) -> tuple[int, int]:
        return bucket_size(size, buckets, t.train_max_area, trainer.multiple)

    pipe = _load_pipe(trainer, cfg, str(acc.device), dtype)
    cache = LatentCache(folder / "cache")
    cached_now = 0
    if acc.is_main_process:
        cache.check(_fingerprint(cfg, files, rows))
        bar = tqdm(total=rows, desc="cache latents", disable=not progress)
        cached_now = cache.build(
            files, rows, size_of, lambda s, e, i: trainer.encode(pipe, s, e, i), bar.update
        )
        bar.close()
    acc.wait_for_everyone()
    items = cache.items()
    world, rank = acc.num_processes, acc.process_index
    plan = Plan([it.bucket for it in items], t.train_batch * world, cfg.run.seed)

    transformer = pipe.transformer
    transformer.requires_grad_(False)
    for module in (
        pipe.vae,
        getattr(pipe, "text_encoder", None),
        getattr(pipe, "text_encoder_2", None),
    ):
        if module is not None:
            module.requires_grad_(False)
    add_lora(transformer, t.train_rank, t.train_alpha, t.train_lora_layers, cfg.run.seed)
    if t.train_gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.train_lr, weight_decay=1e-4)
    start = 0
    last = _latest_checkpoint(folder)
    if last is not None:
        start = _restore(last, transformer, optimizer)
    model, optimizer = acc.prepare(transformer, optimizer)
    losses = _read_losses(folder / "loss.jsonl", start) if acc.is_main_process else []

    samples = _sample_items(folder, _sample_files(data, files), t.train_sample_items, size_of)
    sample_steps = t.train_sample_inference_steps

    def draw_samples(step: int) -> None:
        if not samples or not acc.is_main_process:
            return
        model.eval()
        edits = trainer.sample(
            pipe, [s[0] for s in samples], [s[1] for s in samples], sample_steps, cfg.run.seed
        )
        model.train()
        names = [f"step-{step:07d}.png"]
        base_dir = folder / "samples" / "base"
        if step == 0 and not base_dir.is_dir():
            base_dir.mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(edits):
                im.save(base_dir / f"{i}.png")
        from PIL import Image

        base = (
            [Image.open(base_dir / f"{i}.png").convert("RGB") for i in range(len(edits))]
            if base_dir.is_dir()
            else edits
        )
        _grid([[s[0], b, e, s[2]] for s, b, e in zip(samples, base, edits, strict=True)]).save(
            folder / "samples" / names[0]
        )

    if start == 0 and not (folder / "samples" / "base").is_dir():
        draw_samples(0)
    log = open(folder / "loss.jsonl", "a") if acc.is_main_process else None
    bar = tqdm(total=t.train_steps, initial=start, desc="train", disable=not progress)
    model.train()
    t0, done_now = time.perf_counter(), 0
    step = start
    try:
        while step < t.train_steps:
            if stop_after is not None and done_now >= stop_after:
                break
            idx = plan.step(step)[rank * t.train_batch : (rank + 1) * t.train_batch]
            batch = cache.batch(idx)
            gen = torch.Generator("cpu").manual_seed(cfg.run.seed * 1_000_003 + step * 131 + rank)
            with acc.autocast():
                loss = trainer.loss(pipe, model, batch, gen)
            acc.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = float(acc.gather(loss.detach().reshape(1)).mean())
            step += 1
            done_now += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if log is not None:
                losses.append(value)
                log.write(json.dumps({"step": step - 1, "loss": value}) + "\n")
                log.flush()
            if step % t.train_checkpoint_steps == 0 or step == t.train_steps:
                if acc.is_main_process:
                    _save_checkpoint(folder, step, acc.unwrap_model(model), optimizer)
                    _plot_losses(losses, folder)
                acc.wait_for_everyone()
            if t.train_sample_steps and step % t.train_sample_steps == 0:
                draw_samples(step)
    finally:
        bar.close()
        if log is not None:
            log.close()
    seconds = (time.perf_counter() - t0) / max(1, done_now)
    lora_dir = folder / "lora"
    finished_before = done_now == 0 and (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    if step >= t.train_steps and acc.is_main_process and not finished_before:
        if not t.train_sample_steps or step % t.train_sample_steps:
            draw_samples(step)
        _plot_losses(losses, folder)
        base = cfg.train.train_model or trainer.default_model
        type(pipe).save_lora_weights(
            lora_dir, transformer_lora_layers=_lora_state(acc.unwrap_model(model))
        )
        write_model_card(lora_dir, cfg, str(t.train_data or run_dir), step, base)
        (folder / "summary.json").write_text(
            json.dumps(
                {
                    "steps": step,
                    "final_loss": losses[-1] if losses else None,
                    "first_loss": losses[0] if losses else None,
                    "triplets": rows,
                    "buckets": [list(b) for b in sorted({it.bucket for it in items})],
                    "lora": str(lora_dir),
                    "seconds_per_step": seconds,
                    "device": str(acc.device),
                    "precision": precision,
                    "processes": world,
                },
                indent=2,
            )
        )
    acc.wait_for_everyone()
    return TrainResult(folder, lora_dir, step, losses, seconds, start, cached_now)


def _sample_files(data: Path, train_files: list[Path]) -> list[Path]:
    """The test split's files when the export has one, else the training files."""
    test = split_files(data, "test")
    return test if set(test) != set(train_files) else train_files


def _plot_losses(losses: list[float], folder: Path) -> None:
    """``plots/loss.png``: the loss of every step and its running mean."""
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    steps = np.arange(len(losses))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    k = max(1, len(losses) // 20)
    mean = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1 :], mean, lw=1.8, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.legend()
    fig.tight_layout()
    (folder / "plots").mkdir(exist_ok=True)
    fig.savefig(folder / "plots" / "loss.png", dpi=100)
    plt.close(fig)
