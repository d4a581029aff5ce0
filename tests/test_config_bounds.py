"""Every number in the config has bounds, and a value outside them fails when the profile is loaded:
one line naming the field (exit 2 from the CLI, nothing written), never a traceback deep inside a run.

The config tree is walked from ProfileConfig, so a numeric field added without bounds fails here.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
from pydantic import BaseModel

from mumu.cli import main
from mumu.config import load_profile
from mumu.config.profile import ProfileConfig
from mumu.errors import UserError

# Numbers that are valid anywhere on the real line: NaN and infinity are still refused (allow_inf_nan=False).
UNBOUNDED_OK = {
    "data.segment.mask_threshold": "a threshold on SAM's mask logits, any finite value",
}


def _unwrap(annotation):
    """(base type, element constraints) of an annotation: Optional[...] and Annotated[...] peeled off;
    for list/tuple of Annotated numbers, the element's constraints."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        numeric = [_unwrap(a) for a in args]
        numeric = [n for n in numeric if n[0] is not None]
        return numeric[0] if len(numeric) == 1 else (None, [])
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        inner, inner_meta = _unwrap(base)
        return inner, [*inner_meta, *[m for c in meta for m in getattr(c, "metadata", [c])]]
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1:
            base, meta = _unwrap(args[0])
            if base in (int, float):
                return ("list", base), meta
        return None, []
    if annotation in (int, float):
        return annotation, []
    return None, []


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def walk(model: type[BaseModel], prefix: str = ""):
    """(dotted path, base type, constraints) of every numeric field reachable from `model`."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        for sub in _models_in(info.annotation):
            yield from walk(sub, path + ".")
        base, element_meta = _unwrap(info.annotation)
        if base is None:
            continue
        meta = element_meta if isinstance(base, tuple) else [*info.metadata, *element_meta]
        yield path, base, [m for m in meta if isinstance(m, (at.Ge, at.Gt, at.Le, at.Lt, at.MultipleOf))]


FIELDS = list(walk(ProfileConfig))
BOUNDED = [(p, b, m) for p, b, m in FIELDS if m]


def bad_values(base, meta) -> list:
    """Values just outside each bound (and NaN / infinity for floats)."""
    scalar = base[1] if isinstance(base, tuple) else base
    step = 1 if scalar is int else 0.5
    out = []
    lower = None
    for m in meta:
        if isinstance(m, at.Ge):
            out.append(m.ge - step)
            lower = m.ge
        elif isinstance(m, at.Gt):
            out.append(m.gt)
            lower = m.gt + step
        elif isinstance(m, at.Le):
            out.append(m.le + step)
        elif isinstance(m, at.Lt):
            out.append(m.lt)
    for m in meta:
        if isinstance(m, at.MultipleOf):
            out.append((lower or m.multiple_of) + m.multiple_of // 2)  # above the lower bound, off the grid
    if scalar is float:
        out += [math.nan, math.inf]
    return [[v] for v in out] if isinstance(base, tuple) else out


CASES = [(path, value) for path, base, meta in BOUNDED for value in bad_values(base, meta)]


def test_every_numeric_field_is_bounded():
    unbounded = sorted(p for p, _, m in FIELDS if not m)
    assert unbounded == sorted(UNBOUNDED_OK), f"numeric config fields without bounds: {unbounded}"
    # The walk reaches every section (a field missed here would escape the checks below).
    for expected in ("train.pretrain.checkpoint_every", "train.tune.lr.unet", "data.ingest.max_side",
                     "model.decoder.resolution", "eval.sampler.height", "runtime.workers",
                     "data.caption.model.seed", "eval.benchmark.multi_sizes", "train.tune.attn_loss.layers",
                     "train.pretrain.augment.share", "model.encoder.lora.r"):
        assert any(p == expected for p, _, _ in BOUNDED), expected
    assert len(BOUNDED) >= 90 and len(CASES) > len(BOUNDED)


@pytest.mark.parametrize("path, value", CASES, ids=[f"{p}={v}" for p, v in CASES])
def test_out_of_bounds_value_fails_at_load_naming_the_field(path, value):
    with pytest.raises(UserError) as info:
        load_profile("tiny", {path: value})
    message = str(info.value)
    assert "\n" not in message
    assert f": {path}" in message, message
    assert any(word in message for word in ("greater than", "less than", "multiple of", "finite number")), message


@pytest.mark.parametrize("path, value", [
    ("train.pretrain.checkpoint_every", 1), ("train.pretrain.sample_every", 0), ("train.tune.max_steps", 1),
    ("train.tune.lr.unet", 0.0), ("data.detect.box_threshold", 1.0), ("train.tune.cfg_dropout", 0.0),
    ("model.decoder.resolution", 8), ("eval.sampler.width", 40), ("runtime.torch_threads", 0),
    ("eval.benchmark.multi_sizes", [2]), ("train.tune.attn_loss.layers", [1, 2]), ("train.tune.ema_decay", 0.999),
    ("data.segment.mask_threshold", -3.5),
])
def test_values_on_the_edge_of_their_bounds_load(path, value):
    cfg = load_profile("tiny", {path: value})
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    assert (list(node) if isinstance(node, tuple) else node) == value


@pytest.mark.parametrize("overrides, needle", [
    ({"model.connector.width": 30, "model.connector.heads": 4}, "multiple of connector.heads"),
    ({"model.decoder.beta_start": 0.02}, "beta_start 0.02 must be below beta_end"),
    ({"data.ingest.min_file_bytes": 10, "data.ingest.max_file_bytes": 5}, "min_file_bytes 10 > max_file_bytes 5"),
    ({"runtime.train_machines": 2, "runtime.train_machine_rank": 2, "runtime.train_main_address": "h:1"},
     "train_machine_rank must be in [0, 2)"),
    ({"data.caption.model.dtype": "float64"}, "data.caption.model.dtype"),
])
def test_fields_that_bound_each_other(overrides, needle):
    with pytest.raises(UserError, match=None) as info:
        load_profile("tiny", overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def empty_dir(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    return root


@pytest.mark.parametrize("argv, field", [
    (["pretrain", "--data", "{d}/data", "--out", "{d}/run", "--set", "train.pretrain.checkpoint_every=0"],
     "train.pretrain.checkpoint_every"),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/run", "--set", "train.pretrain.max_steps=-5"],
     "train.pretrain.max_steps"),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/run", "--set", "train.pretrain.batch_size=0"],
     "train.pretrain.batch_size"),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/run", "--set", "train.pretrain.lr.unet=.nan"],
     "train.pretrain.lr.unet"),
    (["tune", "--data", "{d}/data", "--init", "{d}/p", "--out", "{d}/run", "--set", "train.tune.cfg_dropout=1.5"],
     "train.tune.cfg_dropout"),
    (["tune", "--data", "{d}/data", "--init", "{d}/p", "--out", "{d}/run", "--attn-loss-weight", "-1"],
     "train.tune.attn_loss.weight"),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/run", "--max-steps", "0"], "train.pretrain.max_steps"),
    (["tune", "--data", "{d}/data", "--init", "{d}/p", "--out", "{d}/run", "--max-steps", "0"], "train.tune.max_steps"),
    (["build-data", "--input", "{d}", "--out", "{d}/data", "--set", "data.ingest.max_side=4"],
     "data.ingest.max_side"),
    (["evaluate", "--checkpoint", "{d}/m", "--out", "{d}/rep", "--set", "eval.sampler.height=60"],
     "eval.sampler.height"),
    (["generate", "--checkpoint", "{d}/m", "--prompt", "a cat", "--out", "{d}/o.png", "--steps", "0"],
     "steps"),
    (["pipeline", "--out", "{d}/all", "--set", "model.decoder.resolution=100"], "model.decoder.resolution"),
])
def test_cli_rejects_bad_numbers_with_one_line_and_writes_nothing(argv, field, empty_dir, capsys):
    argv = [a.format(d=empty_dir) for a in argv]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:") and field in err[0], err
    assert list(Path(empty_dir).iterdir()) == []
