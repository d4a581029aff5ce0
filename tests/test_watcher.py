"""The input watcher: one `mumu.data.landed` per new batch, nothing on a re-run, state written atomically."""

import json
import os
import time

import pytest

from deployments import events, watcher
from mumu.errors import UserError


def _touch(path, data=b"x", age=60.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t = time.time() - age
    os.utime(path, (t, t))


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, input_dir, new):
        self.calls.append((str(input_dir), list(new)))


def test_first_poll_announces_inputs_only_and_a_rerun_nothing(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "sub" / "b.JPG")
    _touch(tmp_path / "shard-0.tar")
    _touch(tmp_path / "captions.jsonl")  # not an image or a tar: not announced
    _touch(tmp_path / ".hidden" / "c.png")  # hidden entries are skipped, like the data stage does
    emit = Recorder()

    assert watcher.poll(tmp_path, emit=emit) == ["a.png", "shard-0.tar", "sub/b.JPG"]
    assert emit.calls == [(str(tmp_path.resolve()), ["a.png", "shard-0.tar", "sub/b.JPG"])]
    state = json.loads((tmp_path / watcher.STATE_NAME).read_text())
    assert sorted(state["files"]) == ["a.png", "shard-0.tar", "sub/b.JPG"]
    assert state["files"]["a.png"][0] == 1  # size recorded

    before = (tmp_path / watcher.STATE_NAME).read_bytes()
    assert watcher.poll(tmp_path, emit=emit) == []
    assert len(emit.calls) == 1  # nothing new → no event, state untouched
    assert (tmp_path / watcher.STATE_NAME).read_bytes() == before


def test_new_and_rewritten_files_form_the_next_batch(tmp_path):
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "b.png")
    emit = Recorder()
    watcher.poll(tmp_path, emit=emit)

    _touch(tmp_path / "c.webp")
    _touch(tmp_path / "b.png", data=b"longer", age=30.0)  # rewritten: new size and mtime
    assert watcher.poll(tmp_path, emit=emit) == ["b.png", "c.webp"]
    assert emit.calls[-1][1] == ["b.png", "c.webp"]
    assert len(emit.calls) == 2


def test_files_still_being_copied_wait_for_the_next_poll(tmp_path):
    _touch(tmp_path / "old.png")
    _touch(tmp_path / "fresh.png", age=0.0)
    emit = Recorder()
    assert watcher.poll(tmp_path, settle_seconds=10, emit=emit) == ["old.png"]
    _touch(tmp_path / "fresh.png", age=20.0)  # settled now
    assert watcher.poll(tmp_path, settle_seconds=10, emit=emit) == ["fresh.png"]
    assert watcher.poll(tmp_path, settle_seconds=10, emit=emit) == []


def test_removed_file_is_forgotten_and_counts_again_when_it_returns(tmp_path):
    _touch(tmp_path / "a.png")
    emit = Recorder()
    watcher.poll(tmp_path, emit=emit)
    (tmp_path / "a.png").unlink()
    assert watcher.poll(tmp_path, emit=emit) == []
    assert json.loads((tmp_path / watcher.STATE_NAME).read_text())["files"] == {}
    _touch(tmp_path / "a.png")
    assert watcher.poll(tmp_path, emit=emit) == ["a.png"]


def test_state_elsewhere_failed_emit_is_retried_and_bad_state_is_a_user_error(tmp_path):
    inputs = tmp_path / "in"
    _touch(inputs / "a.png")
    state = tmp_path / "state" / "watch.json"

    def failing(*_):
        raise ConnectionError("server down")

    with pytest.raises(ConnectionError):
        watcher.poll(inputs, state_file=state, emit=failing)
    assert not state.exists()  # nothing recorded: the batch is announced again next time
    emit = Recorder()
    assert watcher.poll(inputs, state_file=state, emit=emit) == ["a.png"]
    assert state.exists() and not (inputs / watcher.STATE_NAME).exists()

    state.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        watcher.poll(inputs, state_file=state, emit=emit)
    with pytest.raises(UserError, match="not a folder"):
        watcher.poll(tmp_path / "missing", emit=emit)


def test_resource_id_is_stable_per_folder(tmp_path):
    a = events.inputs_resource_id(tmp_path)
    assert a == events.inputs_resource_id(str(tmp_path) + "/.")
    assert a.startswith("mumu.inputs.") and a != events.inputs_resource_id(tmp_path / "other")


def _read_events(name, since, resource_id):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(name=[name]),
                resource=EventResourceFilter(id=[resource_id]),
            ),
            limit=50,  # the client's default (100) is over the server's maximum (50): HTTP 422
        )
    return page.events


def _wait_events(name, since, resource_id, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        found = _read_events(name, since, resource_id)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.usefixtures("prefect_server")
def test_flow_emits_one_event_per_batch_to_the_server(tmp_path):
    from prefect.types._datetime import now

    since = now("UTC")
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "b.tar")
    rid = events.inputs_resource_id(tmp_path)

    run = str(tmp_path / "run")
    first = watcher.watch_inputs(str(tmp_path), out=run, settle_seconds=0)
    assert first == {"input": str(tmp_path.resolve()), "new": ["a.png", "b.tar"], "count": 2}
    assert watcher.watch_inputs(str(tmp_path), out=run, settle_seconds=0)["count"] == 0
    _touch(tmp_path / "c.png")
    assert watcher.watch_inputs(str(tmp_path), out=run, settle_seconds=0)["new"] == ["c.png"]

    got = _wait_events(events.DATA_LANDED, since, rid, 2)
    payloads = sorted((e.payload for e in got), key=lambda p: p["count"])
    assert payloads == [
        {"input": str(tmp_path.resolve()), "new": ["c.png"], "count": 1, "out": run},
        {"input": str(tmp_path.resolve()), "new": ["a.png", "b.tar"], "count": 2, "out": run},
    ]
    assert all(e.resource["mumu.input"] == str(tmp_path.resolve()) for e in got)
    time.sleep(1.0)  # the no-op poll must not have emitted a late third event
    assert len(_read_events(events.DATA_LANDED, since, rid)) == 2


@pytest.mark.usefixtures("prefect_server")
def test_missing_folder_is_created_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sent = []
    monkeypatch.setattr(watcher, "emit_data_landed", lambda *a, **k: sent.append((a, k)))
    with pytest.raises(UserError, match="not a folder"):
        watcher.watch_inputs("inbox")
    assert watcher.watch_inputs("inbox", create_missing=True)["count"] == 0
    _touch(tmp_path / "inbox" / "a.png")
    assert watcher.watch_inputs("inbox", settle_seconds=0)["new"] == ["a.png"]
    # default run folder: runs/landed/<folder name>, absolute so the triggered run writes the same place
    assert sent == [((tmp_path / "inbox", ["a.png"]), {"out": str(tmp_path / "runs" / "landed" / "inbox")})]


@pytest.mark.usefixtures("prefect_server")
def test_stage_completed_chains_only_from_top_level_deployment_runs():
    from prefect import flow
    from prefect.types._datetime import now

    since = now("UTC")

    @flow
    def stage_like(out: str):
        return events.emit_stage_completed("pretrain", out, data="d/shards", steps=3)

    stage_like("runs/x/pretrain")
    got = _wait_events(events.STAGE_COMPLETED, since, "mumu.stage.pretrain", 1)
    assert len(got) == 1
    assert got[0].payload == {"out": "runs/x/pretrain", "data": "d/shards", "steps": 3}
    assert got[0].resource["mumu.stage"] == "pretrain"
    assert got[0].resource["mumu.chain"] == "false"  # not a deployment run: triggers ignore it


def test_chain_label_is_true_only_for_a_top_level_deployment_run(monkeypatch):
    from types import SimpleNamespace
    from uuid import uuid4

    from prefect.context import FlowRunContext

    sent = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))

    def emit_as(deployment_id, parent_task_run_id):
        run = SimpleNamespace(deployment_id=deployment_id, parent_task_run_id=parent_task_run_id)
        monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: SimpleNamespace(flow_run=run)))
        events.emit_stage_completed("tune", "r/tune", data="r/data")
        return sent[-1]["resource"]["mumu.chain"]

    assert emit_as(uuid4(), None) == "true"  # `prefect deployment run 'tune/mumu'` or a trigger
    assert emit_as(uuid4(), uuid4()) == "false"  # a subflow of the pipeline deployment's run
    assert emit_as(None, None) == "false"  # `mumu tune ...` from the command line
    assert sent[-1]["event"] == events.STAGE_COMPLETED
    assert sent[-1]["payload"] == {"out": "r/tune", "data": "r/data"}
    assert sent[-1]["resource"]["prefect.resource.id"] == "mumu.stage.tune"
