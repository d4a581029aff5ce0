"""Config of the multimodal-prompt generator: encoder → connector → UNet (+ VAE)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mumu.config.base import ModelSource, StrictModel


class LoraConfig(StrictModel):
    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class EncoderConfig(StrictModel):
    model: ModelSource  # Idefics2 class
    # MUMU: bypass the perceiver resampler so each image keeps `image_tokens` tokens
    # (patch features projected to the LM width and pooled); False = Idefics2's own resampler.
    bypass_resampler: bool = True
    image_tokens: int = Field(64, ge=1)
    freeze_vision: bool = True
    train_language_model: Literal["frozen", "lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig(enabled=True)
    # LoRA also on the modality projection (vision patch features -> LM width) when training with LoRA:
    # with the resampler bypassed it is the only trainable path from pixels into the prompt.
    lora_projector: bool = True
    # Longest prompt in tokens (image tokens included). Longer prompts are cut at a segment boundary:
    # an image whose tokens would be cut is dropped whole, with its entity mask.
    max_text_tokens: int = Field(256, ge=1)
    # Which side prompts are padded on in a batch; position ids follow the attention mask, so both
    # sides give the same hidden states for the real tokens.
    padding_side: Literal["left", "right"] = "right"
    # Recompute the language model's layers in backward (saves ~1.2 GB of activations per sample at 8B).
    gradient_checkpointing: bool = False
    # With the resampler bypassed, image features skip the perceiver's final RMSNorm, so they enter the LM at
    # the modality projection's scale (15-30x below the text embeddings in the tiny model, where they are
    # drowned by the text they attend to). "resampler": apply that norm (with its pretrained gain) to the
    # pooled features, the scale the LM was trained to read image tokens at; "none": as projected.
    image_feature_norm: Literal["none", "resampler"] = "resampler"

    @model_validator(mode="after")
    def _lora_consistent(self) -> "EncoderConfig":
        if self.lora.enabled != (self.train_language_model == "lora"):
            raise ValueError("encoder.lora.enabled must be true exactly when train_language_model is 'lora'")
        if self.bypass_resampler and round(self.image_tokens**0.5) ** 2 != self.image_tokens:
            raise ValueError("encoder.image_tokens must be a square number (pooled to a sqrt x sqrt grid)")
        return self


class ConnectorConfig(StrictModel):
    layers: int = Field(2, ge=1)  # torch's TransformerEncoder needs at least one layer
    heads: int = Field(8, ge=1)
    width: int = Field(1024, ge=1)  # a multiple of heads (checked below)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # pooled vector for SDXL's text_time conditioning: "mean" over non-padding tokens, or "last" token.
    pooling: Literal["mean", "last"] = "mean"
    # Recompute each layer in backward, keeping only its input: over a long prompt the layers' attention
    # probabilities and MLP activations are the largest thing training keeps (bench/sdxl_estimate.py prints it).
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ConnectorConfig":
        if self.width % self.heads:
            raise ValueError(f"connector.width {self.width} must be a multiple of connector.heads {self.heads}")
        return self


class DecoderConfig(StrictModel):
    unet: ModelSource  # diffusers UNet2DConditionModel (SDXL class: addition_embed_type="text_time")
    vae: ModelSource  # diffusers AutoencoderKL
    train: Literal["frozen", "lora", "full"] = "full"
    lora: LoraConfig = LoraConfig(enabled=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    resolution: int = Field(1024, ge=8, multiple_of=8)  # the VAE downsamples by up to 8
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: str = "scaled_linear"
    beta_start: float = Field(0.00085, gt=0.0, lt=1.0)
    beta_end: float = Field(0.012, gt=0.0, lt=1.0)  # > beta_start (checked below)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # Zero terminal SNR (Lin et al. 2024): rescale the betas so the last timestep is pure noise, as the sampler
    # assumes. Needs v_prediction (epsilon is undefined at SNR 0). Without it the model learns that some of the
    # image survives at t = T-1, and images drawn from pure noise keep the noise's low frequencies (mean colour).
    rescale_betas_zero_snr: bool = False
    # Recompute activations in backward: true = every UNet block; a list = only those top-level blocks
    # ("down_blocks.1", "mid_block", "up_blocks.0", ...): selective checkpointing, for blocks whose saved
    # activations are large next to their FLOPs (bench/sdxl_estimate.py prints both per block).
    gradient_checkpointing: bool | list[str] = False

    @model_validator(mode="after")
    def _lora_consistent(self) -> "DecoderConfig":
        if self.lora.enabled != (self.train == "lora"):
            raise ValueError("decoder.lora.enabled must be true exactly when train is 'lora'")
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("decoder.rescale_betas_zero_snr needs prediction_type v_prediction (epsilon is undefined at SNR 0)")
        if self.beta_start >= self.beta_end:
            raise ValueError(f"decoder.beta_start {self.beta_start} must be below beta_end {self.beta_end}")
        return self


class ModelConfig(StrictModel):
    encoder: EncoderConfig
    connector: ConnectorConfig = ConnectorConfig()
    decoder: DecoderConfig
