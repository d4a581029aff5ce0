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


def _find_profile(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A YAML path (absolute, or relative to the cwd / the extending profile's folder), else a bundled name."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"}:
        for candidate in ([relative_to / path] if relative_to is not None and not path.is_absolute() else []) + [path]:
            if candidate.exists():
                return candidate
    bundled = PROFILES_DIR / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    raise UserError(
        f"unknown profile {name_or_path!r}: choose one of {', '.join(available_profiles())} or give a YAML path"
    )


def _read_tree(path: Path) -> dict:
    try:
        tree = yaml.load(path.read_text(), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"profile {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"profile {path}: expected a mapping at the top level")
    return tree


def deep_merge(base: dict, over: dict) -> dict:
    """`over` laid on `base`: mappings merge key by key, anything else (lists too) replaces what was there."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The profile's tree with its `extends:` chain merged in (a profile names only what differs from its base)."""
    path = path.resolve()
    if path in chain:
        names = " -> ".join(p.stem for p in (*chain, path))
        raise UserError(f"profile {path.name}: `extends` makes a cycle ({names})")
    tree = _read_tree(path)
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise UserError(f"profile {path.name}: `extends` must name one profile (a bundled name or a YAML path)")
    try:
        base_path = _find_profile(base, relative_to=path.parent)
    except UserError:
        raise UserError(f"profile {path.name}: extends unknown profile {base!r} (bundled: "
                        f"{', '.join(available_profiles())})") from None
    inherited = _resolve_tree(base_path, (*chain, path))
    inherited.pop("name", None)  # a profile is named after itself, not after its base
    return deep_merge(inherited, tree)


def load_profile(name_or_path: str = "tiny", overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """Load a bundled profile by name, or a YAML file by path; `overrides` maps dotted keys to values.

    A profile may start with `extends: BASE` (a bundled name, or a YAML path relative to the profile's folder):
    the base is loaded first (its own `extends` too) and the profile's keys are deep-merged over it.
    Any problem (unknown profile or base, an `extends` cycle, YAML syntax, unknown or ill-typed field) raises
    UserError with one line.
    """
    path = _find_profile(name_or_path)
    tree = _resolve_tree(path)
    tree.setdefault("name", path.stem)
    return _validated(tree, overrides, path.name)


def resolve_profile(profile: str | ProfileConfig, overrides: dict[str, Any] | None = None) -> ProfileConfig:
    """The config an entry point runs on: a profile's name or path loaded (load_profile), or a config resolved
    upstream taken as it is, `overrides` laid on either. Entry points resolve once and pass the object down, so
    a stage run by the pipeline sees exactly the config the pipeline checked and recorded."""
    if isinstance(profile, ProfileConfig):
        return _validated(profile.model_dump(mode="json"), overrides, profile.name) if overrides else profile
    return load_profile(profile, overrides)


def _validated(tree: dict, overrides: dict[str, Any] | None, where: str) -> ProfileConfig:
    """`tree` with `overrides` set, as a ProfileConfig; a bad field is one UserError line naming `where`."""
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    try:
        return ProfileConfig.model_validate(tree)
    except ValidationError as exc:
        errors = [(_where(e["loc"]), e["msg"], len(e["loc"])) for e in exc.errors()]
        # A value of a union field (e.g. "all" | list of ints) fails once per branch: the deepest error is the
        # branch that matched the value's type, e.g. "layers.0: ... greater than or equal to 1", not "should be 'all'".
        where_field, msg, _ = max(errors, key=lambda e: e[2])
        others = len({w for w, _, _ in errors} - {where_field})
        more = f" (and {others} more)" if others else ""
        raise UserError(f"profile {where}: {where_field}: {msg}{more}") from None


def _where(loc: tuple) -> str:
    """Dotted field path of a validation error, without pydantic's union-branch tags ("list[int]")."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or "(" in p))) or "(top level)"


def config_hash(config: StrictModel, exclude: set[str] | None = None) -> str:
    """Stable short hash of a config section (without its fields `exclude`): recorded in manifests and checkpoints."""
    blob = json.dumps(config.model_dump(mode="json", exclude=exclude), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
