"""evaluate: generate every benchmark prompt from a checkpoint, score DINO / CLIP-I / CLIP-T / FID, report.

    build benchmarks ──▶ generate-chunk (mapped over chunks; finished chunks skipped) ──▶ score-benchmark
                                                                         ──▶ write-report (+ artifacts)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from tqdm import tqdm

from deployments.events import emit_stage_completed
from mumu.config import load_profile
from mumu.eval.benchmarks import build_benchmarks, chunk
from mumu.runs import model_dir
from tasks import evaluate as t


@flow(name="evaluate")
def evaluate(checkpoint: str, out: str, bench: str = "toy", profile: str = "tiny",
             overrides: dict[str, Any] | None = None) -> dict:
    overrides = dict(overrides or {})
    if bench != "toy":
        overrides["eval.benchmark.root"] = bench
    cfg = load_profile(profile, overrides)
    ev, runtime, log = cfg.eval, cfg.runtime, get_run_logger()
    model = str(model_dir(checkpoint))
    retry = dict(retries=runtime.task_retries, retry_delay_seconds=runtime.task_retry_delay_seconds)

    scores = []
    for benchmark in build_benchmarks(ev.benchmark):
        bench_dir = str(Path(out) / benchmark.name)
        chunks = chunk(benchmark.items, ev.chunk_size)
        log.info("%s: %d prompts in %d chunks", benchmark.name, len(benchmark.items), len(chunks))
        futures = t.generate_chunk.with_options(**retry).map(
            chunks, list(range(len(chunks))), unmapped(model), unmapped(bench_dir), unmapped(ev), unmapped(runtime))
        with tqdm(total=len(chunks), desc=f"generate {benchmark.name}", unit="chunk") as bar:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
        scores.append(t.score_benchmark.with_options(**retry)(benchmark, bench_dir, ev, runtime))

    report = t.write_report(scores, out, ev.report, run=Path(checkpoint).name)
    create_table_artifact(key="evaluation", table=report.rows, description=f"evaluation of {checkpoint}")
    create_markdown_artifact(key="evaluation-report", markdown=t.inline_images(report.markdown, Path(out)),
                             description=f"report with sample grids: {report.markdown_path}")
    emit_stage_completed("evaluate", out, checkpoint=checkpoint, report=str(report.markdown_path))
    return {"markdown": str(report.markdown_path), "json": str(report.json_path), "rows": report.rows}
