"""Config of generation and the evaluation flow."""

from __future__ import annotations

from typing import Literal

from mumu.config.base import ModelSource, StrictModel


class SamplerConfig(StrictModel):
    name: Literal["ddim", "euler"] = "ddim"
    steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None  # None = the decoder's training resolution
    width: int | None = None


class EvalConfig(StrictModel):
    sampler: SamplerConfig = SamplerConfig()
    samples_per_prompt: int = 4
    chunk_size: int = 16  # prompts per generation task
    dino: ModelSource  # DINO ViT-S/16 features (transformers ViTModel)
    clip: ModelSource  # CLIP ViT-B/32 (transformers CLIPModel)
    fid_batch_size: int = 32
