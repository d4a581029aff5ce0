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
from torch.utils.tensorboard import SummaryWriter

from mumu.config import ProfileConfig, config_hash, resolve_profile
from mumu.config.train import StageConfig
from mumu.errors import UserError
from mumu.io import write_json_atomic
from mumu.size_conditioning import SizeTally, write_sizes
from mumu.train.build import Trainee, build_trainee, make_accelerator, open_writer
from mumu.train.checkpoint import clean_partial, list_checkpoints, load_checkpoint, save_checkpoint
from mumu.train.data import iterate_examples
from mumu.train.features import find_cache
from mumu.train.optim import step_generator
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
    iterate: Callable[..., Iterator[list]] = iterate_examples,
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
    t_start = time.perf_counter()
    profile = resolve_profile(profile)
    plan = _plan(stage_name, profile, out_dir, init)

    # --- model, optimizer, schedule -------------------------------------------------------------------
    accelerator = make_accelerator(profile.runtime, plan.stage)  # applies runtime.torch_threads (mumu.devices)
    # after make_accelerator, so the stage's own count wins; keeps_torch_threads gives the caller its own back
    if threads := profile.runtime.train_torch_threads or profile.runtime.torch_threads:
        torch.set_num_threads(threads)
    if init is not None:
        check_init_config(Path(init), profile.model)
    cache, cache_line = find_cache(data_urls, profile.model, profile.train) if data_urls else (None, "")
    # Under a prompt cache the frozen encoder is loaded only if a prompt the cache lacks comes (an augmented one):
    # the cached states stand for every other prompt, the empty one of CFG dropout included.
    lazy = cache is not None and cache.has_prompts
    trainee = build_trainee(accelerator, profile.model, plan.stage, plan.total, init, lazy)
    main, core = accelerator.is_main_process, trainee.core

    # --- resume ----------------------------------------------------------------------------------------
    progress = _resume(plan, trainee, resume, on_resume)

    # --- data ------------------------------------------------------------------------------------------
    writer = open_writer(plan.out_dir, progress.start) if main else None
    if lazy:
        core.encoder.remember(cache.empty_prompt_states())
        cache_line += "; the prompt encoder is not loaded"
    report_encoder_load = lazy and main and on_info is not None  # said once, if a prompt the cache lacks loads it
    if main and on_info is not None and cache_line:
        on_info(cache_line)
    with_cache = {"features": cache} if cache is not None else {}
    batches = _batches(plan, accelerator, iterate, data_urls, with_cache, progress.start)
    previews = _Previews(lambda: next(iter(iterate(data_urls, plan.stage, plan.seed, start_step=0, **with_cache))),
                         remember_prompts=lazy)

    # --- loop ------------------------------------------------------------------------------------------
    stage = plan.stage
    try:
        for step in range(progress.start + 1, plan.total + 1):
            done = _train_step(plan, trainee, batches, step, progress)
            if report_encoder_load and core.encoder.loaded:
                on_info(f"step {step}: a prompt the feature cache lacks (an augmented image) loaded the prompt encoder")
                report_encoder_load = False
            if main and (step % stage.log_every == 0 or step == plan.total):
                _log(writer, step, done.metrics(), on_log)
            if step % stage.checkpoint_every == 0 or step == plan.total:
                _checkpoint(plan, trainee, step, progress)
            if main and stage.sample_every and step % stage.sample_every == 0:
                path = previews.sample(plan, core, step, progress.sizes)
                if on_sample is not None:
                    on_sample(step, path)
    finally:
        _close(writer, batches)

    # --- final model -------------------------------------------------------------------------------------
    model_dir = _save_model(plan, trainee, progress.sizes)
    return TrainResult(stage_name, plan.out_dir, model_dir, progress.start, max(progress.start, plan.total),
                       progress.losses, progress.checkpoints, previews.paths, time.perf_counter() - t_start)


@dataclass
class _Plan:
    """One stage's settings for this run."""

    name: str
    stage: StageConfig
    out_dir: Path
    total: int  # the last step
    seed: int  # run_seed: every random draw of the run derives from it
    fingerprint: dict  # a checkpoint written under another one is not resumed (stage, configs, init, seed)

    @property
    def accum(self) -> int:
        return self.stage.gradient_accumulation_steps

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def fingerprint(stage_name: str, profile: ProfileConfig, init: str | Path | None) -> dict:
    """What a checkpoint must have been written under to be resumed: the stage, its config, the model config, the
    init model and the seed.

    The stage config is hashed without max_steps: max_steps says where the run stops, not what its steps compute
    (step s draws from (seed, s) whatever the last step is), so raising it (`--max-steps N` or
    `--set train.STAGE.max_steps=N`, the same override) extends a finished or interrupted run from its last
    checkpoint instead of refusing it. The LR schedule does span max_steps: an extended run continues on the
    schedule of the new length from the resumed step (a constant schedule after warmup is unchanged by it)."""
    stage = getattr(profile.train, stage_name)
    return {"stage": stage_name, "stage_config": config_hash(stage, exclude={"max_steps"}),
            "model_config": config_hash(profile.model), "init": str(Path(init).resolve()) if init else None,
            "seed": run_seed(profile, stage_name)}


def _plan(stage_name: str, profile: ProfileConfig, out_dir: str | Path, init: str | Path | None) -> _Plan:
    """The stage's settings, checked, with out_dir created."""
    if stage_name not in STAGES:
        raise UserError(f"unknown stage {stage_name!r}: choose one of {', '.join(STAGES)}")
    stage = getattr(profile.train, stage_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Plan(stage_name, stage, out_dir, stage.max_steps, run_seed(profile, stage_name),
                 fingerprint(stage_name, profile, init))


@dataclass
class _Progress:
    """What the run has trained so far (start, losses, sizes: restored from a checkpoint on resume and saved in every
    one) and the checkpoints it wrote."""

    start: int = 0  # the step this run continues from
    losses: list[float] = field(default_factory=list)  # mean loss of every step 1..
    # Original sizes trained on: the sampler's default micro-conditioning (size_conditioning.py).
    sizes: SizeTally = field(default_factory=SizeTally)
    checkpoints: list[Path] = field(default_factory=list)  # the ones this run wrote


def _resume(plan: _Plan, trainee: Trainee, resume: bool, on_resume: Callable[[int, Path], None] | None) -> _Progress:
    """Continue from the newest checkpoint (resume), or start at step 0 without the old ones (not resume). A save
    torn by a killed run is removed first, so the newest checkpoint is a complete one."""
    accelerator = trainee.accelerator
    main = accelerator.is_main_process
    if main:
        clean_partial(plan.checkpoint_dir)
    accelerator.wait_for_everyone()
    checkpoints = list_checkpoints(plan.checkpoint_dir)
    if resume and checkpoints:
        path = checkpoints[-1].path
        state = load_checkpoint(path, model=trainee.core, optimizer=trainee.optimizer,
                                lr_scheduler=trainee.lr_scheduler, ema=trainee.ema)
        if state.get("fingerprint") != plan.fingerprint:
            raise UserError(f"{path} was written by a different stage/config/init/seed: "
                            f"use a new out_dir or resume=False")
        progress = _Progress(state["step"], list(state["losses"]), SizeTally(state.get("original_sizes")))
        if main and on_resume is not None:
            on_resume(progress.start, path)
        return progress
    if not resume and checkpoints and main:
        shutil.rmtree(plan.checkpoint_dir)
    return _Progress()


def _batches(plan: _Plan, accelerator, iterate: Callable[..., Iterator[list]], data_urls: list[str],
             with_cache: dict, start: int) -> Iterator[list]:
    """This process's stream from step start + 1 on: batch k of the stream is micro-batch k of this process (the
    loader deals shards to ranks)."""
    world = accelerator.num_processes
    shard = {"rank": accelerator.process_index, "world_size": world, **with_cache} if world > 1 else with_cache
    return iterate(data_urls, plan.stage, plan.seed, start_step=start * plan.accum, **shard)


@dataclass
class _Step:
    """What one optimizer step did, for the log."""

    sums: dict[str, float]  # mean losses over its micro-batches
    grad_norm: torch.Tensor | None  # before clipping; None when no micro-batch synced gradients
    lrs: dict[str, float]  # the learning rate of each parameter group this step used
    started: float  # time.perf_counter() at its start

    def metrics(self) -> dict[str, float]:
        return {**self.sums, "grad_norm": float(self.grad_norm) if self.grad_norm is not None else math.nan,
                "step_seconds": time.perf_counter() - self.started, **self.lrs}


def _train_step(plan: _Plan, trainee: Trainee, batches: Iterator[list], step: int, progress: _Progress) -> _Step:
    """Optimizer step `step`: gradient_accumulation_steps micro-batches, each with its own seeded generator, then the
    LR schedule and EMA; the step's loss joins progress.losses."""
    t0 = time.perf_counter()
    accelerator, stage, accum = trainee.accelerator, plan.stage, plan.accum
    sums = {"loss": 0.0, "diffusion": 0.0, "attn": 0.0}
    for micro in range(accum):
        try:
            examples = next(batches)
        except StopIteration:
            raise TrainingError(step, "the training data ran out (iterate_examples should be endless)") from None
        batch = trainee.core.prepare(examples)
        progress.sizes.add((ex.image.height, ex.image.width) for ex in examples)
        generator = step_generator(plan.seed, step, micro, accelerator.process_index)
        with accelerator.accumulate(trainee.model):
            with accelerator.autocast():
                out = trainee.model(batch, generator, stage.attn_loss, stage.cfg_dropout, stage.snr_gamma)
            if not torch.isfinite(out["loss"]):
                raise TrainingError(step, f"loss is {out['loss'].item()} (diffusion {out['diffusion'].item()}, "
                                          f"attn {out['attn'].item()}): lower the learning rate or check the data")
            accelerator.backward(out["loss"])
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(trainee.trainable, stage.max_grad_norm)
            trainee.optimizer.step()
            trainee.optimizer.zero_grad(set_to_none=True)
        for k in sums:
            sums[k] += out[k].item() / accum
    lrs = {f"lr/{group['name']}": group["lr"] for group in trainee.optimizer.param_groups}  # before the schedule moves
    trainee.lr_scheduler.step()
    if trainee.ema is not None:
        trainee.ema.step(trainee.trainable)
    progress.losses.append(sums["loss"])
    return _Step(sums, grad_norm, lrs, t0)


def _log(writer: SummaryWriter, step: int, metrics: dict[str, float],
         on_log: Callable[[int, dict[str, float]], None] | None) -> None:
    for k, v in metrics.items():
        writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
    if on_log is not None:
        on_log(step, metrics)


def _checkpoint(plan: _Plan, trainee: Trainee, step: int, progress: _Progress) -> None:
    """Everything a resumed run needs to repeat this one from `step`; the main process writes it, every rank waits."""
    # The losses saved are the main process's; weights are identical on every rank.
    if trainee.accelerator.is_main_process:
        progress.checkpoints.append(save_checkpoint(
            plan.checkpoint_dir, step, weights=trainee.core.trainable_state_dict(), optimizer=trainee.optimizer,
            lr_scheduler=trainee.lr_scheduler, ema=trainee.ema, keep=plan.stage.keep_checkpoints,
            extra={"fingerprint": plan.fingerprint, "losses": progress.losses,
                   "original_sizes": progress.sizes.to_json()},
        ))
    trainee.accelerator.wait_for_everyone()


@dataclass
class _Previews:
    """Preview grids of the stream's first PREVIEW_PROMPTS prompts, so every grid of a run, resumed or not, shows
    the same prompts."""

    first_batch: Callable[[], list]
    remember_prompts: bool  # a prompt cache: give the encoder the previews' cached states, so it stays unloaded
    prompts: list[list] | None = None
    paths: list[Path] = field(default_factory=list)

    def sample(self, plan: _Plan, core, step: int, sizes: SizeTally) -> Path:
        if self.prompts is None:
            first = self.first_batch()[:PREVIEW_PROMPTS]
            self.prompts = [ex.prompt for ex in first]
            for ex in first if self.remember_prompts else []:
                if ex.features is not None and ex.features.prompt is not None:
                    core.encoder.remember(ex.features, [s for s in ex.prompt if not isinstance(s, str)])
        core.trained_original_size = sizes.most_common()
        path = sample_grid(core, self.prompts, plan.out_dir / "samples" / f"step-{step:06d}.png",
                           steps=plan.stage.sample_steps, seed=plan.seed)
        self.paths.append(path)
        return path


def _close(writer: SummaryWriter | None, batches: Iterator[list]) -> None:
    if writer is not None:
        writer.close()
    close = getattr(batches, "close", None)  # a generator stream: closing it shuts its loader workers down
    if close is not None:
        close()


def _save_model(plan: _Plan, trainee: Trainee, sizes: SizeTally) -> Path:
    """The final model in out_dir/model, with the original sizes it trained on and how its prompts were built;
    written to a temporary folder first, so out_dir/model is never half written."""
    if trainee.ema is not None:
        trainee.ema.copy_to(trainee.trainable)  # the final model carries the EMA weights; checkpoints keep the raw ones
    model_dir = plan.out_dir / "model"
    if trainee.accelerator.is_main_process:
        tmp_dir = plan.out_dir / ".model-tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        trainee.core.save_pretrained(tmp_dir)
        write_sizes(tmp_dir, sizes)
        # How this stage's prompts were built: evaluation builds its benchmark prompts the same way.
        write_json_atomic(tmp_dir / TRAINING_FILE, {"stage": plan.name, "prompt_mode": plan.stage.prompt_mode})
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp_dir.rename(model_dir)
    trainee.accelerator.wait_for_everyone()
    return model_dir
