"""The stage list (mumu/stage_list.py) is the one place the stage chain is written: prefect.yaml, the pipeline flow,
the CLI and the events agree with it, and a new stage needs its entry there and its deployment in prefect.yaml (not an
edit of the pipeline, the CLI or the events)."""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

import mumu.cli as cli
from deployments import events
from mumu.config import load_profile
from mumu.stage_list import (
    CHAIN_LABEL,
    DATA_LANDED,
    DEPLOYMENT_NAME,
    STAGE_COMPLETED,
    STAGES,
    Stage,
    chain,
    problems,
    run_folders,
    stage,
)

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_ENTRYPOINT = "flows/pipeline.py:pipeline"


def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _flow_facts(source: str, function: str) -> tuple[str | None, set[str]]:
    """(the Prefect flow name of `function` in `source`, the stage names it passes to emit_stage_completed)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            name = None
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Name) and target.id == "flow":
                    name = function.replace("_", "-")  # Prefect's default flow name
                    for kw in dec.keywords if isinstance(dec, ast.Call) else ():
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                            name = kw.value.value
            emitted = {call.args[0].value for call in ast.walk(node)
                       if isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                       and call.func.id == "emit_stage_completed" and call.args
                       and isinstance(call.args[0], ast.Constant)}
            return name, emitted
    return None, set()


def wiring_problems(stages, spec: dict, sources: dict[str, str] | None = None) -> list[str]:
    """What prefect.yaml (`spec`) gets wrong about `stages` (empty when nothing): each stage deployed once as
    "<stage>/mumu" from its entrypoint (a flow of that name announcing that stage), on its queue, with a default for
    each folder parameter and one trigger on its upstream's completion (chained runs only) or, for the first, on
    landed data, setting exactly those parameters (its own output: .../<its folder>); no stage deployment the list
    lacks; the pipeline deployment's description states the chain. `sources`: flow files' text by path, instead of
    the checkout's."""
    found = []
    deployments = spec.get("deployments") or []
    for s in stages:
        mine = [d for d in deployments if d.get("entrypoint") == s.entrypoint]
        if len(mine) != 1:
            found.append(f"{s.name}: {len(mine)} deployments of {s.entrypoint} in prefect.yaml, want 1")
            continue
        d = mine[0]
        path = s.entrypoint.partition(":")[0]
        source = (sources or {}).get(path) or ((ROOT / path).read_text() if (ROOT / path).is_file() else "")
        flow_name, emitted = _flow_facts(source, s.function)
        if flow_name != s.name:
            found.append(f"{s.name}: {s.entrypoint} is not a flow named {s.name!r} (found {flow_name!r})")
        if emitted != {s.name}:
            found.append(f"{s.name}: its flow calls emit_stage_completed with {sorted(emitted)}, want [{s.name!r}]")
        if d.get("name") != DEPLOYMENT_NAME:
            found.append(f"{s.name}: deployment named {d.get('name')!r}, want {DEPLOYMENT_NAME!r} ({s.deployment})")
        queue = (d.get("work_pool") or {}).get("work_queue_name")
        if queue != s.queue:
            found.append(f"{s.name}: on work queue {queue!r}, want {s.queue!r}")
        if s.queue == "gpu" and (d.get("concurrency_limit") or {}).get("limit") != 1:
            found.append(f"{s.name}: a gpu deployment without concurrency_limit 1")
        if missing := sorted(set(s.parameters) - set(d.get("parameters") or {})):
            found.append(f"{s.name}: no default for parameters {missing}")
        triggers = d.get("triggers") or []
        if len(triggers) != 1:
            found.append(f"{s.name}: {len(triggers)} triggers, want 1 (on {s.trigger_event} of {s.trigger_resource})")
            continue
        trigger, match = triggers[0], triggers[0].get("match") or {}
        if trigger.get("enabled") is not True:
            found.append(f"{s.name}: its trigger is not enabled")
        if trigger.get("expect") != [s.trigger_event]:
            found.append(f"{s.name}: its trigger expects {trigger.get('expect')}, want [{s.trigger_event!r}]")
        if match.get("prefect.resource.id") != s.trigger_resource:
            found.append(f"{s.name}: its trigger matches {match.get('prefect.resource.id')!r}, want "
                         f"{s.trigger_resource!r} (upstream: {s.upstream})")
        if s.upstream is not None and match.get(CHAIN_LABEL) != "true":
            found.append(f"{s.name}: its trigger does not require {CHAIN_LABEL}: 'true'")
        params = trigger.get("parameters") or {}
        if set(params) != set(s.parameters):
            found.append(f"{s.name}: its trigger sets {sorted(params)}, want {sorted(s.parameters)}")
        for param, of in s.parameters.items():
            if of == s.name and not str(params.get(param, "")).rstrip("/").endswith("/" + s.folder):
                found.append(f"{s.name}: its trigger's {param} {params.get(param)!r} does not end in /{s.folder}")

    listed = {s.entrypoint for s in stages}
    for d in deployments:
        chained = any({STAGE_COMPLETED, DATA_LANDED} & set(t.get("expect") or []) for t in d.get("triggers") or [])
        if (d.get("name") == DEPLOYMENT_NAME or chained) and d.get("entrypoint") not in listed:
            found.append(f"prefect.yaml deploys {d.get('entrypoint')} as a stage, but mumu/stage_list.py has no "
                         f"stage with that entrypoint")
    pipeline = [d for d in deployments if d.get("entrypoint") == PIPELINE_ENTRYPOINT]
    if not pipeline or chain(stages) not in (pipeline[0].get("description") or ""):
        found.append(f"the pipeline deployment's description does not say {chain(stages)!r}")
    return found


# A stage someone adds: a flow that reads the evaluation and writes RUN/publish.
PUBLISH = Stage("publish", "flows/publish.py:publish", "publish", "evaluate", {"report": "evaluate", "out": "publish"},
                queue="default")
PUBLISH_FLOW = '''
@flow(name="publish")
def publish(report: str, out: str, profile: str = "tiny", overrides=None) -> dict:
    emit_stage_completed("publish", out, report=report)
'''
PUBLISH_DEPLOYMENT = {
    "name": "mumu", "entrypoint": "flows/publish.py:publish",
    "work_pool": {"name": "mumu-process", "work_queue_name": "default"},
    "parameters": {"report": "runs/server/eval", "out": "runs/server/publish", "profile": "tiny"},
    "triggers": [{"name": "publish after evaluate", "enabled": True, "expect": ["mumu.stage.completed"],
                  "match": {"prefect.resource.id": "mumu.stage.evaluate", "mumu.chain": "true"},
                  "parameters": {"report": "{{ event.payload.out }}",
                                 "out": "{% set o = event.payload.out.rstrip('/') %}"
                                        "{{ o.rsplit('/', 1)[0] if '/' in o else '.' }}/publish"}}],
}


def _with_publish(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    spec["deployments"].append(copy.deepcopy(PUBLISH_DEPLOYMENT))
    (pipeline,) = [d for d in spec["deployments"] if d["entrypoint"] == PIPELINE_ENTRYPOINT]
    pipeline["description"] = pipeline["description"].replace(chain(), chain([*STAGES, PUBLISH]))
    return spec


def _deployment(spec: dict, name: str) -> dict:
    (d,) = [d for d in spec["deployments"] if d["entrypoint"] == stage(name).entrypoint]
    return d


def test_the_stage_list_is_the_chain_of_the_pipeline():
    assert problems(STAGES) == []
    assert chain() == "build-data → cache-features → pretrain → tune → evaluate"
    assert run_folders("RUN") == {"build-data": "RUN/data", "cache-features": "RUN/data/features",
                                  "pretrain": "RUN/pretrain", "tune": "RUN/tune", "evaluate": "RUN/eval"}
    # each stage but the first is started by the one before it
    assert [s.upstream for s in STAGES] == [None, *(s.name for s in STAGES[:-1])]


@pytest.mark.parametrize("change, needle", [
    (lambda ss: [*ss, ss[0]], "name used twice"),
    (lambda ss: [dataclasses.replace(ss[0], upstream="tune"), *ss[1:]], "upstream 'tune' is not an earlier stage"),
    (lambda ss: [*ss[:3], dataclasses.replace(ss[3], parameters={"init": "evaluate"}), *ss[4:]],
     "takes the folder of 'evaluate'"),
    (lambda ss: [*ss[:2], dataclasses.replace(ss[2], parameters={"data": "(input)"}), *ss[3:]], "run's input"),
    (lambda ss: [*ss[:-1], dataclasses.replace(ss[-1], entrypoint="evaluate")], "is not flows/<module>.py"),
])
def test_a_malformed_stage_list_is_refused(change, needle):
    found = problems(change(list(STAGES)))
    assert any(needle in p for p in found), found


def test_prefect_yaml_deploys_every_stage_of_the_list_and_no_other():
    assert wiring_problems(STAGES, _prefect_yaml()) == []


def _drop_deployment(spec, name):
    spec["deployments"].remove(_deployment(spec, name))


def _set(spec, name, *path_and_value):
    *path, key, value = path_and_value
    node = _deployment(spec, name)
    for part in path:
        node = node[part]
    node[key] = value


@pytest.mark.parametrize("stages, edit, needle", [
    # a stage in the list that prefect.yaml does not deploy
    ([*STAGES, PUBLISH], None, "publish: 0 deployments of flows/publish.py:publish"),
    # a stage prefect.yaml deploys that the list lacks
    ([s for s in STAGES if s.name != "tune"], None, "deploys flows/tune.py:tune as a stage"),
    (STAGES, lambda spec: _drop_deployment(spec, "pretrain"), "pretrain: 0 deployments"),
    # wrong wiring
    (STAGES, lambda spec: _set(spec, "tune", "triggers", 0, "match", "prefect.resource.id", "mumu.stage.build-data"),
     "tune: its trigger matches 'mumu.stage.build-data', want 'mumu.stage.pretrain'"),
    (STAGES, lambda spec: _set(spec, "evaluate", "triggers", 0, "match", "mumu.chain", "false"), "require mumu.chain"),
    (STAGES, lambda spec: _set(spec, "build-data", "triggers", 0, "expect", ["mumu.stage.completed"]),
     "build-data: its trigger expects"),
    (STAGES, lambda spec: _set(spec, "pretrain", "triggers", 0, "parameters", "out", "{{ event.payload.out }}/pre"),
     "does not end in /pretrain"),
    (STAGES, lambda spec: _set(spec, "tune", "triggers", 0, "parameters", {"data": "x", "out": "x/tune"}),
     "tune: its trigger sets ['data', 'out'], want ['data', 'init', 'out']"),
    (STAGES, lambda spec: _set(spec, "cache-features", "work_pool", {"name": "mumu-process", "work_queue_name": "default"}),
     "cache-features: on work queue 'default', want 'gpu'"),
    (STAGES, lambda spec: _set(spec, "evaluate", "entrypoint", "flows/tune.py:tune"), "2 deployments of flows/tune.py"),
    ([*STAGES[:-1], dataclasses.replace(STAGES[-1], folder="report")], None, "does not end in /report"),
    ([*STAGES[:-1], dataclasses.replace(STAGES[-1], name="score")], None, "is not a flow named 'score'"),
])
def test_the_prefect_yaml_check_fails_when_yaml_and_list_differ(stages, edit, needle):
    spec = _prefect_yaml()
    if edit is not None:
        edit(spec)
    found = wiring_problems(stages, spec)
    assert any(needle in p for p in found), found


def test_a_new_stage_needs_its_list_entry_its_flow_and_its_deployment():
    spec, flow_file = _with_publish(_prefect_yaml()), {"flows/publish.py": PUBLISH_FLOW}
    assert problems([*STAGES, PUBLISH]) == []
    assert wiring_problems([*STAGES, PUBLISH], spec, flow_file) == []
    assert any("is not a flow named 'publish'" in p for p in wiring_problems([*STAGES, PUBLISH], spec))  # no flow
    assert any("has no stage with that entrypoint" in p for p in wiring_problems(STAGES, spec, flow_file))  # no entry


def test_stage_events_are_named_from_the_list(monkeypatch):
    sent = []
    monkeypatch.setattr(events, "emit_event", lambda **kw: sent.append(kw))
    for s in STAGES:
        events.emit_stage_completed(s.name, f"RUN/{s.folder}")
    # each stage's completion is the resource the next stage's trigger matches
    assert [e["resource"]["prefect.resource.id"] for e in sent[:-1]] == [s.trigger_resource for s in STAGES[1:]]
    assert {e["event"] for e in sent} == {STAGE_COMPLETED}
    assert events.inputs_resource_id(ROOT).startswith(STAGES[0].trigger_resource.removesuffix("*"))
    with pytest.raises(KeyError, match="no stage 'publish'"):  # a stage the list lacks announces nothing
        events.emit_stage_completed("publish", "RUN/publish")


PUBLISHED: list[dict] = []


def fake_publish(**kwargs) -> dict:
    """The flow of the CLI test's stage (entrypoint tests/test_stage_list.py:fake_publish)."""
    PUBLISHED.append(kwargs)
    return {}


def test_the_cli_has_a_subcommand_for_every_stage_and_a_generic_one_for_a_new_stage(monkeypatch, tmp_path, capsys):
    def subcommands():
        (action,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
        return action.choices, {a.dest: a.help for a in action._choices_actions}

    parsers, helps = subcommands()
    assert {s.name for s in STAGES} <= set(parsers)
    assert helps["pipeline"] == f"the whole DAG: {chain()}"

    new = dataclasses.replace(PUBLISH, entrypoint="tests/test_stage_list.py:fake_publish")
    monkeypatch.setattr(cli, "STAGES", (*STAGES, new))
    PUBLISHED.clear()
    argv = ["publish", "--report", str(tmp_path / "eval"), "--out", str(tmp_path / "publish"), "--set",
            "train.tune.max_steps=3"]
    assert cli.main(argv) == 0
    assert PUBLISHED == [{"report": str(tmp_path / "eval"), "out": str(tmp_path / "publish"),
                          "profile": load_profile("tiny", {"train.tune.max_steps": 3})}]  # the resolved config
    assert capsys.readouterr().out.strip() == f"publish finished: {tmp_path / 'publish'}"
    with pytest.raises(SystemExit):  # argparse: --report is required
        cli.main(["publish", "--out", str(tmp_path)])
    parsers, helps = subcommands()
    assert "RUN/eval" in parsers["publish"].format_help() and "flows" not in helps["build-data"]  # its own subcommand


@pytest.mark.usefixtures("prefect_server")
def test_the_pipeline_runs_every_stage_of_the_list_on_its_folders(monkeypatch, tmp_path):
    import flows.pipeline as p  # every stage flow: torch, transformers, Prefect

    assert [(s, f.name) for s, f in p.STAGE_FLOWS] == [(s, s.name) for s in STAGES]  # the flows, in list order
    calls = []

    def fake(name):
        return lambda **kwargs: calls.append((name, kwargs)) or {"markdown": f"{name}.md"}

    # the stages as they are, and one more appended to the list: the pipeline runs it too, on its folders
    monkeypatch.setattr(p, "STAGE_FLOWS", [(s, fake(s.name)) for s in (*STAGES, PUBLISH)])
    result = p.pipeline(input_path="IN", out=str(tmp_path), overrides={"train.tune.max_steps": 3})
    # every stage runs on the one config the pipeline resolved (and recorded in OUT/config.yaml)
    common = {"profile": load_profile("tiny", {"train.tune.max_steps": 3})}
    data, pretrain, tune, report = (str(tmp_path / f) for f in ("data", "pretrain", "tune", "eval"))
    assert calls == [
        ("build-data", {"input_path": "IN", "out": data, **common}),
        ("cache-features", {"data": data, **common}),
        ("pretrain", {"data": data, "out": pretrain, **common}),
        ("tune", {"data": data, "init": pretrain, "out": tune, **common}),
        ("evaluate", {"checkpoint": tune, "out": report, **common}),
        ("publish", {"report": report, "out": str(tmp_path / "publish"), **common}),
    ]
    assert all(kwargs["profile"] is calls[0][1]["profile"] for _, kwargs in calls)  # one object, not reloads
    assert load_profile(str(tmp_path / "config.yaml")) == common["profile"]
    assert result == {**run_folders(tmp_path, [*STAGES, PUBLISH]), "report": "evaluate.md"}
