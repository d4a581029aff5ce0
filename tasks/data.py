"""Tasks of the build-data flow: one per stage, each mapped over input shards, each retryable."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from data_schemas import Manifest, ShardReport
from mumu.config.data import CaptionConfig, DataConfig, DetectConfig, EntitiesConfig, IngestConfig, SegmentConfig
from mumu.config.runtime import RuntimeConfig
from mumu.data import stages
from tasks.common import TASK_OPTIONS, lazy_model


@task(name="plan-shards", **TASK_OPTIONS)
def plan_shards(input_path: str, cfg: IngestConfig) -> list[stages.InputShard]:
    return stages.plan_shards(Path(input_path), cfg)


@task(name="ingest", **TASK_OPTIONS)
def ingest(shard: stages.InputShard, cfg: IngestConfig) -> stages.ShardWork:
    return stages.ingest(shard, cfg)


@task(name="caption", **TASK_OPTIONS)
def caption(work: stages.ShardWork, cfg: CaptionConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.captioner import Captioner

    captioner = lazy_model("captioner", Captioner, cfg, runtime)
    return stages.caption(work, captioner)


@task(name="entities", **TASK_OPTIONS)
def find_entities(work: stages.ShardWork, cfg: EntitiesConfig) -> stages.ShardWork:
    return stages.find_entities(work, cfg)


@task(name="detect", **TASK_OPTIONS)
def detect(work: stages.ShardWork, cfg: DetectConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.detector import Detector

    detector = lazy_model("detector", Detector, cfg, runtime)
    return stages.detect(work, detector)


@task(name="segment", **TASK_OPTIONS)
def segment(work: stages.ShardWork, cfg: SegmentConfig, runtime: RuntimeConfig) -> stages.ShardWork:
    from models.segmenter import Segmenter

    segmenter = lazy_model("segmenter", Segmenter, cfg, runtime)
    return stages.segment(work, segmenter)


@task(name="compose", **TASK_OPTIONS)
def compose(work: stages.ShardWork, cfg: DataConfig) -> stages.ShardWork:
    return stages.compose(work, cfg.compose)


@task(name="write-shard", **TASK_OPTIONS)
def write(work: stages.ShardWork, out_dir: str, cfg: DataConfig) -> ShardReport:
    return stages.write(work, Path(out_dir), cfg)


@task(name="write-manifest", **TASK_OPTIONS)
def write_manifest(out_dir: str, reports: list[ShardReport], config_hash: str) -> Manifest:
    return stages.write_manifest(Path(out_dir), reports, config_hash)
