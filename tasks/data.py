"""Tasks of the build-data flow: plan, one task per group of input shards (each shard goes through every data
stage, its report written last), the manifest. A retried group redoes only its shards that have no report yet.

One task run per group rather than per stage and shard: Prefect costs ~50 ms per task run, as much as the tiny
models spend on a shard of 8 images, and 7 stages x every shard made the flow 4x slower than its model calls
(bench/bench_build_data.py). The stages' counts and quarantine reasons are in each shard's report.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from data_schemas import Manifest, ShardReport
from mumu.config.data import DataConfig, IngestConfig
from mumu.config.runtime import RuntimeConfig
from mumu.data import stages
from tasks.model_cache import lazy_model
from tasks.options import TASK_OPTIONS


@task(name="plan-shards", **TASK_OPTIONS)
def plan_shards(input_path: str, cfg: IngestConfig) -> list[stages.InputShard]:
    return stages.plan_shards(Path(input_path), cfg)


@task(name="build-shard-group", **TASK_OPTIONS)
def build_shard_group(shards: list[stages.InputShard], out_dir: str, cfg: DataConfig,
                      runtime: RuntimeConfig) -> list[ShardReport]:
    """ingest → caption → entities → detect → segment → compose → write, for each shard of the group."""
    # The models (transformers) load in the process that runs the task, not wherever the flows are imported.
    from models.captioner import Captioner
    from models.detector import Detector
    from models.segmenter import Segmenter

    return stages.run_shards(shards, Path(out_dir), cfg, lazy_model("captioner", Captioner, cfg.caption, runtime),
                             lazy_model("detector", Detector, cfg.detect, runtime),
                             lazy_model("segmenter", Segmenter, cfg.segment, runtime), write_behind=runtime.write_behind,
                             read_ahead=runtime.read_ahead, shard_io=runtime.shard_io)


@task(name="write-manifest", **TASK_OPTIONS)
def write_manifest(out_dir: str, reports: list[ShardReport], config_hash: str) -> Manifest:
    return stages.write_manifest(Path(out_dir), reports, config_hash)
