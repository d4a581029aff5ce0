"""MumuModel: Idefics2 prompt encoder -> connector -> SDXL-class UNet (+ frozen VAE).

prepare(examples) -> Batch; encode(prompts) -> Conditioning; training_loss(batch, generator, attn_loss)
-> {"loss", "diffusion", "attn"}; save_pretrained / from_pretrained (safetensors + json only).
Every random draw of a training step comes from the `generator` passed in (CFG dropout, VAE posterior
sample, timesteps, noise), so a step is reproducible from (seed, step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Idefics2Processor

from models.attention import attention_mask_loss, install_capture
from models.cached import CachedFeatures
from models.connector import Connector
from models.decoder import Decoder, build_unet, build_vae
from models.encoder import PromptEncoder, PromptTokens
from mumu.config.base import ModelSource
from mumu.config.model import ModelConfig
from mumu.config.train import AttnLossConfig
from mumu.errors import UserError
from mumu.io import atomic_path, write_json_atomic

FORMAT_VERSION = 1


@dataclass
class Conditioning:
    hidden: torch.Tensor  # [B, L, cross_attention_dim]
    pooled: torch.Tensor  # [B, P] (SDXL text_embeds)
    attention_mask: torch.Tensor  # [B, L]
    entity_token_mask: torch.Tensor  # [B, K, L] bool
    entity_valid: torch.Tensor  # [B, K] bool


@dataclass
class Batch:
    keys: list[str]
    tokens: PromptTokens
    pixels: torch.Tensor | None  # [B, 3, R, R] in [-1, 1]; None when every target's posterior is cached
    add_time_ids: torch.Tensor  # [B, 6]
    entity_masks: torch.Tensor  # [B, K, R, R] float in [0, 1], aligned with tokens.entity_token_mask
    posteriors: torch.Tensor | None = None  # [B, 2C, h, w] cached VAE posteriors of the targets (models/cached.py)

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(self.keys, self.tokens.to(device), move(self.pixels), self.add_time_ids.to(device),
                     self.entity_masks.to(device), move(self.posteriors))


def _resized(wh: tuple[int, int], size: int) -> tuple[int, int]:
    w, h = wh
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def _crop_offset(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """(crop_top, crop_left) of _resize_crop for an image of size `wh`, without touching its pixels."""
    nw, nh = _resized(wh, size)
    return (nh - size) // 2, (nw - size) // 2


def _resize_crop(img: PIL.Image.Image, size: int, resample) -> tuple[PIL.Image.Image, tuple[int, int]]:
    """Scale the short side to `size`, centre-crop to size x size; returns (image, (crop_top, crop_left)).
    The one deterministic view of a target: no random crop or flip, so its VAE posterior can be cached."""
    nw, nh = _resized(img.size, size)
    img = img.resize((nw, nh), resample)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img.crop((left, top, left + size, top + size)), (top, left)


def target_pixels(image: PIL.Image.Image, resolution: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A training target as the VAE reads it: [3, R, R] in [-1, 1], and (crop_top, crop_left)."""
    img, crop = _resize_crop(image.convert("RGB"), resolution, PIL.Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1), crop


class MumuModel(nn.Module):
    def __init__(self, cfg: ModelConfig, encoder: PromptEncoder, connector: Connector, decoder: Decoder):
        super().__init__()
        self.cfg, self.encoder, self.connector, self.decoder = cfg, encoder, connector, decoder
        self.attn_store = install_capture(decoder.unet)

    @classmethod
    def from_config(cls, cfg: ModelConfig, lazy_encoder: bool = False) -> "MumuModel":
        """lazy_encoder: the prompt encoder's weights are loaded when a prompt first needs them (PromptEncoder)."""
        return cls._assemble(cfg, PromptEncoder(cfg.encoder, lazy=lazy_encoder), Decoder(cfg.decoder))

    @classmethod
    def _assemble(cls, cfg: ModelConfig, encoder: PromptEncoder, decoder: Decoder) -> "MumuModel":
        # Connector weights are seeded from the encoder's seed (no ModelSource of its own).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.encoder.model.seed + 1)
            connector = Connector(cfg.connector, encoder.hidden_size, decoder.cross_attention_dim, decoder.pooled_dim)
        return cls(cfg, encoder, connector, decoder)

    # --- what generation needs ------------------------------------------------------------------------
    @property
    def unet(self):
        return self.decoder.unet

    @property
    def vae(self):
        return self.decoder.vae

    @property
    def scheduler_config(self) -> dict:
        return dict(self.decoder.scheduler.config)

    @property
    def vae_scale_factor(self) -> int:
        return self.decoder.vae_scale_factor

    @property
    def latent_scaling_factor(self) -> float:
        return self.decoder.latent_scaling_factor

    @property
    def device(self) -> torch.device:
        return self.connector.in_proj.weight.device

    def add_time_ids(self, batch_size: int, resolution: int | None = None) -> torch.Tensor:
        r = resolution or self.cfg.decoder.resolution
        ids = self.decoder.add_time_ids((r, r), (0, 0), (r, r))
        return torch.tensor([ids] * batch_size, dtype=torch.float32, device=self.device)

    # --- inputs ---------------------------------------------------------------------------------------
    def prepare(self, examples: list) -> Batch:
        """Examples (key, prompt, image, entity_masks[, features]) -> a Batch on the model's device. Cached
        features an example carries (models/cached.py) replace the computation they stand for."""
        res = self.cfg.decoder.resolution
        features: list[CachedFeatures | None] = [getattr(ex, "features", None) for ex in examples]
        tokens = self.encoder.tokenize([ex.prompt for ex in examples], features)
        # The targets' pixels are only needed when some posterior is not cached.
        cached_posteriors = all(f is not None and f.posterior is not None for f in features)
        pixels, time_ids = [], []
        k_max = tokens.entity_token_mask.shape[1]
        masks = torch.zeros((len(examples), k_max, res, res))
        for b, ex in enumerate(examples):
            n_images = sum(isinstance(s, PIL.Image.Image) for s in ex.prompt)
            if len(ex.entity_masks) != n_images:
                raise UserError(f"example {ex.key}: {n_images} image segments but {len(ex.entity_masks)} entity masks")
            crop = _crop_offset(ex.image.size, res)
            if not cached_posteriors:
                arr, crop = target_pixels(ex.image, res)
                pixels.append(arr)
            time_ids.append(self.decoder.add_time_ids((ex.image.height, ex.image.width), crop, (res, res)))
            for k, i in enumerate(tokens.kept[b]):
                m = np.asarray(ex.entity_masks[i], dtype=bool)
                if m.shape != (ex.image.height, ex.image.width):
                    raise UserError(f"example {ex.key}: entity mask {i} is {m.shape}, image is {ex.image.size[::-1]}")
                mimg, _ = _resize_crop(PIL.Image.fromarray(m.astype(np.uint8) * 255), res, PIL.Image.BOX)
                masks[b, k] = torch.from_numpy(np.asarray(mimg, dtype=np.float32) / 255.0)
        batch = Batch([ex.key for ex in examples], tokens, torch.stack(pixels) if pixels else None,
                      torch.tensor(time_ids, dtype=torch.float32), masks,
                      torch.stack([f.posterior for f in features]) if cached_posteriors else None)
        return batch.to(self.device)

    # --- conditioning ----------------------------------------------------------------------------------
    def encode_tokens(self, tokens: PromptTokens) -> Conditioning:
        hidden = self.encoder(tokens)
        states, pooled = self.connector(hidden, tokens.attention_mask)
        return Conditioning(states, pooled, tokens.attention_mask, tokens.entity_token_mask, tokens.entity_valid)

    def encode(self, prompts: list[list]) -> Conditioning:
        """Interleaved prompts (str / PIL segments; [] = the empty prompt used for CFG) -> Conditioning."""
        return self.encode_tokens(self.encoder.tokenize(prompts).to(self.device))

    def drop_condition(self, cond: Conditioning, drop: torch.Tensor) -> Conditioning:
        """Replace the samples where `drop` is True by the empty prompt's encoding (CFG training)."""
        if not bool(drop.any()):
            return cond
        empty = self.encode([[]])
        length = cond.hidden.shape[1]
        e_len = empty.hidden.shape[1]
        if e_len > length:
            raise ValueError("the empty prompt is longer than the batch's prompts")
        pad = lambda t: F.pad(t, (0, 0, 0, length - e_len)) if t.dim() == 3 else F.pad(t, (0, length - e_len))  # noqa: E731
        d = drop.to(cond.hidden.device)
        return Conditioning(
            hidden=torch.where(d[:, None, None], pad(empty.hidden).to(cond.hidden.dtype), cond.hidden),
            pooled=torch.where(d[:, None], empty.pooled.to(cond.pooled.dtype), cond.pooled),
            attention_mask=torch.where(d[:, None], pad(empty.attention_mask), cond.attention_mask),
            entity_token_mask=cond.entity_token_mask & ~d[:, None, None],
            entity_valid=cond.entity_valid & ~d[:, None],
        )

    def predict(self, latents, timesteps, cond: Conditioning, add_time_ids: torch.Tensor) -> torch.Tensor:
        """UNet prediction (noise or v) for noisy latents under a condition."""
        return self.unet(
            latents, timesteps,
            encoder_hidden_states=cond.hidden.to(self.unet.dtype),
            encoder_attention_mask=cond.attention_mask,
            added_cond_kwargs={"text_embeds": cond.pooled.to(self.unet.dtype), "time_ids": add_time_ids},
        ).sample

    # --- training ----------------------------------------------------------------------------------------
    def training_loss(self, batch: Batch, generator: torch.Generator, attn_loss: AttnLossConfig,
                      cfg_dropout: float = 0.0, snr_gamma: float | None = None) -> dict[str, torch.Tensor]:
        """Diffusion MSE, min-SNR-gamma weighted when `snr_gamma` is set (+ weight x attention-mask loss).
        Draws, in order, from `generator` (CPU): CFG dropout, VAE posterior sample, timesteps, noise."""
        bsz = len(batch.keys)
        drop = torch.rand(bsz, generator=generator) < cfg_dropout
        cond = self.drop_condition(self.encode_tokens(batch.tokens), drop)
        posteriors = batch.posteriors if batch.posteriors is not None else self.decoder.encode_posterior(batch.pixels)
        latents = self.decoder.sample_latents(posteriors, generator)
        sched = self.decoder.scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (bsz,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        t = t.to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)

        store = self.attn_store
        want_attn = attn_loss.weight > 0 and bool(cond.entity_valid.any())
        store.reset()
        store.enabled = store.recording = want_attn
        store.latent_hw = tuple(latents.shape[-2:])
        store.layers = None if attn_loss.layers == "all" else tuple(attn_loss.layers)
        store.entity_token_mask, store.token_reduce = cond.entity_token_mask, attn_loss.token_reduce
        try:
            pred = self.predict(noisy, t, cond, batch.add_time_ids)
        finally:
            store.recording = False
            # With gradient checkpointing the backward recomputes the forward: it must take the same path.
            store.enabled = want_attn and self.unet.is_gradient_checkpointing and self.training
        if want_attn and not store.maps:
            raise UserError(f"attn_loss.layers {list(attn_loss.layers)} matches no cross-attention layer: this UNet's "
                            f"attention resolutions are {sorted(store.resolutions)}")
        diffusion = self._diffusion_loss(pred.float(), target.float(), t, snr_gamma)
        attn = attention_mask_loss(store.maps, store.latent_hw, batch.entity_masks, cond.entity_valid) if want_attn \
            else diffusion.new_zeros(())
        store.maps = []  # entity_token_mask stays: a checkpointed backward recomputes with it
        return {"loss": diffusion + attn_loss.weight * attn, "diffusion": diffusion.detach(), "attn": attn.detach()}

    def _diffusion_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                        snr_gamma: float | None) -> torch.Tensor:
        if snr_gamma is None:
            return F.mse_loss(pred, target)

        # Min-SNR-gamma, as diffusers' training scripts: weight min(SNR, gamma) / SNR for epsilon targets and
        # min(SNR, gamma) / (SNR + 1) for v targets (v's MSE already carries a factor SNR + 1 over x0's).
        snr = compute_snr(self.decoder.scheduler, t)
        capped = snr.clamp(max=snr_gamma)
        weight = capped / (snr + 1) if self.decoder.scheduler.config.prediction_type == "v_prediction" \
            else capped / snr.clamp(min=1e-8)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=tuple(range(1, pred.dim())))
        return (per_sample * weight.to(per_sample)).mean()

    def forward(self, batch: Batch, generator: torch.Generator, attn_loss: AttnLossConfig,
                cfg_dropout: float = 0.0, snr_gamma: float | None = None) -> dict[str, torch.Tensor]:
        """= training_loss: the training loop calls the (possibly DDP-wrapped) module, so that data-parallel
        gradient synchronisation sees the forward."""
        return self.training_loss(batch, generator, attn_loss, cfg_dropout, snr_gamma)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters per learning-rate group (connector / encoder / unet)."""
        groups = {
            "connector": [p for p in self.connector.parameters() if p.requires_grad],
            "encoder": [p for p in self.encoder.parameters() if p.requires_grad],
            "unet": [p for p in self.decoder.unet.parameters() if p.requires_grad],
        }
        return {k: v for k, v in groups.items() if v}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        expected = {n for n, p in self.named_parameters() if p.requires_grad}
        if set(sd) != expected:
            raise ValueError(f"trainable weights do not match the model: {sorted(set(sd) ^ expected)[:4]}")
        result = self.load_state_dict(sd, strict=False)
        assert not result.unexpected_keys

    # --- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """safetensors + json only. Base weights of a part are written when they are not recoverable from
        the original source (built from config, or trained fully); LoRA adapters always via peft."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        saved = {
            "encoder": not cfg.encoder.model.is_pretrained or cfg.encoder.train_language_model == "full"
            or not cfg.encoder.freeze_vision,
            "unet": not cfg.decoder.unet.is_pretrained or cfg.decoder.train == "full",
            "vae": not cfg.decoder.vae.is_pretrained,
        }
        enc = self.encoder
        if saved["encoder"]:
            enc.load().save_pretrained(d / "encoder", state_dict=enc.base_state_dict())
        enc.processor.save_pretrained(d / "encoder")  # always: tokenization must match exactly
        if cfg.encoder.train_language_model == "lora":
            _save_safetensors(enc.lora_state_dict(), d / "encoder_lora" / "adapter_model.safetensors")
        self.connector.save(d / "connector")
        unet = self.unet
        if saved["unet"]:
            base = unet
            if cfg.decoder.train == "lora":  # a clean copy without the peft layers
                base = type(unet).from_config(unet.config)
                base.load_state_dict({k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items()
                                      if "lora_" not in k})
            base.save_pretrained(d / "unet")
        if cfg.decoder.train == "lora":
            _save_safetensors(get_peft_model_state_dict(unet), d / "unet_lora" / "adapter_model.safetensors")
        if saved["vae"]:
            self.vae.save_pretrained(d / "vae")
        write_json_atomic(d / "mumu_config.json", {
            "format": FORMAT_VERSION, "model": cfg.model_dump(mode="json"), "saved": saved,
        })

    @classmethod
    def from_pretrained(cls, directory: str | Path, lazy_encoder: bool = False) -> "MumuModel":
        """lazy_encoder: as in `from_config` (a frozen encoder only: LoRA or trained weights are read here)."""

        d = Path(directory)
        meta_path = d / "mumu_config.json"
        if not meta_path.exists():
            raise UserError(f"{d} is not a saved MumuModel (no mumu_config.json)")
        meta = json.loads(meta_path.read_text())
        cfg = ModelConfig.model_validate(meta["model"])
        saved = meta["saved"]
        local = lambda name, src: ModelSource(pretrained=str(d / name), dtype=src.dtype)  # noqa: E731

        if saved["encoder"]:
            encoder = PromptEncoder(cfg.encoder, source=local("encoder", cfg.encoder.model), lazy=lazy_encoder)
        else:
            encoder = PromptEncoder(cfg.encoder, processor=Idefics2Processor.from_pretrained(str(d / "encoder")),
                                    lazy=lazy_encoder)
        if cfg.encoder.train_language_model == "lora":
            encoder.load_lora_state_dict(load_file(str(d / "encoder_lora" / "adapter_model.safetensors")))
        dec_cfg = cfg.decoder
        unet = build_unet(dec_cfg.model_copy(update={"unet": local("unet", dec_cfg.unet)}) if saved["unet"] else dec_cfg)
        vae = build_vae(dec_cfg.model_copy(update={"vae": local("vae", dec_cfg.vae)}) if saved["vae"] else dec_cfg)
        decoder = Decoder(dec_cfg, unet, vae)
        if dec_cfg.train == "lora":
            result = set_peft_model_state_dict(unet, load_file(str(d / "unet_lora" / "adapter_model.safetensors")))
            if result.unexpected_keys:
                raise ValueError(f"UNet LoRA weights do not match: {result.unexpected_keys[:3]}")
        model = cls(cfg, encoder, Connector.load(d / "connector"), decoder)
        return model


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp))
