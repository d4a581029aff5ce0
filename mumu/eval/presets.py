"""Named evaluation protocols and the published figures a run on real checkpoints can be read against.

A protocol preset is the generation settings a paper evaluated with (`mumu evaluate --protocol NAME` applies them
as overrides, below any --set). `eval.protocol` records the name; the report lists any setting that differs from
it, so "UNIMO-G protocol" is never claimed for a run that changed its steps.

Published figures are printed under a run's own only when they can be compared at all: the benchmark is the
published one (DreamBench or MultiBench read in their own layouts) and the encoders are real pretrained DINO and
CLIP (not the tiny profile's random ones). They are other models' numbers, marked so. Only figures checked
against their paper are listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from mumu.config.eval import EvalConfig
from mumu.errors import UserError

PROTOCOLS: dict[str, dict] = {
    # UNIMO-G §4.2: "A classifier-free guidance scale of 5.0 and 50 DDIM inference steps"; "four images for each
    # prompt".
    "unimo-g": {"eval.sampler.name": "ddim", "eval.sampler.steps": 50, "eval.sampler.guidance_scale": 5.0,
                "eval.samples_per_prompt": 4},
}
PROTOCOL_SOURCES = {"unimo-g": "UNIMO-G (Li et al. 2024, arXiv 2401.13388) §4.2"}


@dataclass(frozen=True)
class PublishedFigure:
    model: str
    benchmark: str  # Benchmark.source: "dreambench" | "multibench"
    dino: float
    clip_i: float
    clip_t: float
    source: str


UNIMO_G = "UNIMO-G (Li et al. 2024, arXiv 2401.13388), reported results"
PUBLISHED = [
    PublishedFigure("UNIMO-G", "dreambench", 0.668, 0.841, 0.329, UNIMO_G),
    PublishedFigure("UNIMO-G", "multibench", 0.436, 0.665, 0.298, UNIMO_G),
]


def protocol_overrides(name: str) -> dict:
    """The overrides of a named protocol, with `eval.protocol` naming it."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {name!r}: choose one of {', '.join(sorted(PROTOCOLS))}")
    return {**PROTOCOLS[name], "eval.protocol": name}


def _value(cfg: EvalConfig, dotted: str):
    node = cfg
    for part in dotted.split(".")[1:]:  # "eval.sampler.steps" -> cfg.sampler.steps
        node = getattr(node, part)
    return node


def protocol_deviations(cfg: EvalConfig, samples_per_prompt: int | None = None) -> list[str]:
    """The settings of `cfg` that differ from its named protocol ("eval.sampler.steps 20, not 50"); [] without one.
    `samples_per_prompt`: the benchmark's own, where its protocol fixes it (DreamBench: 4)."""
    if cfg.protocol is None:
        return []
    out = []
    for key, expected in PROTOCOLS[cfg.protocol].items():
        actual = samples_per_prompt if key == "eval.samples_per_prompt" and samples_per_prompt else _value(cfg, key)
        if actual != expected:
            out.append(f"{key} {actual}, not {expected}")
    return out


def published_for(source: str, cfg: EvalConfig) -> list[dict]:
    """Published figures of the benchmark (JSON-ready), or [] where they cannot be compared (another benchmark, or
    encoders without pretrained weights)."""
    if cfg.dino.pretrained is None or cfg.clip.pretrained is None:
        return []
    return [vars(f) for f in PUBLISHED if f.benchmark == source]
