"""Config of the two training stages (text-to-image pretraining, multimodal instruction tuning)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mumu.config.base import SEED_MAX, StrictModel


class LearningRates(StrictModel):
    # MUMU: connector 1e-5; LoRA 3e-6 (encoder) / 5e-6 (UNet).
    # 0 leaves a group's weights where they are (they still get gradients: freeze in the model config).
    connector: float = Field(1e-5, ge=0.0)
    encoder: float = Field(3e-6, ge=0.0)
    unet: float = Field(5e-6, ge=0.0)


class AttnLossConfig(StrictModel):
    """UNIMO-G visual-enhanced learning: L1 between entity cross-attention maps and masks."""

    weight: float = Field(0.0, ge=0.0)
    # Which attn2 layers to read: "all", or resolutions in latent pixels (e.g. [16, 32]).
    layers: Literal["all"] | list[Annotated[int, Field(ge=1)]] = "all"
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
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_steps: int = Field(1000, ge=1)
    lr: LearningRates = LearningRates()
    warmup_steps: int = Field(100, ge=0)
    # diffusers.optimization.get_scheduler name, applied after the linear warmup.
    lr_schedule: Literal["constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    max_grad_norm: float = Field(1.0, gt=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    cfg_dropout: float = Field(0.1, ge=0.0, le=1.0)  # share of samples trained with the empty condition (classifier-free guidance)
    # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' training scripts' --snr_gamma): caps the weight
    # of low-noise timesteps, where the target is nearly given by the input. None = plain MSE. Off in the tiny
    # profile: with v targets it also weighs the high-noise steps, where the condition decides the picture,
    # down towards zero, and it slowed learning of the condition there (docs/recipe.md).
    snr_gamma: float | None = Field(None, gt=0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)  # None = no EMA
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = Field(500, ge=1)  # the last step is always saved too
    keep_checkpoints: int = Field(3, ge=1)  # newest checkpoints kept on disk (older ones are deleted after a save)
    sample_every: int = Field(500, ge=0)  # 0 = no preview grids
    sample_steps: int = Field(4, ge=1)  # denoising steps of the periodic preview grid (deterministic DDIM)
    log_every: int = Field(10, ge=1)
    shuffle_buffer: int = Field(256, ge=1)  # raw samples held for shuffling (per loader worker)
    loader_workers: int = Field(0, ge=0)  # torch DataLoader workers; the sample order depends on this number
    prompt_mode: Literal["text", "mumu", "unimo"] = "text"
    # Share of draws trained on the plain caption instead of the multimodal prompt (UNIMO-G: 10 %). The one
    # knob for it: the data stage writes every sample with both, and the loader flips this coin per draw,
    # so every sample is seen with its images on the other draws, and the share can change per stage or
    # run without rebuilding the data (mumu/train/data.py `_view`). No effect with prompt_mode "text".
    text_only_share: float = Field(0.1, ge=0.0, le=1.0)
    attn_loss: AttnLossConfig = AttnLossConfig()
    augment: AugmentConfig = AugmentConfig(share=0.0)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class FeaturesConfig(StrictModel):
    """The feature cache: outputs of the frozen parts, computed once per sample by `mumu cache-features` and read by
    training instead of recomputing them every step (mumu/train/features.py; the numbers: docs/feature_cache.md).

    The rule: cache a frozen output when it saves at least 1 TFLOP per MB it stores (1 FLOP per byte x 10^6). The
    full-size counts (bench/sdxl_estimate.py; crops of 378-980 px, 3 a prompt) put each part far to one side:
    - the target's VAE posterior (mean and log-variance, so training still samples it): 4.9 TFLOPs for 0.52 MB,
      9.3 MFLOP/B: cached;
    - the prompt's hidden states when the whole encoder is frozen (UNIMO-G): 6-28 TFLOPs for 2.6 MB, 2.4-11
      MFLOP/B: cached;
    - the vision tower's patch features of a prompt image (MUMU, where the LM after it trains): 1.6-17 TFLOPs
      for 5-34 MB, 0.32-0.50 MFLOP/B: 20-30x less per byte, 10-100x the sample's own shard bytes, so off in
      mumu-sdxl (where the disk holds that much, turning it on takes its cached step from 0.95x to 0.79x of the
      uncached one with 980 px crops, 0.94x to 0.92x with 378 px); on in tiny, where bytes are no object.
    Augmentation: the target has one deterministic view (resize + centre crop, no random crop or flip), so its
    posterior is one tensor per sample. An augmented prompt image (MUMU's crop augmentation) is new pixels: it
    and, with the prompt cache, its whole prompt are computed from pixels; the cache holds the unaugmented ones.
    """

    latents: bool = True  # the VAE posterior of each training target
    vision: bool = True  # the vision tower's features of each prompt image (only with model.encoder.freeze_vision)
    prompt: bool = True  # the prompt's hidden states (only when the whole encoder is frozen)
    # auto: use the cache for this model when `cache-features` wrote it, else compute from pixels (one log line
    # says which); require: no usable cache is an error; off: always compute from pixels.
    use: Literal["auto", "require", "off"] = "auto"
    batch_size: int = Field(16, ge=1)  # samples per forward of the cache-features stage


class TrainConfig(StrictModel):
    features: FeaturesConfig = FeaturesConfig()
    pretrain: StageConfig = StageConfig(prompt_mode="text")
    tune: StageConfig = Field(
        default_factory=lambda: StageConfig(
            prompt_mode="mumu", attn_loss=AttnLossConfig(weight=0.01), augment=AugmentConfig()
        )
    )
