"""What differs between the editors trained: how a triplet is encoded once (latents of
the edited and the source image, the instruction's text embeddings), the flow-matching
loss of one cached batch, sample edits, and how the LoRA is saved. One ``EditorTrainer``
per editor, as the editors stand behind one protocol; ``nhr.train.loop`` runs any of them.

FLUX.1 Kontext (``KontextTrainer``): the latents are the VAE's mean, shifted and scaled
as the pipeline does; the noisy target's packed 2×2 patches are followed in the sequence
by the source's packed latents, whose position ids carry 1 in their first axis (the
target's carry 0), so the transformer sees the source as context; its prediction is cut
back to the target's tokens. Flow matching: ``x_t = (1-σ)·x0 + σ·noise`` with σ drawn by
diffusers' ``compute_density_for_timestep_sampling`` over the scheduler's (shifted)
timesteps, target ``noise - x0``, weighted by ``compute_loss_weighting_for_sd3``; the
timestep goes in as σ (t / 1000) and the distilled guidance as TRAIN_GUIDANCE.
"""

from __future__ import annotations

from typing import Any, Protocol

from PIL import Image

from nhr.errors import ConfigError


class EditorTrainer(Protocol):
    """The editor-specific half of LoRA training."""

    name: str
    pipeline_class: str
    default_model: str
    multiple: int  # sides of a training size are multiples of this

    def encode(self, pipe: Any, sources: Any, edited: Any, instructions: list[str]) -> dict:
        """Named batched tensors to cache for same-size images in [-1, 1]."""
        ...

    def loss(self, pipe: Any, transformer: Any, batch: dict, generator: Any) -> Any:
        """The mean flow-matching loss of a cached batch (noise and σ from ``generator``)."""
        ...

    def sample(
        self, pipe: Any, images: list[Image.Image], instructions: list[str], steps: int, seed: int
    ) -> list[Image.Image]:
        """Edits of ``images`` (each at its own size) with the pipeline as it is now."""
        ...


class KontextTrainer:
    """LoRA training of FLUX.1 Kontext's transformer (see the module docstring)."""

    name = "flux-kontext"
    pipeline_class = "FluxKontextPipeline"
    default_model = "black-forest-labs/FLUX.1-Kontext-dev"
    multiple = 16  # VAE factor 8 × 2×2 packing

    def __init__(
        self, max_tokens: int = 512, guidance: float = 1.0, weighting: str = "none"
    ) -> None:
        self.max_tokens = max_tokens
        self.guidance = guidance
        self.weighting = weighting
        self._sigmas: Any = None

    def _latents(self, pipe: Any, images: Any) -> Any:
        """The VAE mean of images in [-1, 1], shifted and scaled as the pipeline does."""
        vae = pipe.vae
        dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
        return (dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor

    def encode(self, pipe: Any, sources: Any, edited: Any, instructions: list[str]) -> dict:
        import torch

        with torch.no_grad():
            prompt, pooled, _ = pipe.encode_prompt(
                prompt=instructions,
                prompt_2=None,
                device=pipe.vae.device,
                max_sequence_length=self.max_tokens,
            )
            return {
                "target": self._latents(pipe, edited),
                "cond": self._latents(pipe, sources),
                "prompt": prompt,
                "pooled": pooled,
            }

    def _schedule(self, pipe: Any) -> Any:
        """σ of each of the scheduler's training timesteps (shift applied as it does)."""
        if self._sigmas is None:
            from diffusers import FlowMatchEulerDiscreteScheduler

            sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
            self._sigmas = sched.timesteps.float() / sched.config.num_train_timesteps
        return self._sigmas

    def loss(self, pipe: Any, transformer: Any, batch: dict, generator: Any) -> Any:
        import torch
        from diffusers.training_utils import (
            compute_density_for_timestep_sampling,
            compute_loss_weighting_for_sd3,
        )

        cls = type(pipe)
        device = next(p.device for p in transformer.parameters())
        dtype = pipe.vae.dtype
        x0, cond = batch["target"].float(), batch["cond"].float()
        b, c, h, w = x0.shape
        sigmas_all = self._schedule(pipe)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting,
            batch_size=b,
            logit_mean=0.0,
            logit_std=1.0,
            mode_scale=1.29,
            generator=generator,
        )
        idx = (u * len(sigmas_all)).long().clamp(max=len(sigmas_all) - 1)
        sigmas = sigmas_all[idx].view(b, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        packed = cls._pack_latents(noisy, b, c, h, w)
        packed_cond = cls._pack_latents(cond, b, c, h, w)
        ids = cls._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        cond_ids = ids.clone()
        cond_ids[..., 0] = 1
        guidance = None
        if getattr(transformer, "module", transformer).config.guidance_embeds:  # DDP wraps
            guidance = torch.full((b,), self.guidance, device=device, dtype=torch.float32)
        pred = transformer(
            hidden_states=torch.cat([packed, packed_cond], dim=1).to(device, dtype),
            timestep=sigmas.view(b).to(device, dtype),
            guidance=guidance,
            pooled_projections=batch["pooled"].to(device, dtype),
            encoder_hidden_states=batch["prompt"].to(device, dtype),
            txt_ids=torch.zeros(batch["prompt"].shape[1], 3, device=device, dtype=dtype),
            img_ids=torch.cat([ids, cond_ids], dim=0),
            return_dict=False,
        )[0][:, : packed.shape[1]]
        target = cls._pack_latents(noise - x0, b, c, h, w).to(device)
        weight = compute_loss_weighting_for_sd3(self.weighting, sigmas.view(b, 1, 1)).to(device)
        err = weight.float() * (pred.float() - target.float()) ** 2
        return err.reshape(b, -1).mean(dim=1).mean()

    def sample(
        self, pipe: Any, images: list[Image.Image], instructions: list[str], steps: int, seed: int
    ) -> list[Image.Image]:
        import torch

        out = []
        for image, text in zip(images, instructions, strict=True):
            w, h = image.size
            with torch.no_grad():
                out.append(
                    pipe(
                        image=image,
                        prompt=text,
                        width=w,
                        height=h,
                        max_area=w * h,
                        _auto_resize=False,
                        num_inference_steps=steps,
                        guidance_scale=2.5,
                        generator=torch.Generator("cpu").manual_seed(seed),
                    ).images[0]
                )
        return out


def trainer_for(cfg: Any) -> EditorTrainer:
    """The trainer of TRAIN_BASE, set up from the config's train block."""
    t = cfg.train
    if t.train_base == "flux-kontext":
        return KontextTrainer(t.train_max_tokens, t.train_guidance, t.train_weighting)
    raise ConfigError(
        f"TRAIN_BASE={t.train_base} has no trainer in this version",
        "use TRAIN_BASE: flux-kontext, or export for DiffSynth-Studio / musubi-tuner "
        "(`nhr export-for diffsynth RUN_DIR OUT`) to train Qwen-Image-Edit there",
    )
