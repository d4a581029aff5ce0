"""pretrain (stage 1): shards ──(text-only view: caption as prompt)──▶ train-stage ──▶ OUT/model

Resumes from OUT's last checkpoint: re-running a finished stage only re-saves its model.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from deployments.events import emit_stage_completed
from mumu.config import ProfileConfig, resolve_profile
from mumu.runs import write_run_config
from tasks.train import train_stage


@flow(name="pretrain")
def pretrain(data: str, out: str, profile: str | ProfileConfig = "tiny", overrides: dict[str, Any] | None = None,
             resume: bool = True) -> dict:
    cfg = resolve_profile(profile, overrides)  # fails fast on a bad profile
    write_run_config(out, cfg)
    result = train_stage("pretrain", cfg, data, out, None, resume)
    emit_stage_completed("pretrain", out, data=data, model=result["model"])
    return result
