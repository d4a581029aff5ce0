"""The training loop shared by both stages (1: text-to-image pretraining, 2: instruction tuning with the
attention-mask loss). Plain functions, no Prefect: tasks/train.py `train_stage` runs `train` as a Prefect task
(mumu/train/entry.py runs it in each process under `accelerate launch`).

Reproducibility: every random draw of optimizer step s, micro-batch m (CFG dropout, VAE posterior
sample, timesteps, noise; torch's global RNG for dropout) comes from a generator seeded by
(seed, s, m), and the data stream is addressed by batch index, so a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mumu.config import ProfileConfig, config_hash, load_profile
from mumu.errors import UserError
from mumu.io import write_json_atomic
from mumu.size_conditioning import SizeTally, write_sizes
from mumu.train.checkpoint import clean_partial, list_checkpoints, load_checkpoint, save_checkpoint
from mumu.train.features import find_cache
from mumu.train.optim import build_ema, build_lr_scheduler, build_optimizer, step_generator
from mumu.train.preview import sample_grid

STAGES = ("pretrain", "tune")
TRAINING_FILE = "training.json"  # in a stage's model folder: the stage and its prompt mode
PREVIEW_PROMPTS = 4


class TrainingError(UserError):
    """Training cannot continue (non-finite loss, data ran out); the message names the step."""

    def __init__(self, step: int, message: str):
        super().__init__(f"step {step}: {message}")
        self.step = step


@dataclass
class TrainResult:
    stage: str
    out_dir: Path
    model_dir: Path
    start_step: int  # 0, or the checkpoint step this run resumed from
    steps: int  # last step trained
    losses: list[float]  # mean loss of every step 1..steps (restored from the checkpoint on resume)
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def _default_iterate(*args, **kwargs):
    from mumu.train.data import iterate_examples

    return iterate_examples(*args, **kwargs)


def run_seed(profile: ProfileConfig, stage_name: str) -> int:
    stage = getattr(profile.train, stage_name)
    return int(np.random.SeedSequence([profile.runtime.seed, stage.seed, STAGES.index(stage_name)])
               .generate_state(1)[0])


def keeps_torch_threads(fn: Callable) -> Callable:
    """Run `fn` and give the process its torch intra-op thread count back: a training stage sets its own
    (`runtime.train_torch_threads`), and whatever runs next in the process (a worker's data or evaluation task)
    must not compute with it — float results depend on the thread count."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


def check_init_config(init: Path, model_cfg) -> None:
    """A stage started from a saved model is built from that model's config: refuse a profile whose model.*
    says otherwise (a changed setting would otherwise be silently ignored)."""
    meta = init / "mumu_config.json"
    if not meta.exists():
        raise UserError(f"init {init} is not a saved model directory (expected a stage's out_dir/model)")
    saved = json.loads(meta.read_text())["model"]
    differ = _differences(saved, model_cfg.model_dump(mode="json"), "model")
    if differ:
        raise UserError(f"init {init} was saved with another model config ({', '.join(differ[:4])}"
                        f"{', ...' if len(differ) > 4 else ''}): a stage started from it keeps its model, so give "
                        f"both stages the same model.* settings")


def _differences(a, b, prefix: str) -> list[str]:
    """Dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}")]
    return [] if a == b else [prefix]


@keeps_torch_threads
def train(
    stage_name: str,
    profile: ProfileConfig | str,
    data_urls: list[str],
    out_dir: str | Path,
    init: str | Path | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    iterate: Callable[..., Iterator[list]] = _default_iterate,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_sample: Callable[[int, Path], None] | None = None,
    on_resume: Callable[[int, Path], None] | None = None,
    on_info: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one stage; checkpoints, TensorBoard scalars, preview grids and the final model go to out_dir.

    init: a saved MumuModel directory (stage 2 starts from stage 1's out_dir/model); None = from config.
    iterate(data_urls, stage, seed, start_step=...) yields batches of Examples (mumu.train.data).
    on_resume(step, checkpoint) is called once (main process) when the run continues from a checkpoint.
    on_info(line) gets the line that says whether the frozen parts come from the feature cache
    (mumu/train/features.py): the losses are the same either way, so a run may resume with or without it.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from torch.utils.tensorboard import SummaryWriter

    from models.hf import resolve_device
    from models.mumu_model import MumuModel

    t_start = time.perf_counter()
    profile = load_profile(profile) if isinstance(profile, str) else profile
    if stage_name not in STAGES:
        raise UserError(f"unknown stage {stage_name!r}: choose one of {', '.join(STAGES)}")
    stage = getattr(profile.train, stage_name)
    if threads := profile.runtime.train_torch_threads or profile.runtime.torch_threads:
        torch.set_num_threads(threads)
    total = max_steps if max_steps is not None else stage.max_steps
    if total < 1:  # the config bounds max_steps; an explicit max_steps must obey the same bound
        raise UserError(f"max_steps must be at least 1, got {total}")
    accum = stage.gradient_accumulation_steps
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = run_seed(profile, stage_name)
    fingerprint = {"stage": stage_name, "stage_config": config_hash(stage), "model_config": config_hash(profile.model),
                   "init": str(Path(init).resolve()) if init else None, "seed": seed}

    # --- model, optimizer, schedule -------------------------------------------------------------------
    device = resolve_device(profile.runtime)
    # find_unused_parameters: a text-only batch leaves the modality projection's LoRA without gradient.
    accelerator = Accelerator(mixed_precision=stage.mixed_precision, gradient_accumulation_steps=accum,
                              cpu=device.type == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if init is not None:
        check_init_config(Path(init), profile.model)
    cache, cache_line = find_cache(data_urls, profile.model, profile.train) if data_urls else (None, "")
    # Under a prompt cache the frozen encoder is loaded only if a prompt the cache lacks comes (an augmented one):
    # the cached states stand for every other prompt, the empty one of CFG dropout included.
    lazy = cache is not None and cache.has_prompts
    model = (MumuModel.from_pretrained(init, lazy_encoder=lazy) if init is not None
             else MumuModel.from_config(profile.model, lazy_encoder=lazy))
    model.to(accelerator.device)
    model.train()
    groups = model.parameter_groups()
    trainable = [p for params in groups.values() for p in params]
    optimizer = build_optimizer(groups, stage)
    lr_scheduler = build_lr_scheduler(optimizer, stage, total)
    ema = build_ema(trainable, stage.ema_decay) if stage.ema_decay else None
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)

    # --- resume ----------------------------------------------------------------------------------------
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    ckpt_dir = out_dir / "checkpoints"
    if main:
        clean_partial(ckpt_dir)
    accelerator.wait_for_everyone()
    start, losses = 0, []
    sizes = SizeTally()  # original sizes trained on: the sampler's default micro-conditioning (size_conditioning.py)
    checkpoints = list_checkpoints(ckpt_dir)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1].path, model=core, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                ema=ema)
        if state.get("fingerprint") != fingerprint:
            raise UserError(f"{checkpoints[-1].path} was written by a different stage/config/init/seed: "
                            f"use a new out_dir or resume=False")
        start, losses = state["step"], list(state["losses"])
        sizes = SizeTally(state.get("original_sizes"))
        if main and on_resume is not None:
            on_resume(start, checkpoints[-1].path)
    elif not resume and checkpoints and main:
        shutil.rmtree(ckpt_dir)

    # --- loop ------------------------------------------------------------------------------------------
    writer = SummaryWriter(str(out_dir / "tb"), purge_step=start + 1) if main else None
    # Batch k of the stream is micro-batch k of this process (the loader deals shards to ranks).
    with_cache = {"features": cache} if cache is not None else {}
    shard = {"rank": rank, "world_size": world, **with_cache} if world > 1 else with_cache
    if lazy:
        core.encoder.remember(cache.empty_prompt_states())
        cache_line += "; the prompt encoder is not loaded"
    report_encoder_load = lazy and main and on_info is not None  # said once, if a prompt the cache lacks loads it
    if main and on_info is not None and cache_line:
        on_info(cache_line)
    batches = iterate(data_urls, stage, seed, start_step=start * accum, **shard)
    preview_prompts: list[list] | None = None
    saved, samples = [], []
    try:
        for step in range(start + 1, total + 1):
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "diffusion": 0.0, "attn": 0.0}
            for micro in range(accum):
                try:
                    examples = next(batches)
                except StopIteration:
                    raise TrainingError(step, "the training data ran out (iterate_examples should be endless)") from None
                batch = core.prepare(examples)
                sizes.add((ex.image.height, ex.image.width) for ex in examples)
                generator = step_generator(seed, step, micro, rank)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = model(batch, generator, stage.attn_loss, stage.cfg_dropout, stage.snr_gamma)
                    if not torch.isfinite(out["loss"]):
                        raise TrainingError(step, f"loss is {out['loss'].item()} (diffusion {out['diffusion'].item()}, "
                                                  f"attn {out['attn'].item()}): lower the learning rate or check the data")
                    accelerator.backward(out["loss"])
                    grad_norm = None
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(trainable, stage.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k in sums:
                    sums[k] += out[k].item() / accum
            lrs = {f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}  # the lr this step used
            lr_scheduler.step()
            if ema is not None:
                ema.step(trainable)
            losses.append(sums["loss"])
            if report_encoder_load and core.encoder.loaded:
                on_info(f"step {step}: a prompt the feature cache lacks (an augmented image) loaded the prompt encoder")
                report_encoder_load = False

            if main and (step % stage.log_every == 0 or step == total):
                metrics = {**sums, "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                           "step_seconds": time.perf_counter() - t0, **lrs}
                for k, v in metrics.items():
                    writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
                if on_log is not None:
                    on_log(step, metrics)
            if step % stage.checkpoint_every == 0 or step == total:
                if main:  # the losses saved are the main process's; weights are identical on every rank
                    saved.append(save_checkpoint(
                        ckpt_dir, step, weights=core.trainable_state_dict(), optimizer=optimizer,
                        lr_scheduler=lr_scheduler, ema=ema, keep=stage.keep_checkpoints,
                        extra={"fingerprint": fingerprint, "losses": losses, "original_sizes": sizes.to_json()},
                    ))
                accelerator.wait_for_everyone()
            if main and stage.sample_every and step % stage.sample_every == 0:
                if preview_prompts is None:  # the first batch of the stream: the same on every resume
                    first = next(iter(iterate(data_urls, stage, seed, start_step=0, **with_cache)))
                    preview_prompts = [ex.prompt for ex in first[:PREVIEW_PROMPTS]]
                    for ex in first[:PREVIEW_PROMPTS] if lazy else []:
                        if ex.features is not None and ex.features.prompt is not None:
                            core.encoder.remember(ex.features, [s for s in ex.prompt if not isinstance(s, str)])
                core.trained_original_size = sizes.most_common()
                path = sample_grid(core, preview_prompts, out_dir / "samples" / f"step-{step:06d}.png",
                                   steps=stage.sample_steps, seed=seed)
                samples.append(path)
                if on_sample is not None:
                    on_sample(step, path)
    finally:
        if writer is not None:
            writer.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()

    # --- final model -------------------------------------------------------------------------------------
    if ema is not None:
        ema.copy_to(trainable)  # the final model carries the EMA weights; checkpoints keep the raw ones
    model_dir = out_dir / "model"
    if main:
        tmp_dir = out_dir / ".model-tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        core.save_pretrained(tmp_dir)
        write_sizes(tmp_dir, sizes)
        # How this stage's prompts were built: evaluation builds its benchmark prompts the same way.
        write_json_atomic(tmp_dir / TRAINING_FILE, {"stage": stage_name, "prompt_mode": stage.prompt_mode})
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp_dir.rename(model_dir)
    accelerator.wait_for_everyone()
    return TrainResult(stage_name, out_dir, model_dir, start, max(start, total), losses, saved, samples,
                       time.perf_counter() - t_start)
