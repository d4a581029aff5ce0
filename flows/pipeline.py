"""pipeline: the whole DAG as one parent flow, each stage a subflow that skips work already done.

    build-data ──▶ cache-features ──▶ pretrain ──▶ tune ──▶ evaluate
    OUT/data       OUT/data/features  OUT/pretrain  OUT/tune  OUT/eval

Finished shards, cached features, checkpoints and generated chunks are reused, so a re-run after a crash resumes
where it stopped. With no arguments it runs the bundled samples on the tiny profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.build_data import build_data
from flows.cache_features import cache_features
from flows.evaluate import evaluate
from flows.pretrain import pretrain
from flows.tune import tune
from mumu import TRAIN_SAMPLES_DIR
from mumu.config import load_profile
from mumu.runs import write_run_config


@flow(name="pipeline")
def pipeline(input_path: str | None = None, out: str = "runs/tiny", profile: str = "tiny",
             overrides: dict[str, Any] | None = None) -> dict:
    cfg = load_profile(profile, overrides)  # fail fast on a bad profile
    root = Path(out)
    write_run_config(root, cfg)
    data, stage1, stage2, report = (str(root / name) for name in ("data", "pretrain", "tune", "eval"))
    common = dict(profile=profile, overrides=overrides)

    build_data(input_path=str(input_path or TRAIN_SAMPLES_DIR), out=data, **common)
    cache_features(data=data, **common)
    pretrain(data=data, out=stage1, **common)
    tune(data=data, init=stage1, out=stage2, **common)
    evaluation = evaluate(checkpoint=stage2, out=report, **common)
    return {"data": data, "pretrain": stage1, "tune": stage2, "report": evaluation["markdown"]}
