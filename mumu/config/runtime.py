"""Where and how work runs: device, Prefect task runner, seed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mumu.config.base import SEED_MAX, StrictModel


class RuntimeConfig(StrictModel):
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # "auto" picks cuda when present, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Data stages map over shards with this Prefect task runner. "thread" is Prefect's default
    # ThreadPoolTaskRunner; "dask" is prefect-dask's DaskTaskRunner (a local cluster of `workers`
    # processes, one model replica each — or an existing cluster at `dask_address`).
    task_runner: Literal["thread", "dask"] = "thread"
    workers: int = Field(1, ge=1)
    # Task runs of a data stage (build-data, cache-features) the "thread" runner runs at once per worker (they
    # share the process's models and cores). More than one overlaps Prefect's own waits with work; with models
    # as small as the tiny profile's the threads mostly contend for the GIL instead (bench/bench_build_data.py).
    data_tasks_per_worker: int = Field(4, ge=1)
    dask_address: str | None = None
    # Torch intra-op threads per worker (0 = torch's default).
    torch_threads: int = Field(0, ge=0)
    # Torch intra-op threads of a training process (0 = torch_threads): a training step's batched matmuls use
    # a second core where the data stage's one-image model calls do not.
    train_torch_threads: int = Field(0, ge=0)
    # Training processes per machine (one per GPU) under `accelerate launch`; 1 on 1 machine = train
    # inside the Prefect task.
    train_processes: int = Field(1, ge=1)
    # Multi-node training: every machine runs the same stage (its own worker, the same `out` on shared
    # storage) with its own `train_machine_rank`; rank 0 listens at `train_main_address` ("host:port").
    train_machines: int = Field(1, ge=1)
    train_machine_rank: int = Field(0, ge=0)  # < train_machines (checked below)
    train_main_address: str | None = None
    # Shards one task run of a data stage (build-data, cache-features) takes on, one after another. Prefect costs
    # ~50 ms per task run, as much as the tiny models spend on a shard; a retried run redoes only its shards that
    # have no report yet. The runs are at least as many as the task runner runs at once (flows/runners.py).
    shards_per_task: int = Field(8, ge=1)
    # Within a data task run, compose and write each shard (crops, PNG encoding, tar, fsync) in the background
    # while the next shard goes through the models (mumu/data/stages.py run_shards). Pays only where a core is
    # idle beside the single-threaded models (bench/bench_build_data.py).
    write_behind: bool = False
    # Within a data task run, ingest (read, decode, resize) the next shard in the background while this one is in
    # the models (mumu/data/stages.py run_shards): the same idle core, at the other end of the shard.
    read_ahead: bool = False
    # Where that background work runs (mumu/data/shard_io.py): a thread, or a process of its own, whose Python
    # does not hold the GIL the models' thread waits for; a Dask worker (a daemonic process) uses a thread.
    shard_io: Literal["thread", "process"] = "thread"
    task_retries: int = Field(2, ge=0)
    task_retry_delay_seconds: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _multi_node(self) -> "RuntimeConfig":
        if not 0 <= self.train_machine_rank < self.train_machines:
            raise ValueError(f"train_machine_rank must be in [0, {self.train_machines}) for "
                             f"train_machines={self.train_machines}")
        if self.train_machines > 1:
            host, port = self._main_host_port()
            if not host or not port.isdigit():
                raise ValueError("train_machines > 1 needs train_main_address = \"host:port\" of the rank-0 machine")
        return self

    def _main_host_port(self) -> tuple[str, str]:
        host, _, port = (self.train_main_address or "").rpartition(":")
        return host, port

    @property
    def train_world_size(self) -> int:
        """Training processes on all machines together (accelerate's --num_processes)."""
        return self.train_processes * self.train_machines

    @property
    def launches_training(self) -> bool:
        """Whether a training stage runs under `accelerate launch` (else inside the Prefect task)."""
        return self.train_world_size > 1

    def multi_node_launch_args(self) -> list[str]:
        """`accelerate launch` options that place this machine in a multi-node job (none on one machine)."""
        if self.train_machines == 1:
            return []
        host, port = self._main_host_port()
        return ["--num_machines", str(self.train_machines), "--machine_rank", str(self.train_machine_rank),
                "--main_process_ip", host, "--main_process_port", port]
