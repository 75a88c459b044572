"""Tiny random diffusers pipelines, built in code and saved as local model folders.

Real weights cannot be downloaded everywhere, so the diffusers backends are proven with
pipelines of the real classes (FLUX text-to-image, FLUX Kontext, InstructPix2Pix,
Qwen-Image-Edit) whose
components are a few thousand random parameters: 1–2 layers, hidden size 32, a VAE that
downsamples by 8 like the real ones. ``write_tiny_models(DIR)`` saves them with
``save_pretrained``, so a config names ``DIR/flux-kontext`` where a real run names
``black-forest-labs/FLUX.1-Kontext-dev`` and both go through the same ``from_pretrained``.
They draw noise: they check plumbing, sizes, seeds and timing, never image quality.
Tokenizers are built in memory (byte-level CLIP, Unigram T5, byte-level Qwen2 with the chat
and vision markers), so no file is needed; Qwen-Image-Edit's processor is Qwen2-VL's
without its video part (``TinyQwenVLProcessor``: the video classes need torchvision).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from nhr.errors import missing_extra

# folder name → (pipeline class, builder name); the folder names are what configs use
TINY_MODELS: dict[str, str] = {
    "flux-t2i": "FluxPipeline",
    "flux-kontext": "FluxKontextPipeline",
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "qwen-image-edit": "QwenImageEditPipeline",
}
# the Qwen chat and vision markers the edit pipeline's prompt template uses, after the
# 256 byte tokens of the tiny Qwen tokenizer
QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TEXT_DIM = 32  # hidden size of every tiny text encoder


def _imports() -> Any:
    """diffusers, transformers and torch, or the error naming the extra."""
    try:
        import diffusers
        import torch
        import transformers
    except ImportError as err:
        raise missing_extra(err.name or "diffusers", "diffusers") from None
    return diffusers, transformers, torch


def _byte_chars() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level tokenizers map bytes to."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer whose vocabulary is every byte (no merges)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for piece in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer over letters, digits and punctuation."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(ch, -3.0), ("▁" + ch, -2.5)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _clip_text_model(seed: int) -> Any:
    """A 2-layer CLIP text encoder, hidden size 32, in eval mode."""
    _, transformers, torch = _imports()
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        projection_dim=TEXT_DIM,
        max_position_embeddings=77,
    )
    return transformers.CLIPTextModel(cfg).eval()


def _vae(seed: int, latent_channels: int, flux: bool) -> Any:
    """A VAE with 4 levels (downsampling by 8, like the real ones), 8 channels wide."""
    diffusers, _, torch = _imports()
    torch.manual_seed(seed)
    extra = (
        {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.0609}
        if flux
        else {}
    )
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=1.5035 if flux else 0.18215,
        **extra,
    ).eval()


def _flux_components(guidance_embeds: bool, seed: int) -> dict[str, Any]:
    """Components of a tiny FLUX pipeline (text-to-image and Kontext share them)."""
    diffusers, transformers, torch = _imports()
    torch.manual_seed(seed)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    torch.manual_seed(seed + 1)
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=256,
            d_model=TEXT_DIM,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
        )
    ).eval()
    return {
        "transformer": transformer,
        "text_encoder": _clip_text_model(seed + 2),
        "text_encoder_2": t5,
        "tokenizer": _clip_tokenizer(),
        "tokenizer_2": _t5_tokenizer(),
        "vae": _vae(seed + 3, latent_channels=4, flux=True),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def _processor_class() -> Any:
    """``TinyQwenVLProcessor``: Qwen2-VL's processor for images and text only.

    transformers' ``Qwen2VLProcessor`` also holds a video processor, whose classes need
    torchvision, so it cannot be built where torchvision does not import; this subclass
    drops the video part (the edit pipeline sends images only) and is otherwise the same
    class, saved and loaded by ``save_pretrained``/``from_pretrained``.
    """
    from transformers import ProcessorMixin, Qwen2VLProcessor

    class TinyQwenVLProcessor(Qwen2VLProcessor):
        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
        ) -> None:
            self.image_token = "<|image_pad|>"
            self.video_token = "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    TinyQwenVLProcessor.__module__ = __name__
    return TinyQwenVLProcessor


def __getattr__(name: str) -> Any:
    """``TinyQwenVLProcessor`` on first use (transformers is imported lazily), so a saved
    pipeline's ``model_index.json`` can name it by this module; and ``ProcessorMixin``,
    the base diffusers looks up in a component's module to find its loading method."""
    if name == "TinyQwenVLProcessor":
        cls = _processor_class()
        globals()[name] = cls
        return cls
    if name == "ProcessorMixin":
        from transformers import ProcessorMixin

        return ProcessorMixin
    raise AttributeError(name)


def _qwen_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer (every byte a token, no merges) with the chat and
    vision markers as special tokens, ids 256 onwards."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for tok in QWEN_SPECIAL:
        vocab[tok] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL[1:]),
        model_max_length=32768,
    )


def _qwen_edit(seed: int) -> Any:
    """A tiny QwenImageEditPipeline: transformer, Qwen VAE (downsampling by 8), a 2-layer
    Qwen2.5-VL text encoder with a 2-layer vision tower, tokenizer and processor."""
    diffusers, transformers, torch = _imports()
    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    torch.manual_seed(seed)
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    torch.manual_seed(seed + 1)
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    torch.manual_seed(seed + 2)
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "hidden_size": TEXT_DIM,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_DIM,
            "fullatt_block_indexes": [1],
        },
        hidden_size=TEXT_DIM,
        vocab_size=len(tokenizer),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = transformers.Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2
    )
    processor = _processor_class()(image_processor=image_processor, tokenizer=tokenizer)
    return diffusers.QwenImageEditPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )


def build_tiny(name: str, seed: int = 0) -> Any:
    """The tiny pipeline called ``name`` (a key of ``TINY_MODELS``), random weights."""
    diffusers, _, torch = _imports()
    if name == "flux-t2i":
        return diffusers.FluxPipeline(**_flux_components(guidance_embeds=False, seed=seed))
    if name == "flux-kontext":
        return diffusers.FluxKontextPipeline(**_flux_components(guidance_embeds=True, seed=seed))
    if name == "instruct-pix2pix":
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=8,
            in_channels=8,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            norm_num_groups=8,
            attention_head_dim=4,
        ).eval()
        return diffusers.StableDiffusionInstructPix2PixPipeline(
            vae=_vae(seed + 1, latent_channels=4, flux=False),
            text_encoder=_clip_text_model(seed + 2),
            tokenizer=_clip_tokenizer(),
            unet=unet,
            scheduler=diffusers.EulerAncestralDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if name == "qwen-image-edit":
        return _qwen_edit(seed)
    raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")


def write_tiny_models(folder: Path | str, seed: int = 0) -> dict[str, Path]:
    """Save every tiny pipeline under ``folder/<name>``; returns name → folder.

    A folder that already holds a saved pipeline is kept, so reruns are instant.
    """
    out = {}
    for name in TINY_MODELS:
        path = Path(folder) / name
        if not (path / "model_index.json").is_file():
            build_tiny(name, seed).save_pretrained(path)
        out[name] = path
    return out
