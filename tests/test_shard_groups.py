"""Task runs of the data stages: how shards are dealt to them, and that a (retried) run redoes only its unfinished
shards, with the same bytes as one uninterrupted run; PNG level is lossless."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from flows.runners import concurrent_tasks, shard_groups
from mumu.config import load_profile
from mumu.data import stages
from mumu.data.shards import encode_image
from tests.scenes import write_scene_folder


@pytest.mark.parametrize("n, per_task, workers, runner", [
    (24, 8, 1, "thread"), (3, 8, 1, "thread"), (100, 8, 1, "thread"), (100, 1, 1, "thread"), (10, 8, 3, "dask"),
    (1, 1, 1, "thread"),
])
def test_shards_are_dealt_to_enough_runs_of_even_length(n, per_task, workers, runner):
    runtime = load_profile("tiny", {"runtime.shards_per_task": per_task, "runtime.workers": workers,
                                    "runtime.task_runner": runner}).runtime
    groups = shard_groups(list(range(n)), runtime)
    want = min(n, max(concurrent_tasks(runtime), math.ceil(n / per_task)))
    assert len(groups) == want
    assert sorted(i for g in groups for i in g) == list(range(n))  # every shard exactly once
    assert max(map(len, groups)) - min(map(len, groups)) <= 1 and max(map(len, groups)) <= max(per_task, 1 + n // want)
    assert groups[0][:2] == [0, want][: len(groups[0][:2])]  # round-robin: shard i goes to run i mod n
    assert shard_groups([], runtime) == []


def test_the_thread_runner_runs_data_tasks_per_worker_data_runs_per_worker_at_once():
    def runtime(**kw):
        return load_profile("tiny", {f"runtime.{k}": v for k, v in kw.items()}).runtime

    assert concurrent_tasks(runtime(workers=1, data_tasks_per_worker=1)) == 1
    assert concurrent_tasks(runtime(workers=2, data_tasks_per_worker=4)) == 8
    assert concurrent_tasks(runtime(workers=3, data_tasks_per_worker=4, task_runner="dask")) == 3  # a process each
    assert concurrent_tasks(runtime(workers=2, data_tasks_per_worker=1), per_worker=4) == 8  # generation's own
    # 24 shards of 8 per run: 3 runs at one a time, 4 when 4 run at once
    def sizes(n, **kw):
        return [len(g) for g in shard_groups(list(range(n)), runtime(**kw))]

    assert sizes(24, data_tasks_per_worker=1, shards_per_task=8) == [8, 8, 8]
    assert sizes(24, data_tasks_per_worker=4, shards_per_task=8) == [6, 6, 6, 6]
    # tiny's own (128 a run): one run for the bench's 96 shards, as many as run at once when more run at once
    assert sizes(96, data_tasks_per_worker=1) == [96]
    assert sizes(96, data_tasks_per_worker=4) == [24, 24, 24, 24]


def test_a_group_redoes_only_its_unfinished_shards_with_the_same_bytes(tmp_path):
    src = tmp_path / "in"
    oracle = write_scene_folder(src, range(300, 306))
    cfg = load_profile("tiny", {"data.ingest.images_per_shard": 2}).data
    shards = stages.plan_shards(src, cfg.ingest)
    whole, ran = tmp_path / "whole", []
    stages.run_shards(shards, whole, cfg, None, oracle, oracle, ran)
    assert ran == [0, 1, 2]
    # A run killed after shard 1: shards 0 and 1 finished, 2 not. Its retry runs shard 2 only.
    part = tmp_path / "part"
    part.mkdir()
    for name in ("shard-00000", "shard-00001"):
        for suffix in (".tar", ".report.json", ".quarantine.jsonl"):
            (part / f"{name}{suffix}").write_bytes((whole / f"{name}{suffix}").read_bytes())
    ran = []
    reports = stages.run_shards(shards, part, cfg, None, oracle, oracle, ran)
    assert ran == [2] and [r.shard for r in reports] == [0, 1, 2]
    assert {p.name: p.read_bytes() for p in part.iterdir()} == {p.name: p.read_bytes() for p in whole.iterdir()}


def four_shards_written_inline(tmp_path):
    """(oracle, data config, 4 planned shards of 2 scenes, the folder they were written to without threads)."""
    src = tmp_path / "in"
    oracle = write_scene_folder(src, range(300, 308))
    cfg = load_profile("tiny", {"data.ingest.images_per_shard": 2}).data
    shards = stages.plan_shards(src, cfg.ingest)
    stages.run_shards(shards, tmp_path / "inline", cfg, None, oracle, oracle)
    return oracle, cfg, shards, tmp_path / "inline"


def test_writing_behind_gives_the_same_bytes_and_a_failed_write_stops_the_run_after_its_finished_shards(
        tmp_path, monkeypatch):
    oracle, cfg, shards, inline = four_shards_written_inline(tmp_path)
    behind = tmp_path / "behind"
    ran = []
    reports = stages.run_shards(shards, behind, cfg, None, oracle, oracle, ran, write_behind=True)
    assert ran == [0, 1, 2, 3] and [r.shard for r in reports] == [0, 1, 2, 3]
    assert {p.name: p.read_bytes() for p in behind.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}

    real_write = stages.write

    def disk_full_on_shard_1(work, out_dir, cfg):
        if work.shard == 1:
            raise OSError(28, "No space left on device")
        return real_write(work, out_dir, cfg)

    monkeypatch.setattr(stages, "write", disk_full_on_shard_1)
    failed = tmp_path / "failed"
    with pytest.raises(OSError, match="No space"):
        stages.run_shards(shards, failed, cfg, None, oracle, oracle, write_behind=True)
    # The error surfaces before shard 2 is handed to the writer; shard 0 finished, nothing else did.
    assert sorted(p.name for p in failed.glob("*.report.json")) == ["shard-00000.report.json"]
    monkeypatch.setattr(stages, "write", real_write)
    ran = []
    stages.run_shards(shards, failed, cfg, None, oracle, oracle, ran, write_behind=True)
    assert ran == [1, 2, 3]
    assert {p.name: p.read_bytes() for p in failed.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}


def test_reading_ahead_gives_the_same_bytes_and_an_ingest_error_surfaces_at_its_shards_turn(tmp_path, monkeypatch):
    import threading

    oracle, cfg, shards, inline = four_shards_written_inline(tmp_path)
    ahead = tmp_path / "ahead"

    real_ingest, real_models = stages.ingest, stages.through_models
    threads, started, overlapped = {}, {}, []

    def ingest(shard, icfg):
        threads[shard.index] = threading.current_thread().name
        started.setdefault(shard.index, threading.Event()).set()
        if shard.index == 2 and failing:
            raise OSError(5, "Input/output error")
        return real_ingest(shard, icfg)

    def through_models(work, *args):
        # while shard i is in the models, shard i+1's ingest has started (in sequence this would time out)
        if work.shard + 1 < len(shards):
            overlapped.append(started.setdefault(work.shard + 1, threading.Event()).wait(timeout=10))
        return real_models(work, *args)

    monkeypatch.setattr(stages, "ingest", ingest)
    monkeypatch.setattr(stages, "through_models", through_models)
    failing = False
    ran = []
    reports = stages.run_shards(shards, ahead, cfg, None, oracle, oracle, ran, write_behind=True, read_ahead=True)
    assert ran == [0, 1, 2, 3] and [r.shard for r in reports] == [0, 1, 2, 3]
    assert {p.name: p.read_bytes() for p in ahead.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}
    # the first shard here (a worker that is still starting would only be waited for), the others ahead of their turn
    assert threads == {0: threading.main_thread().name, 1: "shard-io_0", 2: "shard-io_0", 3: "shard-io_0"}
    assert overlapped == [True, True, True]

    failing = True
    started.clear()
    failed = tmp_path / "failed"
    with pytest.raises(OSError, match="Input/output"):
        stages.run_shards(shards, failed, cfg, None, oracle, oracle, write_behind=True, read_ahead=True)
    # shards 0 and 1 finished (their writes done before the error propagated); 2 and 3 did not
    assert sorted(p.name for p in failed.glob("*.report.json")) == ["shard-00000.report.json", "shard-00001.report.json"]
    failing = False
    started.clear()
    ran = []
    stages.run_shards(shards, failed, cfg, None, oracle, oracle, ran, write_behind=True, read_ahead=True)
    assert ran == [2, 3]
    assert {p.name: p.read_bytes() for p in failed.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}


def test_shard_io_in_a_process_gives_the_same_bytes_and_a_failed_write_stops_the_run_after_its_finished_shards(
        tmp_path, monkeypatch):
    import os

    from mumu.data.shard_io import background

    with background("process") as submit:
        assert submit(os.getpid).result() != os.getpid()  # the background work runs in another process
    kinds = []

    def recorded(kind):
        kinds.append(kind)
        return background(kind)

    monkeypatch.setattr(stages, "background", recorded)
    oracle, cfg, shards, inline = four_shards_written_inline(tmp_path)
    apart = tmp_path / "apart"
    ran = []
    reports = stages.run_shards(shards, apart, cfg, None, oracle, oracle, ran, True, True, "process")
    assert ran == [0, 1, 2, 3] and [r.shard for r in reports] == [0, 1, 2, 3]
    assert kinds[-1] == "process"  # run_shards hands its work to that process
    assert {p.name: p.read_bytes() for p in apart.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}

    failed = tmp_path / "failed"
    (failed / "shard-00001.tar").mkdir(parents=True)  # shard 1's tar cannot replace a folder: its write fails
    with pytest.raises(OSError):
        stages.run_shards(shards, failed, cfg, None, oracle, oracle, None, True, True, "process")
    assert sorted(p.name for p in failed.glob("*.report.json")) == ["shard-00000.report.json"]
    (failed / "shard-00001.tar").rmdir()
    ran = []
    stages.run_shards(shards, failed, cfg, None, oracle, oracle, ran, True, True, "process")
    assert ran == [1, 2, 3]
    assert {p.name: p.read_bytes() for p in failed.iterdir()} == {p.name: p.read_bytes() for p in inline.iterdir()}


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_png_level_decodes_to_the_same_pixels(mode):
    rng = np.random.default_rng(0)
    y, x = np.indices((37, 53))
    pixels = (x * 4 + y * 2 + rng.integers(0, 3, (37, 53))).astype(np.uint8)  # a gradient with a little noise
    image = Image.fromarray(np.stack([pixels, pixels[::-1], 255 - pixels], -1) if mode == "RGB" else pixels, mode)
    sizes = {}
    for level in (0, 1, 6, 9):
        data = encode_image(image, "png", png_compress_level=level)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image)), level
        assert data == encode_image(image, "png", png_compress_level=level)  # deterministic
        sizes[level] = len(data)
    assert sizes[0] > sizes[1] >= sizes[9]  # level 0 stores, the others deflate


def test_the_progress_bar_moves_per_shard_report_within_one_task_run(tmp_path, monkeypatch):
    import os
    import time

    import tqdm as tqdm_module
    from prefect import flow, task

    import flows.runners
    from flows.runners import gather_shard_groups

    shown = []

    class Bar(tqdm_module.tqdm):
        def update(self, n=1):
            super().update(n)
            shown.append(self.n)

    monkeypatch.setattr(flows.runners, "tqdm", Bar)  # the name the module bound at import
    paths = [tmp_path / f"shard-{i}.report.json" for i in range(3)]
    paths[0].write_text("{}")  # a report from an earlier run: not this run's progress
    os.utime(paths[0], (0, 0))

    @task
    def build_group(group):
        for path in group:
            time.sleep(1.0)
            path.write_text("{}")
        return [path.name for path in group]

    @flow
    def build():
        return gather_shard_groups(build_group.map([paths]), 4, 1, "shards", paths)  # one run of three shards

    assert build() == [p.name for p in paths]
    assert shown[-1] == 4 and set(shown) & {2, 3}  # it moved before the run's end, counting from the one done


def test_only_reports_written_since_the_count_began_are_counted(tmp_path):
    import os

    from flows.runners import _NewFiles

    stale, fresh, never = (tmp_path / f"shard-{i}.report.json" for i in range(3))
    stale.write_text("{}")
    os.utime(stale, ns=(2 * 10**18, 2 * 10**18))  # an earlier run's, with a file server's clock far ahead of ours
    watch = _NewFiles([stale, fresh, never])
    assert watch.count() == 0
    fresh.write_text("{}")
    assert watch.count() == 1
    stale.write_text("{}")  # rewritten by this run
    assert watch.count() == 2 and watch.count() == 2
