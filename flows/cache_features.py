"""cache-features: the outputs of the model's frozen parts, computed once per sample (DATA/features/<key>/).

    plan-cache ──▶ cache-empty-prompt (a prompt cache's) ──▶ cache-shard-group, mapped on the profile's task
                   runner over groups of data shards (finished sidecars skipped) ──▶ write-cache-manifest

What is cached and why: mumu/config/train.py FeaturesConfig and docs/feature_cache.md. Training finds the cache
by the same key (mumu/train/features.py), so this stage may run or not: the losses are the same either way.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from deployments.events import emit_stage_completed
from flows.runners import gather_shard_groups, shard_groups, task_runner
from mumu.config import ProfileConfig, resolve_profile
from mumu.runs import write_run_config
from mumu.train.features import sidecar_done, sidecar_report_path
from tasks import features as t
from tasks.retries import retry_options


@flow(name="cache-features")
def cache_features(data: str, profile: str | ProfileConfig = "tiny", overrides: dict[str, Any] | None = None) -> dict:
    cfg = resolve_profile(profile, overrides)
    log = get_run_logger()
    retry = retry_options(cfg.runtime)

    plan = t.plan_cache.with_options(**retry)(data, cfg.model, cfg.train)
    if plan is None:
        log.info("this model and config have nothing to cache (train.features): training computes every part")
        emit_stage_completed("cache-features", data, key=None)
        return {"key": None, "samples": 0, "bytes": 0, "shards": 0}
    write_run_config(plan.folder, cfg)
    done = [r for s in plan.shards if (r := sidecar_done(plan.folder, s, plan.key)) is not None]
    todo = [s for s in plan.shards if s.shard not in {r.shard for r in done}]
    log.info("feature cache %s (%s): %d data shards, %d already cached, %d to compute",
             plan.key, ", ".join(plan.spec["parts"]), len(plan.shards), len(done), len(todo))

    if "prompt" in plan.spec["parts"]:  # what training reads instead of loading the encoder for CFG
        t.cache_empty_prompt.with_options(**retry)(plan, cfg.model, cfg.runtime)
    with task_runner(cfg.runtime) as runner:
        groups = runner.map(t.cache_shard_group.with_options(**retry), {
            "plan": unmapped(plan), "shards": shard_groups(todo, cfg.runtime), "model": unmapped(cfg.model),
            "features": unmapped(cfg.train.features), "runtime": unmapped(cfg.runtime)})
        built = gather_shard_groups(groups, len(plan.shards), len(done), "cache-features shards",
                                    [sidecar_report_path(plan.folder, s.shard) for s in todo])
    manifest = t.write_cache_manifest.with_options(**retry)(plan, [*done, *built])
    create_table_artifact(
        key="cache-features", description=f"feature cache {plan.key} of {data}",
        table=[{"shard": r.name, "samples": r.samples, "bytes": r.bytes, **r.tensors} for r in manifest.shards])
    log.info("feature cache %s: %d samples in %d shards, %.1f MB", plan.key, manifest.samples, len(manifest.shards),
             manifest.bytes / 1e6)
    emit_stage_completed("cache-features", data, key=plan.key, features=str(plan.folder))
    return {"key": plan.key, "samples": manifest.samples, "bytes": manifest.bytes, "shards": len(manifest.shards),
            "folder": str(plan.folder)}

