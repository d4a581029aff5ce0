"""Config of generation and the evaluation flow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mumu.config.base import SEED_MAX, ModelSource, StrictModel


class SamplerConfig(StrictModel):
    """How mumu.generate samples. Betas, timesteps and prediction type always come from the model's training
    scheduler; only the sampling choices below are configurable."""

    name: Literal["ddim", "euler"] = "ddim"
    steps: int = Field(50, ge=1)
    # Classifier-free guidance against the empty prompt; <= 1 means no guidance (the uncond pass is skipped).
    guidance_scale: float = Field(7.5, ge=0)
    # None = the decoder's training resolution; latents are 1/8 of the pixels for SDXL's VAE.
    height: int | None = Field(None, ge=8, multiple_of=8)
    width: int | None = Field(None, ge=8, multiple_of=8)
    # Where the sampling timesteps sit in [0, T): "trailing" starts at T-1, the noise level the sampler
    # starts from (Lin et al. 2024, "Common diffusion noise schedules ... are flawed"); it matters at the
    # few steps of the tiny profile. SDXL's published scheduler uses "leading" (+ steps_offset=1).
    timestep_spacing: Literal["leading", "linspace", "trailing"] = "trailing"
    batch_size: int = Field(8, ge=1)  # images per denoising batch (the UNet sees 2x this with guidance)
    # SDXL micro-conditioning's original size (a square side) told to the UNet. None = the size the model was
    # trained on most often (recorded in its model folder), else the target size (mumu/size_conditioning.py).
    original_size: int | None = Field(None, ge=8)


class BenchmarkConfig(StrictModel):
    """Which subject benchmark to run (layout: mumu/eval/benchmarks.py, docs/benchmarks.md)."""

    # A folder `<root>/subjects/<name>/*.png|jpg|webp` (+ optional prompts.json); None = the bundled
    # toy benchmark built from mumu/samples/emoji, so the default run needs nothing downloaded.
    root: str | None = None
    kinds: tuple[Literal["single", "multi"], ...] = ("single", "multi")
    max_subjects: int | None = Field(None, ge=1)  # first N subjects in sorted order; None = all
    max_templates: int | None = Field(None, ge=1)  # first N prompt templates of each kind; None = all
    # MultiBench-style: this many subject combinations of each size, drawn under `seed`.
    multi_sizes: tuple[Annotated[int, Field(ge=2)], ...] = (2, 3)  # 1 subject is the single benchmark
    multi_combinations: int = Field(8, ge=1)
    # Fidelity references of a single-subject item: "input" = the image put in the prompt (KOSMOS-G's
    # scripts), "subject" = every image of that subject (DreamBooth's DINO / CLIP-I protocol).
    references: Literal["input", "subject"] = "input"
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # How a subject's image enters its prompt; it must be how the checkpoint was tuned (mumu/data/compose.py):
    # "mumu" = before the subject's name ("a <image> dog in the jungle"), "unimo" = in place of it ("a <image> in
    # the jungle"). None = the profile's train.tune.prompt_mode, filled in by load_profile.
    prompt_mode: Literal["mumu", "unimo"] | None = None


class FidConfig(StrictModel):
    """"FID" here = Fréchet distance between encoder features of generated and reference images.

    InceptionV3 cannot be loaded on this project's machines (see mumu/eval/metrics.py), so the
    features come from one of the evaluation encoders: "clip" = CLIP image embeddings (clean-fid's
    `model_name="clip_vit_b_32"` FID), "dino" = DINO CLS features (FD_DINO-style).
    """

    features: Literal["clip", "dino"] = "clip"
    # Folder of real images to compare against (e.g. COCO val); None = the benchmark's subject images.
    reference_dir: str | None = None
    max_reference_images: int | None = Field(None, ge=2)


class CopyingConfig(StrictModel):
    """The copy-paste score's "other real images" where a subject has only one (mumu/eval/copying.py)."""

    # Held-out renderings of a one-image toy subject: the emoji composed alone on a scene background at another
    # scale and position, as the training scenes show it (mumu/data/scenes.py), drawn under `seed`.
    held_out_renderings: int = Field(4, ge=2)  # >= 2: the real-image ceiling leaves one out against the rest
    held_out_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.45, 0.8)
    seed: int = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _scale_range(self) -> "CopyingConfig":
        low, high = self.held_out_scale
        if low > high:
            raise ValueError(f"held_out_scale must be (low, high) with low <= high, got {self.held_out_scale}")
        return self


class BootstrapConfig(StrictModel):
    """Percentile bootstrap over a benchmark's prompts (mumu/eval/bootstrap.py): items are resampled with
    replacement, each keeping all of its images, so the interval says how much the score would move on another
    draw of prompts of the same kind."""

    resamples: int = Field(1000, ge=10)
    # FID is refitted on every resample (two eigendecompositions of D x D each): fewer resamples keep it seconds.
    fid_resamples: int = Field(200, ge=0)  # 0 = no FID interval
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)


class ReportConfig(StrictModel):
    grid_cell: int = Field(128, ge=8)  # pixels per image in the report's grids
    max_grids: int = Field(8, ge=0)  # grids per benchmark (one per subject set first: report.grid_items)


class EvalConfig(StrictModel):
    sampler: SamplerConfig = SamplerConfig()
    # The named protocol this evaluation follows (mumu/eval/presets.py; `mumu evaluate --protocol NAME` sets it
    # with its values). A record: the report names it and every setting that differs from it.
    protocol: Literal["unimo-g"] | None = None
    samples_per_prompt: int = Field(4, ge=1)
    chunk_size: int = Field(16, ge=1)  # prompts per generation task
    seed: int = Field(0, ge=0, le=SEED_MAX)  # per-item sampling seeds derive from this and the item id
    dino: ModelSource  # DINO ViT-S/16 features (transformers ViTModel)
    clip: ModelSource  # CLIP ViT-B/32 (transformers CLIPModel)
    batch_size: int = Field(32, ge=1)  # images per encoder forward pass (DINO, CLIP, FID features)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    fid: FidConfig = FidConfig()
    report: ReportConfig = ReportConfig()
    copying: CopyingConfig = CopyingConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
