"""The image decoder: an SDXL-class UNet (text_time conditioning) + a frozen AutoencoderKL + DDPM noise.

Built from `DecoderConfig`: each of UNet and VAE comes from a `ModelSource` (diffusers `from_pretrained`,
or a config dict merged over the tiny defaults below with seeded weights). The UNet is trained fully,
with LoRA (`unet.add_adapter`, peft) or frozen; the VAE is always frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from peft import LoraConfig
from torch import nn

from models.hf import build_seeded, empty_weights_config, pretrained_kwargs, torch_dtype
from mumu.config.model import DecoderConfig
from mumu.errors import UserError

# Tiny SDXL-shaped UNet: two cross-attention resolutions (latent 16x16 and 8x8 at resolution 64), so
# layer selection and mask resizing are exercised; text_time added conditioning like SDXL.
TINY_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": [2, 4],  # diffusers' name for the number of heads per block
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled (32) + 6 time ids x 8
}

# Tiny VAE: 3 blocks = downsampling by 4 (64 px -> 16x16 latents), 4 latent channels like SDXL's.
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}


def _cast(model, dtype: str):
    dt = torch_dtype(dtype)
    return model if dt == torch.float32 else model.to(dt)  # skip a no-op cast (diffusers warns on it)


def build_unet(cfg: DecoderConfig):
    src = cfg.unet
    if (bundled := empty_weights_config(src)) is not None:
        return _cast(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(bundled)), src.dtype)
    if src.is_pretrained:
        return UNet2DConditionModel.from_pretrained(src.location, dtype=torch_dtype(src.dtype), **pretrained_kwargs(src))
    conf = {**TINY_UNET, **(src.config or {})}
    return _cast(build_seeded(lambda: UNet2DConditionModel(**conf), src.seed), src.dtype)


def unet_blocks(unet) -> list[str]:
    """The UNet's top-level blocks, in the order the forward runs them."""
    return ([f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
            + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))])


def enable_block_checkpointing(unet, blocks: bool | list[str]) -> None:
    """Gradient checkpointing on every block (True) or on the named top-level blocks only."""
    unet.enable_gradient_checkpointing()
    if blocks is True:
        return
    names = unet_blocks(unet)
    unknown = sorted(set(blocks) - set(names))
    if unknown:
        raise UserError(f"decoder.gradient_checkpointing names {unknown}, not blocks of this UNet: {names}")
    for name in names:
        if name not in blocks:
            for module in unet.get_submodule(name).modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False


def build_vae(cfg: DecoderConfig):
    src = cfg.vae
    if (bundled := empty_weights_config(src)) is not None:
        return _cast(AutoencoderKL.from_config(AutoencoderKL.load_config(bundled)), src.dtype)
    if src.is_pretrained:
        return AutoencoderKL.from_pretrained(src.location, dtype=torch_dtype(src.dtype), **pretrained_kwargs(src))
    conf = {**TINY_VAE, **(src.config or {})}
    return _cast(build_seeded(lambda: AutoencoderKL(**conf), src.seed), src.dtype)


def build_scheduler(cfg: DecoderConfig):
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr,
    )


def unet_lora_config(cfg: DecoderConfig):
    # "gaussian" init as in diffusers' LoRA training scripts; B starts at zero so the adapter is a no-op.
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        init_lora_weights="gaussian",
        target_modules=list(cfg.lora.target_modules),
    )


@torch.no_grad()
def vae_posterior(vae, pixels: torch.Tensor) -> torch.Tensor:
    """pixels in [-1, 1] -> the VAE posterior's parameters [B, 2C, h, w] (mean and log-variance): what the feature
    cache stores, since the posterior of a frozen VAE never changes while the samples drawn from it must."""
    return vae.encode(pixels.to(vae.dtype)).latent_dist.parameters


class Decoder(nn.Module):
    """UNet + VAE + training noise schedule, with the trainable set chosen by `cfg.train`."""

    def __init__(self, cfg: DecoderConfig, unet=None, vae=None):
        super().__init__()
        self.cfg = cfg
        self.unet = unet if unet is not None else build_unet(cfg)
        self.vae = vae if vae is not None else build_vae(cfg)
        self.scheduler = build_scheduler(cfg)
        self.vae.requires_grad_(False)
        self.vae.eval()
        self.unet.requires_grad_(cfg.train == "full")
        if cfg.train == "lora":
            with torch.random.fork_rng(devices=[]):  # seeded LoRA init (it draws from the global RNG)
                torch.manual_seed(cfg.unet.seed + 2)
                self.unet.add_adapter(unet_lora_config(cfg))  # only the adapter weights require grad
        if cfg.gradient_checkpointing:
            enable_block_checkpointing(self.unet, cfg.gradient_checkpointing)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen: never in train mode
        return self

    # --- what the generator / sampler needs ---------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def pooled_dim(self) -> int:
        c = self.unet.config
        return int(c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim)

    @property
    def cross_attention_dim(self) -> int:
        dim = self.unet.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    @staticmethod
    def add_time_ids(original_hw: tuple[int, int], crop_tl: tuple[int, int], target_hw: tuple[int, int]) -> list[int]:
        """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
        return [*original_hw, *crop_tl, *target_hw]

    def encode_posterior(self, pixels: torch.Tensor) -> torch.Tensor:
        return vae_posterior(self.vae, pixels)

    @torch.no_grad()
    def sample_latents(self, posterior: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Posterior parameters -> scaled latents (a sample of the posterior, drawn with `generator`)."""
        sample = DiagonalGaussianDistribution(posterior).sample(generator=generator)
        return (sample - self.latent_shift) * self.latent_scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents -> pixels in [-1, 1]."""
        z = latents.to(self.vae.dtype) / self.latent_scaling_factor + self.latent_shift
        return self.vae.decode(z).sample.clamp(-1, 1)
