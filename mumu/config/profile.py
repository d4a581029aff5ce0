"""A profile: every config section together, loaded by name (bundled YAML) or from a YAML path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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
        errors = [(_where(e["loc"]), e["msg"], len(e["loc"])) for e in exc.errors()]
        # A value of a union field (e.g. "all" | list of ints) fails once per branch: the deepest error is the
        # branch that matched the value's type, e.g. "layers.0: ... greater than or equal to 1", not "should be 'all'".
        where, msg, _ = max(errors, key=lambda e: e[2])
        others = len({w for w, _, _ in errors} - {where})
        more = f" (and {others} more)" if others else ""
        raise UserError(f"profile {path.name}: {where}: {msg}{more}") from None


def _where(loc: tuple) -> str:
    """Dotted field path of a validation error, without pydantic's union-branch tags ("list[int]")."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "(" in p))) or "(top level)"


def config_hash(config: StrictModel) -> str:
    """Stable short hash of a config section: recorded in manifests and checkpoints."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
