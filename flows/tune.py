"""tune (stage 2): shards ──(multimodal prompts + attention-mask loss)──▶ train-stage(init=stage 1) ──▶ OUT/model

Resumes from OUT's last checkpoint: re-running a finished stage only re-saves its model.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from deployments.events import emit_stage_completed
from mumu.config import ProfileConfig, resolve_profile
from mumu.runs import model_dir, write_run_config
from tasks.train import train_stage


@flow(name="tune")
def tune(data: str, init: str, out: str, profile: str | ProfileConfig = "tiny", overrides: dict[str, Any] | None = None,
         resume: bool = True) -> dict:
    cfg = resolve_profile(profile, overrides)  # the attention-mask loss's weight: train.tune.attn_loss.weight
    init_model = str(model_dir(init))
    write_run_config(out, cfg)
    result = train_stage("tune", cfg, data, out, init_model, resume)
    emit_stage_completed("tune", out, data=data, model=result["model"])
    return result
