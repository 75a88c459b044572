"""LoRA fine-tuning (``nhr.train``) of the tiny random FLUX.1 Kontext on tiny exports:
the loss falls when overfitting, a SIGKILLed run resumes to the same LoRA as an
uninterrupted one, the LoRA loads into the pipeline and changes its output, and the
data loader streams (peak memory independent of the dataset's size)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nhr.backends.tiny_diffusers import build_tiny, write_tiny_models
from nhr.config import PipelineConfig
from nhr.train import train
from nhr.train.data import count_rows, iter_triplets, split_files, to_tensor
from nhr.train.loop import add_lora, batch_plan
from nhr.train.trainers import KontextTrainer
from tests.train_fixtures import triplet_images, write_export

ROOT = Path(__file__).resolve().parent.parent
WIDE = ["to_q", "to_k", "to_v", "to_out.0", "proj_out", "proj_mlp", "ff.net.0.proj", "ff.net.2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine more threads only wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models and an export of 8 triplets in two buckets (square and 2:1)."""
    root = tmp_path_factory.mktemp("train")
    tiny = write_tiny_models(root / "tiny")
    export = write_export(root / "export", 4, (64, 64), shard_rows=3)
    extra = write_export(root / "wide", 4, (96, 48), seed=1)
    for p in sorted((extra / "data").glob("*.parquet")):
        p.rename(export / "data" / f"train-fp-wide-{p.name}")
    return {"root": root, "kontext": tiny["flux-kontext"], "export": export}


def params(world, **extra) -> dict:
    return {
        "SEED": 3,
        "TRAIN_DATA": str(world["export"]),
        "TRAIN_MODEL": str(world["kontext"]),
        "TRAIN_STEPS": 6,
        "TRAIN_BATCH": 2,
        "TRAIN_LR": 5e-3,
        "TRAIN_RANK": 4,
        "TRAIN_LORA_LAYERS": WIDE,
        "TRAIN_MAX_AREA": 64 * 64,
        "TRAIN_MAX_TOKENS": 16,
        "TRAIN_CHECKPOINT_STEPS": 2,
        "TRAIN_SAMPLE_STEPS": 3,
        "TRAIN_SAMPLE_ITEMS": 2,
        "TRAIN_SAMPLE_INFERENCE_STEPS": 2,
        "DIFFUSERS_DEVICE": "cpu",
        **extra,
    }


def test_loss_on_a_fixed_batch_falls_by_half_overfitting_8_triplets():
    import torch

    pipe = build_tiny("flux-kontext")
    trainer = KontextTrainer(max_tokens=16)
    ims = [triplet_images(i, (64, 64)) for i in range(8)]
    batch = trainer.encode(
        pipe,
        to_tensor([s for s, _, _ in ims], (64, 64)),
        to_tensor([e for _, e, _ in ims], (64, 64)),
        [t for _, _, t in ims],
    )
    model = pipe.transformer
    opt = torch.optim.AdamW(add_lora(model, 8, 8, WIDE, seed=0), lr=2e-2)

    def loss() -> torch.Tensor:  # the same noise and σ every time: a fixed batch
        return trainer.loss(pipe, model, batch, torch.Generator().manual_seed(0))

    with torch.no_grad():
        before = float(loss())
    for _ in range(15):
        loss().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = float(loss())
    assert after <= 0.5 * before, (before, after)


def test_batch_plan_is_one_bucket_a_batch_and_fixed_by_seed():
    buckets = [(64, 64)] * 5 + [(96, 48)] * 4
    plan = batch_plan(buckets, 2, seed=1, epoch=0)
    assert len(plan) == 4  # 2 + 2 batches; one square item waits for a later epoch
    assert all(len({buckets[i] for i in b}) == 1 and len(b) == 2 for b in plan)
    assert plan == batch_plan(buckets, 2, seed=1, epoch=0)
    assert plan != batch_plan(buckets, 2, seed=1, epoch=1) or plan != batch_plan(
        buckets, 2, seed=2, epoch=0
    )


def test_sigkill_then_rerun_gives_the_uninterrupted_lora(world):
    from safetensors.torch import load_file

    whole = world["root"] / "whole"
    cfg = PipelineConfig.from_params(params(world))
    first = train(cfg, whole, progress=False)
    assert first.steps == 6 and len(first.losses) == 6 and first.cached_now == 8
    folder = whole / "train"
    for rel in ("lora/pytorch_lora_weights.safetensors", "lora/README.md", "plots/loss.png"):
        assert (folder / rel).is_file(), rel
    assert sorted(p.name for p in (folder / "samples").glob("step-*.png")) == [
        "step-0000000.png",
        "step-0000003.png",
        "step-0000006.png",
    ]
    card = (folder / "lora" / "README.md").read_text()
    assert f"base_model: {world['kontext']}" in card and str(world["export"]) in card

    # the same training in a process killed with SIGKILL at a random step, then rerun
    killed = world["root"] / "killed"
    cmd = [sys.executable, "-m", "nhr.train", str(killed), "--no-progress"]
    for k, v in params(world).items():
        cmd += ["-p", k, json.dumps(v)]
    kill_at = int(np.random.default_rng().integers(3, 6))  # after step 3, 4 or 5
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    log = killed / "train" / "loss.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train" / "lora").exists()
    again = train(PipelineConfig.from_params(params(world)), killed, progress=False)
    assert again.resumed_from in (2, 4) and again.resumed_from <= kill_at
    assert again.cached_now == 0  # the cache survived the kill
    steps = [
        json.loads(x)["step"] for x in (killed / "train" / "loss.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(6))  # the curve continues, each step once
    np.testing.assert_allclose(again.losses, first.losses, rtol=1e-4, atol=1e-6)
    done = killed / "train" / "lora" / "pytorch_lora_weights.safetensors"
    stamp = done.stat().st_mtime_ns
    finished = train(PipelineConfig.from_params(params(world)), killed, progress=False)
    assert finished.resumed_from == 6 and done.stat().st_mtime_ns == stamp  # nothing redone
    a = load_file(str(folder / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(killed / "train" / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-6)


def test_saved_lora_loads_into_the_pipeline_and_changes_its_output(world):
    import torch
    from diffusers import FluxKontextPipeline
    from PIL import Image

    lora = world["root"] / "whole" / "train" / "lora"
    if not lora.is_dir():
        pytest.skip("needs the training of the previous test")
    img = Image.fromarray(np.full((64, 64, 3), 120, np.uint8))

    def run(pipe) -> np.ndarray:
        out = pipe(
            image=img,
            prompt="make the middle square red",
            width=64,
            height=64,
            max_area=64 * 64,
            _auto_resize=False,
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return out.images[0]

    pipe = FluxKontextPipeline.from_pretrained(world["kontext"]).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    base = run(pipe)
    pipe.load_lora_weights(lora)
    tuned = run(pipe)
    assert np.abs(base - tuned).mean() > 1e-3


def test_reader_takes_the_train_split_and_streams_rows(world):
    files = split_files(world["export"])
    assert count_rows(files) == 8
    seen = [t.key for t in iter_triplets(files, start=2, stop=6)]
    assert seen == ["t000002", "t000003", "t000000", "t000001"]  # across shard files


@pytest.mark.slow
def test_nhr_run_finetune_config_trains_into_its_run_folder(world, tmp_path):
    """configs/finetune.yaml through papermill on a tiny export (the demo's stands in;
    about a minute on a busy 2-core machine, hence slow like the tiny-diffusers run)."""
    import yaml

    from tests.conftest import nhr_cli

    config = yaml.safe_load((ROOT / "configs" / "finetune.yaml").read_text())
    config["tiny_models"] = str(world["root"] / "tiny")  # already written: nothing to do
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    overrides = {
        "TRAIN_DATA": str(world["export"]),
        "TRAIN_MODEL": str(world["kontext"]),
        "TRAIN_STEPS": 4,
        "TRAIN_BATCH": 2,
        "TRAIN_MAX_TOKENS": 16,
        "TRAIN_CHECKPOINT_STEPS": 2,
        "TRAIN_SAMPLE_STEPS": 2,
        "TRAIN_SAMPLE_ITEMS": 2,
    }
    args = [a for k, v in overrides.items() for a in ("-p", k, json.dumps(v))]
    proc = nhr_cli("run", str(path), "--run-dir", str(run), "--no-progress", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["triplets"] == 8
    assert sorted(summary["buckets"]) == [[64, 64], [96, 48]]
    assert (run / "train" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "notebooks" / "13_finetune.ipynb").is_file()
    assert sorted(p.name for p in (run / "train" / "checkpoints").iterdir()) == [
        "step-0000002",
        "step-0000004",
    ]


def test_reader_peak_memory_does_not_grow_with_10x_the_rows(tmp_path):
    """The trainer's reader over N and 10×N rows (shards of the export's size): the
    same peak; reading every shard at once, the contrast, grows with the data."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_train_data import measure, write_noise_export

    peaks, sizes = {}, {}
    for n in (20, 400):
        sizes[n] = write_noise_export(tmp_path / str(n), n, 192, shard_rows=10) / 2**20
        # the least of two reads: one read's peak strays by up to ~10 MB (allocator noise)
        streams = [measure(tmp_path / str(n), "stream") for _ in range(2)]
        assert all(r["rows"] == n for r in streams)
        peaks[n] = {
            "stream": min(r["peak_mb"] for r in streams),
            "whole": measure(tmp_path / str(n), "whole")["peak_mb"],
        }
    grown = sizes[400] - sizes[20]  # about 80 MB more data
    assert peaks[400]["stream"] - peaks[20]["stream"] < 0.3 * grown
    assert peaks[400]["whole"] - peaks[20]["whole"] > 0.8 * grown
