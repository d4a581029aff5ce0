"""The training task: one stage (pretrain or tune) of mumu.train.train, retryable and resumable.

A retry (or a re-run of the deployment) resumes from the stage's last checkpoint, so a crash costs at
most `checkpoint_every` steps. With `runtime.train_processes > 1` (or several `runtime.train_machines`) the
stage runs under `accelerate launch` (one process per GPU) and its log lines are forwarded to the Prefect
run logger.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import task_run

from mumu.config import ProfileConfig
from mumu.data.shards import shard_urls
from mumu.launch import accelerate_argv, run_launcher
from mumu.runs import write_run_config
from mumu.train.entry import result_summary, resumed_line
from mumu.train.loop import train
from tasks.options import TASK_OPTIONS


def _publish_sample(stage: str, step: int, png: Path) -> None:
    """The preview grid as a markdown artifact (inline while small, so the UI shows it without a file server)."""
    data = png.read_bytes()
    image = f"![step {step}](data:image/png;base64,{base64.b64encode(data).decode()})" if len(data) < 512_000 else ""
    create_markdown_artifact(
        key=f"{stage}-samples", markdown=f"### {stage}: samples at step {step}\n\n{image}\n\n`{png}`",
        description=f"{stage} preview grid, step {step}",
    )


def _launch_argv(stage: str, cfg: ProfileConfig, data: str, out: str, init: str | None, resume: bool) -> list[str]:
    """`accelerate launch` of mumu.train.entry for this stage, on this machine's share of the processes. Every
    process reads the config this task was given, from OUT/config.yaml (the resolved profile, loaded back
    unchanged), so a launched stage runs on exactly the object its flow resolved."""
    config = write_run_config(out, cfg)
    args = [stage, "--profile", str(config), "--data", data, "--out", out]
    if init:
        args += ["--init", init]
    if not resume:
        args.append("--no-resume")
    return accelerate_argv("mumu.train.entry", args, num_processes=cfg.runtime.train_world_size,
                           launch_args=cfg.runtime.multi_node_launch_args())


@task(name="train-stage", **{**TASK_OPTIONS, "retries": 1, "retry_delay_seconds": 5})
def train_stage(stage: str, cfg: ProfileConfig, data: str, out: str, init: str | None = None,
                resume: bool = True) -> dict[str, Any]:
    """Train one stage. resume=False starts over (this run's old checkpoints are removed); a Prefect retry
    of this task always resumes, since the first attempt already made that choice."""
    log = get_run_logger()
    resume = resume or task_run.run_count > 1
    if cfg.runtime.launches_training:
        run_launcher(_launch_argv(stage, cfg, data, out, init, resume),
                     on_line=log.info)
        return json.loads((Path(out) / "result.json").read_text())

    def on_log(step: int, metrics: dict[str, float]) -> None:
        log.info("%s step %d: loss %.4f (diffusion %.4f, attn %.4f)", stage, step, metrics["loss"],
                 metrics["diffusion"], metrics["attn"])

    result = train(stage, cfg, shard_urls(data), out, init=init, resume=resume, on_log=on_log,
                   on_sample=lambda step, png: _publish_sample(stage, step, png),
                   on_resume=lambda step, ckpt: log.info("%s", resumed_line(stage, step, ckpt)),
                   on_info=lambda line: log.info("%s: %s", stage, line))
    return result_summary(result)
