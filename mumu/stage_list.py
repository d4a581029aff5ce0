"""The stage list: the pipeline's stages, in the order they run, and what each reader needs to know about them.

    build-data ──▶ cache-features ──▶ pretrain ──▶ tune ──▶ evaluate
    RUN/data       RUN/data/features  RUN/pretrain RUN/tune RUN/eval

This is the one place the chain is written. flows/pipeline.py runs the stages in this order, each on the folders
named here; deployments/events.py names the completion events after them; `mumu` has a subcommand per stage
(mumu/cli.py: a generic one for a stage without its own); deployments/smoke.py waits for the last one; the tests
enumerate them from here, and tests/test_stage_list.py checks that prefect.yaml has each stage's deployment with
this entrypoint, work queue and trigger (and no stage this list lacks). Adding a stage: docs/architecture.md,
"Adding a stage".

Plain data with no imports from the project, so every layer may read it (pyproject.toml's import contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The events that chain the stages (emitted by deployments/events.py, matched by prefect.yaml's triggers):
STAGE_COMPLETED = "mumu.stage.completed"  # a stage flow finished: resource "mumu.stage.<stage>", payload {"out": ...}
DATA_LANDED = "mumu.data.landed"  # new input files: resource "mumu.inputs.<hash of the folder>", payload {"input": ...}
STAGE_RESOURCE = "mumu.stage"
INPUTS_RESOURCE = "mumu.inputs"
# Resource label: "true" only on a stage run that was itself a top-level deployment run; triggers require it.
CHAIN_LABEL = "mumu.chain"
# Every stage's deployment in prefect.yaml is "<stage>/mumu" (flow name / deployment name).
DEPLOYMENT_NAME = "mumu"
# In Stage.parameters: the run's input (the files that landed, `mumu pipeline --input`), not a stage's folder.
RUN_INPUT = "(input)"


@dataclass(frozen=True)
class Stage:
    name: str  # the flow's name: deployment "<name>/mumu", `mumu <name>`, event resource "mumu.stage.<name>"
    entrypoint: str  # "flows/<module>.py:<flow function>", as prefect.yaml names it
    folder: str  # where it writes, under a run root (RUN/<folder>)
    upstream: str | None  # the stage whose completion starts it; None: started by new input (DATA_LANDED)
    # The flow's folder parameters → the stage whose folder each one takes (the stage itself: its own output,
    # RUN_INPUT: the run's input). The pipeline passes these; the stage's trigger in prefect.yaml sets these.
    parameters: dict[str, str] = field(default_factory=dict, hash=False)
    queue: str = "gpu"  # prefect.yaml's work queue: "gpu" (one run at a time) for whatever loads the models

    @property
    def deployment(self) -> str:
        return f"{self.name}/{DEPLOYMENT_NAME}"

    @property
    def resource_id(self) -> str:
        """The resource of this stage's completion event (what the next stage's trigger matches)."""
        return f"{STAGE_RESOURCE}.{self.name}"

    @property
    def trigger_event(self) -> str:
        return DATA_LANDED if self.upstream is None else STAGE_COMPLETED

    @property
    def trigger_resource(self) -> str:
        """The prefect.resource.id this stage's trigger matches."""
        return f"{INPUTS_RESOURCE}.*" if self.upstream is None else f"{STAGE_RESOURCE}.{self.upstream}"

    @property
    def module(self) -> str:
        """The flow's module, importable: "flows/build_data.py:build_data" → "flows.build_data"."""
        return self.entrypoint.partition(":")[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.partition(":")[2]


STAGES: tuple[Stage, ...] = (
    Stage("build-data", "flows/build_data.py:build_data", "data", None,
          {"input_path": RUN_INPUT, "out": "build-data"}, queue="default"),
    Stage("cache-features", "flows/cache_features.py:cache_features", "data/features", "build-data",
          {"data": "build-data"}),
    Stage("pretrain", "flows/pretrain.py:pretrain", "pretrain", "cache-features",
          {"data": "build-data", "out": "pretrain"}),
    Stage("tune", "flows/tune.py:tune", "tune", "pretrain",
          {"data": "build-data", "init": "pretrain", "out": "tune"}),
    Stage("evaluate", "flows/evaluate.py:evaluate", "eval", "tune",
          {"checkpoint": "tune", "out": "evaluate"}),
)


def problems(stages: tuple[Stage, ...] | list[Stage]) -> list[str]:
    """What is wrong with a stage list (empty when nothing): names unique, each upstream and each folder
    parameter's stage an earlier stage (or the stage itself), the run's input only for a stage new input starts."""
    found, seen = [], set()
    for stage in stages:
        if stage.name in seen or stage.name == RUN_INPUT:
            found.append(f"{stage.name}: name used twice or reserved")
        if stage.upstream is not None and stage.upstream not in seen:
            found.append(f"{stage.name}: upstream {stage.upstream!r} is not an earlier stage")
        for param, source in stage.parameters.items():
            if source == RUN_INPUT and stage.upstream is not None:
                found.append(f"{stage.name}: parameter {param!r} takes the run's input, but new input does not "
                             f"start this stage (its upstream is {stage.upstream!r})")
            elif source not in (*seen, stage.name, RUN_INPUT):
                found.append(f"{stage.name}: parameter {param!r} takes the folder of {source!r}, not an earlier stage")
        if not (stage.entrypoint.startswith("flows/") and ".py:" in stage.entrypoint):
            found.append(f"{stage.name}: entrypoint {stage.entrypoint!r} is not flows/<module>.py:<function>")
        seen.add(stage.name)
    return found


if _found := problems(STAGES):
    raise ValueError("mumu/stage_list.py: " + "; ".join(_found))


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r} in mumu/stage_list.py (stages: {', '.join(s.name for s in STAGES)})")


def chain(stages: tuple[Stage, ...] | list[Stage] = STAGES) -> str:
    """"build-data → cache-features → pretrain → tune → evaluate"."""
    return " → ".join(s.name for s in stages)


def run_folders(root: str | Path, stages: tuple[Stage, ...] | list[Stage] = STAGES) -> dict[str, str]:
    """Each stage's folder under the run root `root`, by stage name."""
    return {s.name: str(Path(root) / s.folder) for s in stages}


def top_folders(stages: tuple[Stage, ...] | list[Stage] = STAGES) -> list[str]:
    """The run root's own folders, in stage order: ["data", "pretrain", "tune", "eval"]."""
    return list(dict.fromkeys(Path(s.folder).parts[0] for s in stages))
