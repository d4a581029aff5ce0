"""build-data: text–image pairs → multimodal-prompt webdataset shards.

    plan-shards → build-shard-group (ingest → caption → entities → detect → segment → compose → write-shard),
                  mapped on the profile's task runner over groups of runtime.shards_per_task shards
                → write-manifest

Finished shards (their report exists) are skipped, so a re-run after a crash resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact

from deployments.events import emit_stage_completed
from flows.runners import gather_shard_groups, shard_groups, task_runner
from mumu.config import ProfileConfig, config_hash, resolve_profile
from mumu.data import stages
from mumu.data.shards import report_path
from mumu.runs import write_run_config
from tasks import data as t
from tasks.retries import retry_options


@flow(name="build-data", log_prints=False)
def build_data(input_path: str, out: str, profile: str | ProfileConfig = "tiny",
               overrides: dict[str, Any] | None = None) -> dict:
    cfg = resolve_profile(profile, overrides)
    write_run_config(out, cfg)
    data, runtime = cfg.data, cfg.runtime
    log = get_run_logger()
    retry = retry_options(runtime)

    shards = t.plan_shards.with_options(**retry)(input_path, data.ingest)
    data_hash = config_hash(data)
    done = {s.index: r for s in shards if (r := stages.shard_done(Path(out), s.index, s, data_hash)) is not None}
    todo = [s for s in shards if s.index not in done]
    log.info("%d input shards: %d already written, %d to build", len(shards), len(done), len(todo))

    # The shards are mapped on the profile's task runner (threads, or Dask workers with one model replica each),
    # however this flow was started: CLI, pipeline or a deployment.
    with task_runner(runtime) as runner:
        groups = runner.map(t.build_shard_group.with_options(**retry), {
            "shards": shard_groups(todo, runtime), "out_dir": unmapped(out), "cfg": unmapped(data),
            "runtime": unmapped(runtime)})
        built = gather_shard_groups(groups, len(shards), len(done), "build-data shards",
                                    [report_path(out, s.index) for s in todo])
    reports = sorted([*done.values(), *built], key=lambda r: r.shard)

    manifest = t.write_manifest.with_options(**retry)(out, reports, data_hash)
    create_table_artifact(
        key="build-data-counts",
        table=[{"stage": "inputs", "count": manifest.inputs}, {"stage": "written", "count": manifest.written},
               {"stage": "quarantined", "count": manifest.quarantined}]
        + [{"stage": k, "count": v} for k, v in sorted(manifest.counts.items())],
        description=f"build-data counts for {out}",
    )
    log.info("wrote %d samples in %d shards, quarantined %d (of %d inputs)",
             manifest.written, len(manifest.shards), manifest.quarantined, manifest.inputs)
    emit_stage_completed("build-data", out, input=input_path)
    return manifest.model_dump(mode="json")

