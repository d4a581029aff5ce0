"""Tasks of the build-data flow: one per stage, each mapped over input shards, each retryable."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from data_schemas import Manifest, ShardReport
from mumu.config.data import CaptionConfig, DataConfig, DetectConfig, EntitiesConfig, IngestConfig, SegmentConfig
from mumu.config.runtime import RuntimeConfig
from mumu.data import stages
from mumu.errors import UserError
from tasks.models import Lazy, cached_model, worker_device



def _retryable(task, task_run, state) -> bool:
    """Retry transient failures, not the user's mistakes: those fail the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


# Shard work holds decoded images: never hash it for Prefect's cache, never persist it as a result.
_stage = dict(
    cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1, retry_condition_fn=_retryable
)


@task(name="plan-shards", **_stage)
def plan_shards(input_path: str, cfg: IngestConfig) -> list[stages.InputShard]:
    return stages.plan_shards(Path(input_path), cfg)


@task(name="ingest", **_stage)
def ingest(shard: stages.InputShard, cfg: IngestConfig) -> stages.ShardWork:
    return stages.ingest(shard, cfg)


@task(name="caption", **_stage)
def caption(work: stages.ShardWork, cfg: CaptionConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.captioner import Captioner

    device = worker_device(runtime)
    captioner = Lazy(lambda: cached_model("captioner", cfg, device, lambda: Captioner.from_config(cfg, device)))
    return stages.caption(work, captioner)


@task(name="entities", **_stage)
def find_entities(work: stages.ShardWork, cfg: EntitiesConfig) -> stages.ShardWork:
    return stages.find_entities(work, cfg)


@task(name="detect", **_stage)
def detect(work: stages.ShardWork, cfg: DetectConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.detector import Detector

    device = worker_device(runtime)
    detector = Lazy(lambda: cached_model("detector", cfg, device, lambda: Detector.from_config(cfg, device)))
    return stages.detect(work, detector)


@task(name="segment", **_stage)
def segment(work: stages.ShardWork, cfg: SegmentConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.segmenter import Segmenter

    device = worker_device(runtime)
    segmenter = Lazy(lambda: cached_model("segmenter", cfg, device, lambda: Segmenter.from_config(cfg, device)))
    return stages.segment(work, segmenter)


@task(name="compose", **_stage)
def compose(work: stages.ShardWork, cfg: DataConfig) -> stages.ShardWork:
    return stages.compose(work, cfg.compose)


@task(name="write-shard", **_stage)
def write(work: stages.ShardWork, out_dir: str, cfg: DataConfig) -> ShardReport:
    return stages.write(work, Path(out_dir), cfg)


@task(name="write-manifest", **_stage)
def write_manifest(out_dir: str, reports: list[ShardReport], config_hash: str) -> Manifest:
    return stages.write_manifest(Path(out_dir), reports, config_hash)
