"""Config of the multimodal-prompt generator: encoder → connector → UNet (+ VAE)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mumu.config.base import ModelSource, StrictModel


class LoraConfig(StrictModel):
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class EncoderConfig(StrictModel):
    model: ModelSource  # Idefics2 class
    # MUMU: bypass the perceiver resampler so each image keeps `image_tokens` tokens
    # (patch features projected to the LM width and pooled); False = Idefics2's own resampler.
    bypass_resampler: bool = True
    image_tokens: int = 64
    freeze_vision: bool = True
    train_language_model: Literal["frozen", "lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig(enabled=True)
    max_text_tokens: int = 256


class ConnectorConfig(StrictModel):
    layers: int = 2
    heads: int = 8
    width: int = 1024
    dropout: float = 0.0
    # pooled vector for SDXL's text_time conditioning: "mean" over non-padding tokens, or "last" token.
    pooling: Literal["mean", "last"] = "mean"


class DecoderConfig(StrictModel):
    unet: ModelSource  # diffusers UNet2DConditionModel (SDXL class: addition_embed_type="text_time")
    vae: ModelSource  # diffusers AutoencoderKL
    train: Literal["frozen", "lora", "full"] = "full"
    lora: LoraConfig = LoraConfig(enabled=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    resolution: int = 1024
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    gradient_checkpointing: bool = False


class ModelConfig(StrictModel):
    encoder: EncoderConfig
    connector: ConnectorConfig = ConnectorConfig()
    decoder: DecoderConfig
