"""The generation protocol a benchmark was run under, as the report states it.

Published subject-driven numbers depend as much on the protocol as on the model: sampler, steps, guidance,
resolution, seeds, images per prompt, how the subject's image sits in the prompt and which image of the subject
was given. A report without them cannot be compared with anything, so every score carries them
(`describe`), report.json keeps them and report.md prints them above its table.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mumu.config.eval import EvalConfig
from mumu.eval.items import Benchmark
from mumu.eval.presets import protocol_deviations

PROMPT_FORMS = {
    "mumu": "MUMU: the subject's image before its name (\"a <image> dog in the jungle\")",
    "unimo": "UNIMO-G: the subject's image in place of its name (\"a <image> in the jungle\")",
}


def image_size(path: str | Path) -> list[int]:
    """[width, height] of an image file (header only)."""
    with Image.open(path) as im:
        return list(im.size)


def input_images(bench: Benchmark) -> dict[str, list[str]]:
    """Per subject, the images its benchmark's prompts gave it (sorted; one per subject in DreamBench,
    MultiBench and the toy; every image in turn in the folder layout's single benchmark)."""
    used: dict[str, set[str]] = {}
    for item in bench.items:
        for subject, image in zip(item.subjects, item.given_images()):
            used.setdefault(subject, set()).add(image)
    return {subject: sorted(images) for subject, images in sorted(used.items())}


def describe(bench: Benchmark, cfg: EvalConfig, resolution: list[int] | None) -> dict:
    """The protocol of one scored benchmark (JSON-ready). `resolution`: [width, height] of the generated images
    as written (None when no image was generated), the size the sampler really produced."""
    sampler = cfg.sampler
    return {
        "sampler": sampler.name, "steps": sampler.steps, "guidance_scale": sampler.guidance_scale,
        "timestep_spacing": sampler.timestep_spacing, "resolution": resolution,
        "samples_per_prompt": cfg.samples_per_prompt,
        "seeds": f"per item: sha256('{cfg.seed}:<item id>') (mumu/eval/runner.py item_seed); image k of an item "
                 "uses that seed + k",
        "eval_seed": cfg.seed,
        "prompt_mode": bench.prompt_mode, "prompt_form": PROMPT_FORMS[bench.prompt_mode],
        "references": cfg.benchmark.references,
        "input_images": input_images(bench),
        "preset": cfg.protocol, "preset_deviations": protocol_deviations(cfg, bench.samples_per_prompt),
    }


def markdown(benchmark: str, protocol: dict) -> list[str]:
    """The protocol as a few report lines (the per-subject input images as a collapsed list)."""
    res = protocol.get("resolution")
    lines = [
        f"**{benchmark}**: {protocol['sampler'].upper()} {protocol['steps']} steps ({protocol['timestep_spacing']} "
        f"spacing), guidance {protocol['guidance_scale']:g}, {res[0] if res else '?'}×{res[1] if res else '?'} px, "
        f"{protocol['samples_per_prompt']} images per prompt, seeds {protocol['seeds']} with eval seed "
        f"{protocol['eval_seed']}; prompts in the {protocol['prompt_form']}; fidelity references: "
        f"{protocol['references']}."
        + (f" Protocol preset **{protocol['preset']}**" + (
            f", except: {'; '.join(protocol['preset_deviations'])}." if protocol.get("preset_deviations")
            else ", followed in every setting.") if protocol.get("preset") else ""),
        "",
        "<details><summary>input image of each subject</summary>", "",
    ]
    lines += [f"- {subject}: {', '.join(Path(p).name for p in images)}"
              for subject, images in protocol["input_images"].items()]
    return lines + ["", "</details>", ""]
