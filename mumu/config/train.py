"""Config of the two training stages (text-to-image pretraining, multimodal instruction tuning)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mumu.config.base import StrictModel


class LearningRates(StrictModel):
    # MUMU: connector 1e-5; LoRA 3e-6 (encoder) / 5e-6 (UNet).
    connector: float = 1e-5
    encoder: float = 3e-6
    unet: float = 5e-6


class AttnLossConfig(StrictModel):
    """UNIMO-G visual-enhanced learning: L1 between entity cross-attention maps and masks."""

    weight: float = 0.0
    # Which attn2 layers to read: "all", or resolutions in latent pixels (e.g. [16, 32]).
    layers: Literal["all"] | list[int] = "all"
    # How an entity's tokens are reduced: "mean" over its tokens, or "sum" (total attention mass).
    token_reduce: Literal["mean", "sum"] = "sum"


class AugmentConfig(StrictModel):
    """MUMU's conditioning-image augmentation, applied to a share of crops."""

    share: float = Field(0.5, ge=0.0, le=1.0)  # probability that a prompt image is augmented
    random_crop: float = Field(0.9, gt=0.0, le=1.0)  # keep at least this fraction of each side (1: no crop)
    flip: bool = True
    noise_std: float = Field(0.02, ge=0.0)  # gaussian pixel noise, in units of the 0..1 pixel range
    grayscale: float = Field(0.1, ge=0.0, le=1.0)  # probability of converting to grayscale


class StageConfig(StrictModel):
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    lr: LearningRates = LearningRates()
    warmup_steps: int = 100
    # diffusers.optimization.get_scheduler name, applied after the linear warmup.
    lr_schedule: Literal["constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    cfg_dropout: float = 0.1  # share of samples trained with the empty condition (classifier-free guidance)
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' training scripts' --snr_gamma): caps the weight
    # of low-noise timesteps, where the target is nearly given by the input, so the steps that decide layout and
    # colour (high noise, where the condition matters) are not outweighed. None = plain MSE.
    snr_gamma: float | None = Field(None, gt=0)
    ema_decay: float | None = None
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # newest checkpoints kept on disk (older ones are deleted after a save)
    sample_every: int = 500
    sample_steps: int = 4  # denoising steps of the periodic preview grid (deterministic DDIM)
    log_every: int = 10
    shuffle_buffer: int = Field(256, ge=1)  # raw samples held for shuffling (per loader worker)
    loader_workers: int = Field(0, ge=0)  # torch DataLoader workers; the sample order depends on this number
    prompt_mode: Literal["text", "mumu", "unimo"] = "text"
    text_only_share: float = Field(0.1, ge=0.0, le=1.0)  # extra multimodal samples trained on the caption alone
    attn_loss: AttnLossConfig = AttnLossConfig()
    augment: AugmentConfig = AugmentConfig(share=0.0)
    seed: int = 0


class TrainConfig(StrictModel):
    pretrain: StageConfig = StageConfig(prompt_mode="text")
    tune: StageConfig = Field(
        default_factory=lambda: StageConfig(
            prompt_mode="mumu", attn_loss=AttnLossConfig(weight=0.01), augment=AugmentConfig()
        )
    )
