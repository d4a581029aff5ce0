"""evaluate: generate every benchmark prompt from a checkpoint, score DINO / CLIP-I / CLIP-T / copy-paste / FID with
bootstrap intervals, beside each benchmark's real-image ceiling and copy rows, and report them with the protocol.

    per benchmark: generate-chunk mapped on the profile's task runner over the benchmark's chunks (finished
                   chunks skipped) ──▶ score-benchmark
    then: write-report (+ table and markdown artifacts)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner
from tqdm import tqdm

from deployments.events import emit_stage_completed
from flows.runners import task_runner
from mumu.config import ProfileConfig
from mumu.config.eval import EvalConfig
from mumu.config.runtime import RuntimeConfig
from mumu.eval.benchmarks import build_benchmarks, eval_config_for, profile_for_checkpoint
from mumu.eval.items import Benchmark, chunk
from mumu.eval.report import table_cells
from mumu.runs import model_dir, write_run_config
from tasks import evaluate as t
from tasks.retries import retry_options

# Generation chunks run this many at a time per worker: sampling's large tensor ops release the GIL, so threads
# keep both cores of a 2-core machine busy (the tiny evaluation: 20.6 s at 4 against 25.2 s at 1).
GENERATE_TASKS_PER_WORKER = 4

@flow(name="evaluate")
def evaluate(checkpoint: str, out: str, bench: str = "toy", profile: str | ProfileConfig = "tiny",
             overrides: dict[str, Any] | None = None) -> dict:
    overrides = {**(overrides or {}), **({"eval.benchmark.root": bench} if bench != "toy" else {})}
    model = str(model_dir(checkpoint))
    cfg = profile_for_checkpoint(profile, overrides, model)
    ev, runtime = cfg.eval, cfg.runtime
    write_run_config(out, cfg)
    retry = retry_options(runtime)
    score = t.score_benchmark.with_options(**retry)

    scores = []
    # Chunks are mapped on the profile's task runner, however this flow was started; one runner for every benchmark.
    with task_runner(runtime, GENERATE_TASKS_PER_WORKER) as runner:
        for benchmark in build_benchmarks(ev.benchmark):
            bench_dir = str(Path(out) / benchmark.name)
            bench_ev = eval_config_for(benchmark, ev)  # e.g. DreamBench's 4 images per prompt
            generate_benchmark(runner, benchmark, model, bench_dir, bench_ev, runtime)
            scores.append(score(benchmark, bench_dir, bench_ev, runtime))

    report = t.write_report(scores, out, ev.report, run=Path(checkpoint).name)
    # The table as the report prints it (values with their intervals; ceiling and copy rows included).
    table = [table_cells(r) for r in report.rows + report.reference_rows]
    create_table_artifact(key="evaluation", table=table, description=f"evaluation of {checkpoint}")
    create_markdown_artifact(key="evaluation-report", markdown=t.inline_images(report.markdown, Path(out)),
                             description=f"report with sample grids: {report.markdown_path}")
    emit_stage_completed("evaluate", out, checkpoint=checkpoint, report=str(report.markdown_path))
    return {"markdown": str(report.markdown_path), "json": str(report.json_path), "rows": report.rows}


def generate_benchmark(runner: TaskRunner, benchmark: Benchmark, model: str, bench_dir: str, ev: EvalConfig,
                       runtime: RuntimeConfig) -> None:
    """generate-chunk mapped on `runner` over the benchmark's chunks; chunks whose record exists are not generated
    again."""
    chunks = chunk(benchmark.items, ev.chunk_size)
    get_run_logger().info("%s: %d prompts in %d chunks", benchmark.name, len(benchmark.items), len(chunks))
    futures = runner.map(t.generate_chunk.with_options(**retry_options(runtime)), {
        "items": chunks, "chunk_index": list(range(len(chunks))), "checkpoint": unmapped(model),
        "out_dir": unmapped(bench_dir), "cfg": unmapped(ev), "runtime": unmapped(runtime)})
    with tqdm(total=len(chunks), desc=f"generate {benchmark.name}", unit="chunk") as bar:
        for future in as_completed(futures):
            future.result()
            bar.update(1)
