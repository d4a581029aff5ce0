"""Tasks of the cache-features flow: plan, one task per group of data shards (each retryable; finished sidecars
are skipped, so a retry redoes only the unfinished ones), the manifest."""

from __future__ import annotations

from prefect import task

from data_schemas.features import FeatureManifest, FeatureShardReport
from mumu.config.model import ModelConfig
from mumu.config.runtime import RuntimeConfig
from mumu.config.train import FeaturesConfig, TrainConfig
from mumu.train import feature_stage as fs
from tasks.model_cache import cached_model
from tasks.options import TASK_OPTIONS
from tasks.placement import worker_device


@task(name="plan-cache", **TASK_OPTIONS)
def plan_cache(data: str, model: ModelConfig, train: TrainConfig) -> fs.CachePlan | None:
    return fs.plan_cache(data, model, train)


def _frozen_parts(plan: fs.CachePlan, model: ModelConfig, runtime: RuntimeConfig) -> fs.FrozenParts:
    device = worker_device(runtime)
    return cached_model("frozen-parts", f"{model.model_dump_json()}|{plan.key}", device,
                        lambda: fs.FrozenParts(model, plan.spec, device), latest_only=True)


@task(name="cache-empty-prompt", **TASK_OPTIONS)
def cache_empty_prompt(plan: fs.CachePlan, model: ModelConfig, runtime: RuntimeConfig) -> str:
    return str(fs.cache_empty_prompt(plan, _frozen_parts(plan, model, runtime)))


@task(name="cache-shard-group", **TASK_OPTIONS)
def cache_shard_group(plan: fs.CachePlan, shards: list, model: ModelConfig, features: FeaturesConfig,
                 runtime: RuntimeConfig) -> list[FeatureShardReport]:
    parts = _frozen_parts(plan, model, runtime)
    return [fs.cache_shard(plan, shard, parts, features.batch_size) for shard in shards]


@task(name="write-cache-manifest", **TASK_OPTIONS)
def write_cache_manifest(plan: fs.CachePlan, reports: list[FeatureShardReport]) -> FeatureManifest:
    return fs.write_cache_manifest(plan, reports)
