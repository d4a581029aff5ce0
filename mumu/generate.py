"""Generation from multimodal prompts: `MumuSampler` (DDIM / Euler + classifier-free guidance) and
`generate_to_file` for the CLI. Plain functions and classes, no Prefect.

Sampler: a diffusers DDIMScheduler or EulerDiscreteScheduler built `from_config` of the model's training
(DDPM) scheduler, so betas, number of train timesteps and prediction type are the trained ones; only the
sampling choices of `SamplerConfig` (steps, timestep spacing) are added, plus `clip_sample=False` for
DDIM (latents are not bounded to [-1, 1]; the DDPM default only matters when sampling, never in training).

Unconditional branch: by default the trainer's own "dropped" condition, `MumuModel.drop_condition(cond,
all True)`: the empty prompt `[]` encoded alone (one token) and right-padded with masked zero positions to
the batch's length, with its own pooled vector. `negative=` replaces it with an encoded negative prompt.
cond and uncond go through the UNet in one batch and eps = u + s * (c - u); s <= 1 runs cond only.

Seeds: image i of a prompt starts from noise drawn by its own `torch.Generator(seed + i)` (and any noise
the scheduler draws comes from it too), so it does not depend on `n`, on the other prompts of a batch or
on `batch_size`. The pixels agree up to float rounding: a batch pads prompts to a common length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import make_image_grid
from diffusers.utils.torch_utils import randn_tensor
from safetensors import SafetensorError

from models.mumu_model import Conditioning, MumuModel
from mumu.config.eval import SamplerConfig
from mumu.errors import UserError
from mumu.io import atomic_path
from mumu.prompt_syntax import parse_json, parse_prompt
from mumu.runs import model_dir as resolve_model_dir
from mumu.size_conditioning import read_original_size, sampling_original_size

log = logging.getLogger(__name__)

Prompt = list  # list[str | PIL.Image.Image]


# --- checkpoints ------------------------------------------------------------------------------------------
def load_model(path: str | Path, device: str | torch.device = "cpu"):
    model_dir = resolve_model_dir(path)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available")
    try:
        model = MumuModel.from_pretrained(model_dir)
    except (ValueError, OSError, KeyError, TypeError, SafetensorError) as exn:  # corrupt / partial model dirs
        first = (str(exn).strip().splitlines() or [type(exn).__name__])[0]
        raise UserError(f"cannot load the model in {model_dir}: {first}") from exn
    # What training recorded about its images' sizes travels with the model to every sampler built on it.
    model.trained_original_size = read_original_size(model_dir)
    return model.to(device)


# --- schedulers -------------------------------------------------------------------------------------------
def build_scheduler(cfg: SamplerConfig, train_config: dict):
    """The sampling scheduler from the training scheduler's config (same betas / prediction type)."""
    # Overrides go in as keyword arguments: from_config drops config keys the source class left at their
    # defaults (`_use_default_values`), but keyword arguments always win.
    if cfg.name == "ddim":
        return DDIMScheduler.from_config(train_config, timestep_spacing=cfg.timestep_spacing, clip_sample=False)
    if cfg.name == "euler":
        return EulerDiscreteScheduler.from_config(train_config, timestep_spacing=cfg.timestep_spacing)
    raise UserError(f"unknown sampler {cfg.name!r}: choose ddim or euler")


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _flatten_alpha(seg):
    """Transparent prompt images over white, as mumu.prompt_syntax.load_image and the data stage's masked
    segments do (a plain convert("RGB") would show whatever colour the transparent pixels hold)."""
    if not isinstance(seg, PIL.Image.Image):
        return seg
    if seg.mode in ("RGBA", "LA", "PA") or (seg.mode == "P" and "transparency" in seg.info):
        rgba = seg.convert("RGBA")
        return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return seg


def _as_prompt(prompt) -> Prompt:
    if isinstance(prompt, (str, PIL.Image.Image)):
        prompt = [prompt]
    if isinstance(prompt, (list, tuple)):
        return [_flatten_alpha(seg) for seg in prompt]
    raise UserError(f"a prompt must be a list of text / PIL image segments, not {type(prompt).__name__}")


def _cat_conditioning(first, second):
    """Two Conditionings of equal length -> one (first's rows, then second's)."""
    cat = lambda a, b: torch.cat([a, b])  # noqa: E731
    return Conditioning(cat(first.hidden, second.hidden), cat(first.pooled, second.pooled),
                        cat(first.attention_mask, second.attention_mask),
                        cat(first.entity_token_mask, second.entity_token_mask),
                        cat(first.entity_valid, second.entity_valid))


def _select(cond, index: torch.Tensor):
    return Conditioning(*(t.index_select(0, index.to(t.device)) for t in
                          (cond.hidden, cond.pooled, cond.attention_mask, cond.entity_token_mask, cond.entity_valid)))


# --- the sampler ------------------------------------------------------------------------------------------
class MumuSampler:
    """Samples images from a MumuModel (put in eval mode, attention capture off). Each call builds its own
    scheduler, so one sampler can serve successive calls with different settings."""

    def __init__(self, model, sampler_cfg: SamplerConfig | None = None):
        self.model = model.eval()
        # Cross-attention capture is a training feature: off, every layer runs the stock SDPA processor.
        model.attn_store.enabled = model.attn_store.recording = False
        self.cfg = sampler_cfg or SamplerConfig()
        self.image_processor = VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)

    @classmethod
    def from_checkpoint(cls, path: str | Path, sampler_cfg: SamplerConfig | None = None,
                        device: str | torch.device = "cpu") -> "MumuSampler":
        return cls(load_model(path, device), sampler_cfg)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- public API ---------------------------------------------------------------------------------------
    def generate(self, prompt: Prompt, n: int = 1, seed: int = 0, *, steps: int | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 negative: Prompt | str | None = None) -> list[PIL.Image.Image]:
        """n images for one prompt; image i is drawn from seed + i. Keyword arguments override the
        SamplerConfig for this call; `negative` (a prompt) replaces the empty-prompt uncond and is unused
        when guidance_scale <= 1."""
        return self.generate_batch([prompt], n, seed, steps=steps, guidance_scale=guidance_scale,
                                   height=height, width=width, negative=negative)[0]

    def generate_batch(self, prompts: Sequence[Prompt], n: int = 1, seed: int | Sequence[int] = 0, *,
                       steps: int | None = None, guidance_scale: float | None = None, height: int | None = None,
                       width: int | None = None, negative: Prompt | str | None = None) -> list[list[PIL.Image.Image]]:
        """n images for each prompt, denoised together in batches of `batch_size` images.

        seed: one int (every prompt's image i uses seed + i, so result[j] == generate(prompts[j], n, seed)),
        or one seed per prompt.
        """
        prompts = [_as_prompt(p) for p in prompts]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"n must be a positive integer, got {n!r}")
        seeds = [seed] * len(prompts) if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise UserError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        steps = self.cfg.steps if steps is None else steps
        scale = self.cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps must be a positive integer, got {steps!r}")
        if not math.isfinite(scale) or scale < 0:
            raise UserError(f"guidance_scale must be a finite number >= 0, got {scale!r}")
        h, w = self._size(height, width)
        neg = None if negative is None else _as_prompt(negative)

        jobs = [(j, seeds[j] + i) for j in range(len(prompts)) for i in range(n)]  # (prompt index, image seed)
        images: list[PIL.Image.Image] = []
        size = self.cfg.batch_size
        for start in range(0, len(jobs), size):
            chunk = jobs[start:start + size]
            images += self._sample_chunk(prompts, chunk, steps, scale, h, w, neg)
        return [images[j * n:(j + 1) * n] for j in range(len(prompts))]

    # --- internals ----------------------------------------------------------------------------------------
    def _size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default = self.model.cfg.decoder.resolution
        h = height if height is not None else (self.cfg.height or default)
        w = width if width is not None else (self.cfg.width or default)
        f = self.model.vae_scale_factor
        for name, v in (("height", h), ("width", w)):
            if isinstance(v, bool) or not isinstance(v, int) or v < f or v % f:
                raise UserError(f"{name} must be a positive multiple of the VAE scale factor {f}, got {v!r}")
        return h, w

    def original_size(self, target: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of SDXL's micro-conditioning for images of size `target` (mumu/size_conditioning.py)."""
        return sampling_original_size(self.cfg.original_size, getattr(self.model, "trained_original_size", None),
                                      target)

    def encode(self, prompts: list[Prompt], negative: Prompt | None, guided: bool):
        """(cond [P, L], uncond [P, L] or None) for P prompts; one encoder pass."""
        model = self.model
        rows = prompts + ([negative] if negative is not None and guided else [])
        tokens = model.encoder.tokenize(rows)
        if tokens.dropped:
            log.warning("%d prompt image(s) dropped: the prompt is longer than encoder.max_text_tokens=%d",
                        tokens.dropped, model.cfg.encoder.max_text_tokens)
        cond = model.encode_tokens(tokens.to(model.device))
        if not guided:
            return cond, None
        if negative is None:
            # Exactly the trainer's CFG-dropout condition (same call), so guidance pulls away from what the
            # model learned as "no prompt".
            return cond, model.drop_condition(cond, torch.ones(len(prompts), dtype=torch.bool))
        p = len(prompts)
        cond_rows, neg_row = _select(cond, torch.arange(p)), _select(cond, torch.tensor([p]))
        return cond_rows, _select(neg_row, torch.zeros(p, dtype=torch.long))

    @torch.no_grad()
    def _sample_chunk(self, prompts, chunk, steps, scale, h, w, negative) -> list[PIL.Image.Image]:
        model, device = self.model, self.device
        guided = scale > 1.0
        used = sorted({j for j, _ in chunk})
        cond, uncond = self.encode([prompts[j] for j in used], negative, guided)
        row = torch.tensor([used.index(j) for j, _ in chunk])  # each image's prompt row
        cond = _select(cond, row)
        if guided:
            cond = _cat_conditioning(_select(uncond, row), cond)  # [uncond; cond]: one UNet batch
        b = len(chunk)
        time_ids = torch.tensor([model.decoder.add_time_ids(self.original_size((h, w)), (0, 0), (h, w))]
                                * (2 * b if guided else b), dtype=torch.float32, device=device)

        sched = build_scheduler(self.cfg, model.scheduler_config)
        sched.set_timesteps(steps, device=device)
        gens = image_generators([s for _, s in chunk])
        f = model.vae_scale_factor
        shape = (b, model.unet.config.in_channels, h // f, w // f)
        latents = randn_tensor(shape, generator=gens, device=device, dtype=torch.float32) * sched.init_noise_sigma
        unet_dtype = model.unet.dtype
        for t in sched.timesteps:
            x = torch.cat([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, t).to(unet_dtype)
            out = model.predict(x, t, cond, time_ids).float()
            if guided:
                u, c = out.chunk(2)
                out = u + scale * (c - u)
            latents = sched.step(out, t, latents, generator=gens).prev_sample
        pixels = model.decoder.decode_latents(latents).float()  # [-1, 1]
        return [im.convert("RGB") for im in self.image_processor.postprocess(pixels.cpu(), output_type="pil")]


# --- CLI helper -------------------------------------------------------------------------------------------
def output_paths(out_path: str | Path, n: int, grid: bool = False) -> list[Path]:
    """out.png for one image (or a grid); out-0.png .. out-{n-1}.png beside it for n > 1."""
    out = Path(out_path)
    PIL.Image.init()
    if out.suffix.lower() not in PIL.Image.registered_extensions():
        raise UserError(f"output {out} needs an image extension such as .png, .jpg or .webp")
    if n == 1 or grid:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def generate_to_file(checkpoint: str | Path | MumuSampler, prompt_text_or_json: str | list, out_path: str | Path,
                     n: int = 1, seed: int = 0, sampler_cfg: SamplerConfig | None = None,
                     base_dir: str | Path | None = None, *, grid: bool = False,
                     device: str | torch.device = "cpu") -> list[Path]:
    """Parse a prompt (inline `<image:path>` syntax or JSON segments; paths relative to base_dir), generate
    n images and write them atomically: out_path for n == 1, else out-0.png .. out-{n-1}.png, or with
    grid=True one image at out_path with the n samples side by side (left to right = seed, seed+1, ...).
    Returns the paths written. The prompt and output path are checked before the model is loaded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"n must be a positive integer, got {n!r}")
    paths = output_paths(out_path, n, grid)
    if isinstance(prompt_text_or_json, list):
        prompt = parse_json(prompt_text_or_json, base_dir)
    else:
        prompt = parse_prompt(prompt_text_or_json, base_dir)
    if isinstance(checkpoint, MumuSampler):
        sampler = checkpoint if sampler_cfg is None else MumuSampler(checkpoint.model, sampler_cfg)
    else:
        sampler = MumuSampler.from_checkpoint(checkpoint, sampler_cfg, device)
    images = sampler.generate(prompt, n, seed)
    if grid:
        images = [make_image_grid(images, rows=1, cols=n)]
    for image, path in zip(images, paths):
        with atomic_path(path) as tmp:
            image.save(tmp, format=PIL.Image.registered_extensions()[path.suffix.lower()])
    return paths
