"""GPU check of the diffusers backends: CUDA tests, the editor's speed levers (≤ 8 min, offline).

1. Runs the diffusers tests (tests/test_diffusers_*.py) with CUDA visible, so the
   `gpu`-marked ones run too.
2. (``--bench``) Measures the FLUX Kontext transformer at 1024² with random bf16 weights and reduced
   depth (the real model: 19 double + 38 single blocks; here 2 + 4 by default): one
   denoising step for M seeds batched vs one call per seed, eager vs ``torch.compile``.
   It prints images per second, achieved TFLOP/s and the share of the GPU's bf16 peak
   (model FLOPs per step from the transformer's config), and projects the seconds of a
   full-depth 28-step edit at the same efficiency.
3. (``--bench``) Bucketed, batched calls: one denoising step at each of a few Kontext trained
   resolutions (``--buckets``, about 1024² each) for each call size in ``--batches``,
   eager and compiled (one compile per bucket and call size, as a run with buckets has),
   and the headline figures: seconds per 1024² 28-step full-depth edit and the share of
   bf16 peak, at the fullest call, with and without compile.

4. The editor's speed levers (``levers``, the default section; ``--bench`` adds 2–3):
   full-depth Kontext with random bf16 weights at 1024², one batched call of
   ``--lever-batch`` images (DIFFUSERS_MAX_BATCH), 28 steps: seconds per edit, share of
   bf16 peak and drift from eager (mean |final latents − eager's|, same seed and inputs)
   for eager, regional compile, + fp8, + each cache hook, + FA3 (MagCache with diffusers'
   FLUX ratios: random weights have none of their own). Sets this machine cannot run say
   why. ``--budget`` (seconds for the whole check, 460 by default) keeps it within 8
   minutes on one H100: a set that would start too late to finish is left out, saying so;
   the sets run in order of what they tell (caches before FA3, which is rarely installed).

5. One LoRA training step of the Kontext transformer at 1024² (``--train-size``): random
   weights at full size (19 + 38 blocks; ``--train-depth reduced`` uses the depth above),
   frozen in bf16, a rank-16 LoRA (``--train-rank``) on the attention projections in
   float32 (``nhr.train.loop.add_lora``), AdamW, bf16 autocast, gradient checkpointing
   (``--no-train-checkpointing`` to turn it off): seconds per step, images per second and
   peak GPU memory.

    python scripts/gpu_check.py                     # on a CUDA machine
    python scripts/gpu_check.py --device cpu --tiny # dry run of the same code on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START = time.perf_counter()  # the check's clock, for --budget
FULL_DEPTH = (19, 38)  # FLUX.1 double and single blocks
# dense bf16 peak, TFLOP/s, by device-name fragment (vendor data sheets)
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "4090": 165.0,
}


def run_tests(device: str) -> int:
    """The diffusers tests in a subprocess; returns pytest's exit status."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_diffusers_*.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, timeout=240).returncode


def flops_per_step(d: int, n_double: int, n_single: int, tokens: int) -> float:
    """Model FLOPs of one transformer forward for one image (linear layers + attention).

    A double block runs qkv (3d²), out (d²) and MLP (8d²) per token on each stream; a
    single block runs qkv+MLP-in (7d²) and out (5d²): 12d² multiply-adds per token each,
    i.e. 24·d²·L FLOPs, plus attention 4·L²·d (QKᵀ and AV) over the joint sequence L.
    """
    per_block = 24 * d * d * tokens + 4 * tokens * tokens * d
    return float((n_double + n_single) * per_block)


def peak_tflops(torch: Any, device: str) -> tuple[float | None, float]:
    """(data-sheet bf16 peak or None, measured bf16 matmul TFLOP/s) of the device."""
    sheet = None
    if device == "cuda":
        name = torch.cuda.get_device_name()
        sheet = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    n = 8192 if device == "cuda" else 512
    dtype = torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(torch, device)
    reps = 20 if device == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(torch, device)
    measured = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    return sheet, measured


def sync(torch: Any, device: str) -> None:
    """Wait for the device (timings must include the work, not just its launch)."""
    if device == "cuda":
        torch.cuda.synchronize()


def build(torch: Any, args: argparse.Namespace) -> tuple[Any, dict[str, int]]:
    """A Kontext-shaped FLUX transformer with random bf16 weights, and its shape."""
    from diffusers import FluxTransformer2DModel

    if args.tiny:
        shape = {"heads": 2, "head_dim": 16, "text_dim": 32, "pooled": 32, "size": 64, "text": 32}
        axes = (4, 4, 8)
    else:
        shape = {"heads": 24, "head_dim": 128, "text_dim": 4096, "pooled": 768}
        shape.update(size=args.size, text=512)
        axes = (16, 56, 56)
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        in_channels=64,
        num_layers=args.double,
        num_single_layers=args.single,
        attention_head_dim=shape["head_dim"],
        num_attention_heads=shape["heads"],
        joint_attention_dim=shape["text_dim"],
        pooled_projection_dim=shape["pooled"],
        guidance_embeds=True,
        axes_dims_rope=axes,
    )
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    return model.to(args.device, dtype).eval(), shape


def inputs(
    torch: Any,
    shape: dict[str, int],
    batch: int,
    device: str,
    dtype: Any,
    size: tuple[int, int] | None = None,
) -> dict:
    """Random inputs of one denoising step at ``size`` (w, h; default square
    ``shape["size"]``): noisy latents + the source image's latents."""
    w, h = size or (shape["size"], shape["size"])
    cols, rows = w // 16, h // 16  # VAE /8, then 2×2 packing
    n_img = cols * rows
    ids = torch.zeros(n_img, 3)
    ids[:, 1] = torch.arange(rows).repeat_interleave(cols)
    ids[:, 2] = torch.arange(cols).repeat(rows)
    ctx = ids.clone()
    ctx[:, 0] = 1  # Kontext marks the context image with index 1
    return {
        "hidden_states": torch.randn(batch, 2 * n_img, 64, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(
            batch, shape["text"], shape["text_dim"], device=device, dtype=dtype
        ),
        "pooled_projections": torch.randn(batch, shape["pooled"], device=device, dtype=dtype),
        "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
        "guidance": torch.full((batch,), 2.5, device=device, dtype=torch.float32),
        "img_ids": torch.cat([ids, ctx]).to(device),
        "txt_ids": torch.zeros(shape["text"], 3, device=device),
        "return_dict": False,
    }


def time_step(
    torch: Any, model: Any, args: argparse.Namespace, shape: dict, batched: bool
) -> float:
    """Seconds for one denoising step of M images (one batched call, or M calls)."""
    dtype = next(model.parameters()).dtype
    m = args.seeds
    feed = inputs(torch, shape, m if batched else 1, args.device, dtype)
    calls = 1 if batched else m
    with torch.inference_mode():
        for _ in range(args.warmup):
            for _ in range(calls):
                model(**feed)
        sync(torch, args.device)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            for _ in range(calls):
                model(**feed)
        sync(torch, args.device)
    return (time.perf_counter() - t0) / args.reps


def time_call(
    torch: Any, model: Any, args: argparse.Namespace, shape: dict, size: tuple, batch: int
) -> tuple[float, float]:
    """(seconds of one denoising step for ``batch`` images of ``size`` in one call,
    seconds of the warm-up, which includes a compile)."""
    dtype = next(model.parameters()).dtype
    feed = inputs(torch, shape, batch, args.device, dtype, size)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            model(**feed)
        sync(torch, args.device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.reps):
            model(**feed)
        sync(torch, args.device)
    return (time.perf_counter() - t0) / args.reps, warm


def bucket_sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The (w, h) buckets to time: ``--buckets``, or Kontext resolutions (tiny: 64²-ish)."""
    if args.buckets:
        return [tuple(int(x) for x in b.lower().split("x")) for b in args.buckets.split(",")]
    if args.tiny:
        return [(64, 64), (80, 48), (48, 80)]
    return [(1024, 1024), (1248, 832), (832, 1248)]


def bucketed(
    torch: Any, model: Any, args: argparse.Namespace, shape: dict, peak: float
) -> dict[str, Any]:
    """Bucketed, batched calls, eager and compiled; the headline figures."""
    d = shape["heads"] * shape["head_dim"]
    batches = sorted({int(b) for b in args.batches.split(",")})
    runs = []
    modes = ["eager"] + ([] if args.no_compile else ["compile"])
    # every (bucket, call size) is a shape: let dynamo keep them all compiled
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    for mode in modes:
        net = model if mode == "eager" else torch.compile(model)
        for w, h in bucket_sizes(args):
            tokens = 2 * (w // 16) * (h // 16) + shape["text"]
            flops = flops_per_step(d, args.double, args.single, tokens)
            full = flops_per_step(d, *FULL_DEPTH, tokens)
            for batch in batches:
                secs, warm = time_call(torch, net, args, shape, (w, h), batch)
                mfu = flops * batch / secs / 1e12 / peak
                # a 28-step full-depth edit of this bucket at the same efficiency, per image
                edit = full * args.steps / (mfu * peak * 1e12)
                runs.append(
                    {
                        "mode": mode,
                        "bucket": f"{w}x{h}",
                        "images_per_call": batch,
                        "step_seconds": round(secs, 5),
                        "share_of_peak": round(mfu, 4),
                        "full_depth_edit_seconds_per_image": round(edit, 3),
                        "warmup_seconds": round(warm, 2),
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    headline: dict[str, Any] = {}
    square = f"{args.size}x{args.size}" if not args.tiny else f"{shape['size']}x{shape['size']}"
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        fullest = [r for r in mine if r["images_per_call"] == batches[-1]]
        best = next((r for r in fullest if r["bucket"] == square), fullest[0])
        headline[mode] = {
            "bucket": best["bucket"],
            "images_per_call": best["images_per_call"],
            "seconds_per_28_step_edit": best["full_depth_edit_seconds_per_image"],
            "share_of_bf16_peak": best["share_of_peak"],
            "mean_share_of_peak_over_buckets": round(
                sum(r["share_of_peak"] for r in fullest) / len(fullest), 4
            ),
        }
    return {"bucket_runs": runs, "headline": headline}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Eager and compiled, batched and per-seed step timings with FLOP accounting."""
    import torch

    sheet, measured = peak_tflops(torch, args.device)
    model, shape = build(torch, args)
    d = shape["heads"] * shape["head_dim"]
    tokens = 2 * (shape["size"] // 16) ** 2 + shape["text"]
    flops = flops_per_step(d, args.double, args.single, tokens)
    full = flops_per_step(d, *FULL_DEPTH, tokens)
    peak = sheet or measured
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "size": shape["size"],
        "tokens": tokens,
        "depth": [args.double, args.single],
        "seeds": args.seeds,
        "steps": args.steps,
        "peak_tflops_datasheet": sheet,
        "peak_tflops_measured_matmul": round(measured, 1),
        "gflop_per_step_image": round(flops / 1e9, 1),
        "gflop_per_step_image_full_depth": round(full / 1e9, 1),
        "runs": [],
    }
    modes = ["eager"] + ([] if args.no_compile else ["compile"])
    for mode in modes:
        net = model if mode == "eager" else torch.compile(model)
        for batched in (True, False):
            t0 = time.perf_counter()
            secs = time_step(torch, net, args, shape, batched)
            tflops = flops * args.seeds / secs / 1e12
            mfu = tflops / peak
            out["runs"].append(
                {
                    "mode": mode,
                    "calls": "batched" if batched else "per-seed",
                    "step_seconds": round(secs, 5),
                    "images_per_second": round(args.seeds / (secs * args.steps), 4),
                    "tflops": round(tflops, 4),
                    "share_of_peak": round(mfu, 4),
                    "full_depth_edit_seconds": round(full * args.steps / (mfu * peak * 1e12), 2),
                    "wall_with_warmup_s": round(time.perf_counter() - t0, 1),
                }
            )
            print(json.dumps(out["runs"][-1]), flush=True)
    if not args.no_buckets:
        out.update(bucketed(torch, model, args, shape, peak))
    return out


def denoise(torch: Any, model: Any, feed: dict, steps: int, cached: bool) -> Any:
    """A Kontext denoising loop on the transformer alone (flow-matching Euler, sigmas 1 →
    0): the noisy latents are the first half of ``hidden_states``, the source's latents the
    second. Returns the final latents. A cache hook's state lives in one ``cond`` context
    for the whole loop, as the editor runs it."""
    x, ctx = feed["hidden_states"].chunk(2, dim=1)
    b = x.shape[0]
    sigmas = torch.linspace(1.0, 0.0, steps + 1).tolist()
    scope = model.cache_context("cond") if cached else contextlib.nullcontext()
    with torch.inference_mode(), scope:
        for i in range(steps):
            step = {**feed, "hidden_states": torch.cat([x, ctx], dim=1)}
            step["timestep"] = torch.full((b,), sigmas[i], device=x.device, dtype=x.dtype)
            v = model(**step)[0][:, : x.shape[1]]
            x = x + (sigmas[i + 1] - sigmas[i]) * v
    if cached:
        model._reset_stateful_cache()
    return x


def lever_sets(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The lever sets to time, each on top of the sets before it: eager, regional
    compile, + fp8, then each cache hook in turn (one at a time), then + FA3 (no cache)."""
    sets = [("eager", {}), ("regional", {"compile": True}), ("+fp8", {"fp8": True})]
    for cache in ("first-block", "taylorseer", "magcache"):
        sets.append((f"+{cache}", {"cache": cache}))
    sets.append(("+fa3", {"attention": args.attention}))
    return sets


def apply_lever(torch: Any, model: Any, name: str, lever: dict, args: argparse.Namespace) -> None:
    """Apply one lever set to the transformer in place, on top of the sets before it (see
    ``lever_sets``); compiled sets compile anew, as ``nhr`` compiles for their cache."""
    import diffusers
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    sys.path.insert(0, str(ROOT))
    from nhr.backends import diffusers_levers

    if model.is_cache_enabled:
        model.disable_cache()
    if lever.get("fp8"):
        diffusers_levers._quantize_fp8(model, args.device)
    if lever.get("attention"):
        model.set_attention_backend(lever["attention"])
    cache = lever.get("cache", "none")
    if lever.get("compile") or args.compiled:
        for block in model.modules():  # drop the previous set's compiled code
            if type(block).__name__ in model._repeated_blocks:
                block.__dict__.pop("forward", None)
                block._compiled_call_impl = None
        diffusers_levers.compile_denoiser(model, "regional", cache, args.compile_backend)
        args.compiled = True
    configs = {
        "first-block": lambda: diffusers.FirstBlockCacheConfig(threshold=0.05),
        "taylorseer": lambda: diffusers.TaylorSeerCacheConfig(),
        "magcache": lambda: diffusers.MagCacheConfig(
            mag_ratios=FLUX_MAG_RATIOS, num_inference_steps=args.lever_steps
        ),
    }
    if cache in configs:
        model.enable_cache(configs[cache]())


def levers(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per edit, share of bf16 peak and output drift from eager of each lever set
    on a full-depth Kontext transformer (random bf16 weights) at ``--size``², a batched
    call of ``--lever-batch`` images, ``--lever-steps`` steps. Sets that cannot run here
    (no torchao, no FA3 kernels) say why; sets that would end past ``--budget`` are left
    out. Drift: mean |final latents − eager's| on the same seed and inputs; a cache set's
    share of peak counts the FLOPs of every step it skipped too (effective)."""
    import torch

    t_start = time.perf_counter()
    # a set takes about a minute at 1024² on an H100; the training step after, one more
    reserve = 60.0 + (0.0 if args.no_train else 60.0)
    sheet, measured = peak_tflops(torch, args.device)
    peak = sheet or measured
    depth = (args.double, args.single) if args.tiny else FULL_DEPTH
    lever_args = argparse.Namespace(**{**vars(args), "double": depth[0], "single": depth[1]})
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if args.device == "cuda" else torch.float32)
    try:
        with torch.device(args.device):
            model, shape = build(torch, lever_args)
    finally:
        torch.set_default_dtype(before)
    dtype = next(model.parameters()).dtype
    torch.manual_seed(1)
    feed = inputs(torch, shape, args.lever_batch, args.device, dtype)
    d = shape["heads"] * shape["head_dim"]
    tokens = feed["hidden_states"].shape[1] + shape["text"]
    flops = flops_per_step(d, *depth, tokens) * args.lever_steps * args.lever_batch
    args.compiled = False
    out: dict[str, Any] = {
        "depth": list(depth),
        "size": shape["size"],
        "images_per_call": args.lever_batch,
        "steps": args.lever_steps,
        "sets": {},
    }
    eager_x = None
    for name, lever in lever_sets(args):
        if name != "eager" and time.perf_counter() - START > args.budget - reserve:
            out["sets"][name] = {"skipped": f"would end past --budget {args.budget:g} s"}
            continue
        try:
            apply_lever(torch, model, name, lever, args)
            t0 = time.perf_counter()
            denoise(torch, model, feed, 2 if name != "eager" else 1, bool(lever.get("cache")))
            sync(torch, args.device)
            warmup = time.perf_counter() - t0
            t0 = time.perf_counter()
            x = denoise(torch, model, feed, args.lever_steps, bool(lever.get("cache")))
            sync(torch, args.device)
            secs = time.perf_counter() - t0
        except Exception as err:  # a lever this machine lacks: say which and why
            out["sets"][name] = {"skipped": f"{type(err).__name__}: {str(err)[:300]}"}
            if lever.get("cache") and model.is_cache_enabled:
                model.disable_cache()
            continue
        if eager_x is None:
            eager_x = x.float()
        out["sets"][name] = {
            "seconds_per_edit": round(secs / args.lever_batch, 3),
            "share_of_bf16_peak": round(flops / secs / 1e12 / peak, 4),
            "drift_from_eager": round((x.float() - eager_x).abs().mean().item(), 5),
            "warmup_seconds": round(warmup, 1),
        }
        print(json.dumps({"lever": name, **out["sets"][name]}), flush=True)
    ran = {k: v for k, v in out["sets"].items() if "seconds_per_edit" in v}
    if ran:
        best = min(ran, key=lambda k: ran[k]["seconds_per_edit"])
        out["best"] = {"set": best, **ran[best]}
    out["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    del model  # free the GPU for the training step
    torch._dynamo.reset()
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def train_step(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per LoRA training step of a Kontext transformer (see the docstring, 4)."""
    import torch
    from diffusers import FluxTransformer2DModel

    sys.path.insert(0, str(ROOT))
    from nhr.train.loop import add_lora

    cuda = args.device == "cuda"
    depth = (
        FULL_DEPTH if args.train_depth == "full" and not args.tiny else (args.double, args.single)
    )
    if args.tiny:
        shape = {"heads": 2, "head_dim": 16, "text_dim": 32, "pooled": 32, "text": 32}
        axes, size = (4, 4, 8), 64
    else:
        shape = {"heads": 24, "head_dim": 128, "text_dim": 4096, "pooled": 768, "text": 512}
        axes, size = (16, 56, 56), args.train_size
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the weights in their final dtype, on the device
    try:
        with torch.device(args.device):
            model = FluxTransformer2DModel(
                in_channels=64,
                num_layers=depth[0],
                num_single_layers=depth[1],
                attention_head_dim=shape["head_dim"],
                num_attention_heads=shape["heads"],
                joint_attention_dim=shape["text_dim"],
                pooled_projection_dim=shape["pooled"],
                guidance_embeds=True,
                axes_dims_rope=axes,
            )
    finally:
        torch.set_default_dtype(before)
    params = add_lora(model, args.train_rank, 0.0, ["to_k", "to_q", "to_v", "to_out.0"], 0)
    if not args.no_train_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    feed = inputs(torch, {**shape, "size": size}, args.train_batch, args.device, dtype)
    n_img = feed["hidden_states"].shape[1] // 2
    target = torch.randn(args.train_batch, n_img, 64, device=args.device)

    def step() -> None:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=cuda):
            pred = model(**feed)[0][:, :n_img]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync(torch, args.device)
    t0 = time.perf_counter()
    for _ in range(args.reps):
        step()
    sync(torch, args.device)
    secs = (time.perf_counter() - t0) / args.reps
    out = {
        "train_size": size,
        "train_depth": list(depth),
        "train_batch": args.train_batch,
        "lora_rank": args.train_rank,
        "lora_params_m": round(sum(p.numel() for p in params) / 1e6, 2),
        "gradient_checkpointing": not args.no_train_checkpointing,
        "precision": "bf16" if cuda else "float32",
        "seconds_per_step": round(secs, 4),
        "images_per_second": round(args.train_batch / secs, 3),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else None,
    }
    print(json.dumps({"train_step": out}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the tests and the benchmark; print the figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny dims at 64² (a CPU dry run)")
    p.add_argument("--size", type=int, default=1024, help="image side, px")
    p.add_argument("--double", type=int, default=2, help="double-stream blocks (real: 19)")
    p.add_argument("--single", type=int, default=4, help="single-stream blocks (real: 38)")
    p.add_argument("--seeds", type=int, default=5, help="M seeds per (image, instruction)")
    p.add_argument("--steps", type=int, default=28, help="denoising steps per edit")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--buckets", default="", help="WxH,... to time (default: 3 Kontext sizes)")
    p.add_argument("--batches", default="1,4,8", help="images per call to time per bucket")
    p.add_argument("--no-buckets", action="store_true", help="skip the bucketed calls")
    p.add_argument("--no-tests", action="store_true")
    p.add_argument("--train-size", type=int, default=1024, help="training step: image side")
    p.add_argument("--train-depth", default="full", choices=("full", "reduced"))
    p.add_argument("--train-rank", type=int, default=16, help="training step: LoRA rank")
    p.add_argument("--train-batch", type=int, default=1, help="training step: images")
    p.add_argument("--no-train-checkpointing", action="store_true")
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument("--bench", action="store_true", help="also the reduced-depth benchmark")
    p.add_argument("--no-levers", action="store_true", help="skip the speed levers")
    p.add_argument(
        "--lever-batch",
        type=int,
        default=4,
        help="images per call (DIFFUSERS_MAX_BATCH of flux-gemini)",
    )
    p.add_argument("--lever-steps", type=int, default=28, help="denoising steps per edit")
    p.add_argument("--budget", type=float, default=460.0, help="seconds for the whole check")
    p.add_argument("--attention", default="_flash_3", help="the attention backend to try")
    p.add_argument("--compile-backend", default="", help="torch.compile backend (cpu: eager)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here — use --device cpu --tiny for a dry run")
        return 2
    if not args.compile_backend:
        args.compile_backend = "inductor" if args.device == "cuda" else "eager"
    status = 0 if args.no_tests else run_tests(args.device)
    figures: dict[str, Any] = benchmark(args) if args.bench else {}
    if not args.no_levers:
        figures["levers"] = levers(args)
    if not args.no_train:
        figures["train_step"] = train_step(args)
    figures["tests_exit_status"] = status
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
