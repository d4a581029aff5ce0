"""Tasks of the evaluate flow: generation mapped over benchmark chunks (resumable), scoring, the report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from prefect import task

from mumu.config.eval import EvalConfig, ReportConfig
from mumu.config.runtime import RuntimeConfig
from mumu.eval import runner
from mumu.eval.items import BenchItem, Benchmark
from tasks.model_cache import cached_model
from tasks.options import TASK_OPTIONS
from tasks.placement import worker_device


@task(name="generate-chunk", **TASK_OPTIONS)
def generate_chunk(items: list[BenchItem], chunk_index: int, checkpoint: str, out_dir: str, cfg: EvalConfig,
                   runtime: RuntimeConfig) -> runner.ChunkResult:
    """One chunk of a benchmark; a chunk whose record exists is returned without generating again."""
    from mumu.generate import MumuSampler  # heavy (diffusers): loaded by the process that runs the task

    device = worker_device(runtime)
    sampler = cached_model("sampler", f"{checkpoint}|{cfg.sampler.model_dump_json()}", device,
                           lambda: MumuSampler.from_checkpoint(checkpoint, cfg.sampler, device), latest_only=True)
    # One batched denoising loop per chunk (about 2x faster than per item on CPU; same seeds per item).
    return runner.generate_chunk(items, sampler.generate, out_dir, chunk_index, cfg,
                                 generate_batch_fn=sampler.generate_batch)


@task(name="score-benchmark", **TASK_OPTIONS)
def score_benchmark(bench: Benchmark, out_dir: str, cfg: EvalConfig, runtime: RuntimeConfig) -> dict:
    from models.eval_encoders import EvalEncoders  # heavy (transformers): loaded by the process that runs the task

    device = worker_device(runtime)
    encoders = cached_model("eval-encoders", f"{cfg.dino.model_dump_json()}|{cfg.clip.model_dump_json()}", device,
                            lambda: EvalEncoders.from_config(cfg, device))
    # The report shows which prompt form (MUMU / UNIMO-G) the benchmark's prompts were built in.
    return {**runner.score(bench, out_dir, encoders, cfg), "prompt_mode": bench.prompt_mode}


@task(name="write-report", **TASK_OPTIONS)
def write_report(scores: list[dict], out_dir: str, cfg: ReportConfig, run: str) -> runner.Report:
    return runner.write_report(scores, out_dir, cfg, run=run)


def inline_images(markdown: str, base: Path, limit: int = 300_000) -> str:
    """Image links → data URIs (small files only), so the Prefect UI shows a report's grids without a file server."""

    def repl(match: re.Match) -> str:
        path = base / match.group(2)
        if not path.is_file() or path.stat().st_size > limit:
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", repl, markdown)
