"""pipeline: the whole DAG as one parent flow, each stage a subflow that skips work already done.

The stages are those of mumu/stage_list.py (its docstring draws the DAG), run in the list's order, each on the
folders under OUT that the list names for it: build-data writes OUT/data, ..., evaluate reads OUT/tune and writes
OUT/eval. Returns every stage's folder by stage name, and the evaluation report's path ("report").

Finished shards, cached features, checkpoints and generated chunks are reused, so a re-run after a crash resumes
where it stopped. With no arguments it runs the bundled samples on the tiny profile.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

from prefect import flow

from mumu import TRAIN_SAMPLES_DIR
from mumu.config import ProfileConfig, resolve_profile
from mumu.runs import write_run_config
from mumu.stage_list import RUN_INPUT, STAGES

# Each stage of the list with its flow (flows/<stage>.py, imported from the list's entrypoint).
STAGE_FLOWS = [(stage, getattr(import_module(stage.module), stage.function)) for stage in STAGES]


@flow(name="pipeline")
def pipeline(input_path: str | None = None, out: str = "runs/tiny", profile: str | ProfileConfig = "tiny",
             overrides: dict[str, Any] | None = None) -> dict:
    cfg = resolve_profile(profile, overrides)  # fails fast on a bad profile; every stage runs on this object
    root = Path(out)
    write_run_config(root, cfg)
    folders = {stage.name: str(root / stage.folder) for stage, _ in STAGE_FLOWS}
    source = {**folders, RUN_INPUT: str(input_path or TRAIN_SAMPLES_DIR)}

    results = {}
    for stage, run_stage in STAGE_FLOWS:
        # the flow's folder parameters, e.g. tune(data=OUT/data, init=OUT/pretrain, out=OUT/tune)
        arguments = {param: source[of] for param, of in stage.parameters.items()}
        results[stage.name] = run_stage(**arguments, profile=cfg)
    return {**folders, "report": results["evaluate"]["markdown"]}
