"""A profile: every config section together, loaded by name (bundled YAML) or from a YAML path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from mumu.config.base import StrictModel
from mumu.config.data import DataConfig
from mumu.config.eval import EvalConfig
from mumu.config.model import ModelConfig
from mumu.config.runtime import RuntimeConfig
from mumu.config.train import TrainConfig
from mumu.errors import UserError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
# libyaml's safe loader when PyYAML was built with it: ~8x faster (3 vs 22 ms a profile), and every flow of a
# pipeline run loads the profile again.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ProfileConfig(StrictModel):
    name: str
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig

    @model_validator(mode="after")
    def _benchmark_prompt_mode(self) -> "ProfileConfig":
        """Evaluation prompts are built the way the tune stage's prompts were: unset, eval.benchmark.prompt_mode
        becomes train.tune.prompt_mode. A text-only tune stage never saw an image, so its benchmark takes the
        MUMU form, which keeps the subject's name in the prompt."""
        bench = self.eval.benchmark
        if bench.prompt_mode is None:
            mode = "unimo" if self.train.tune.prompt_mode == "unimo" else "mumu"
            ev = self.eval.model_copy(update={"benchmark": bench.model_copy(update={"prompt_mode": mode})})
            object.__setattr__(self, "eval", ev)  # frozen model: set once, here, while it is being validated
        return self


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def load_profile(name_or_path: str = "tiny", overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """Load a bundled profile by name, or a YAML file by path; `overrides` maps dotted keys to values.

    Any problem (unknown profile, YAML syntax, unknown or ill-typed field) raises UserError with one line.
    """
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} and path.exists()):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UserError(
                f"unknown profile {name_or_path!r}: choose one of {', '.join(available_profiles())} or give a YAML path"
            )
    try:
        tree = yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"profile {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"profile {path}: expected a mapping at the top level")
    tree.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        return ProfileConfig.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UserError(f"profile {path.name}: {where}: {first['msg']}{more}") from None


def config_hash(config: StrictModel) -> str:
    """Stable short hash of a config section: recorded in manifests and checkpoints."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
