"""Held-out renderings of a one-image toy subject: its "other real images" for the copy-paste score and ceiling.

The bundled toy benchmark has one image per emoji subject, so there is no second photo to tell "drew the subject"
from "pasted the reference". These renderings stand in for it: the emoji alone on a plain or gradient background,
at a seeded scale and position — exactly how mumu/data/scenes.py composes the toy training scenes, so they are
what a faithful toy generation of the subject looks like, and none of them is the reference (an emoji on white).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mumu.config.eval import CopyingConfig
from mumu.data.scenes import render_scene
from mumu.eval.items import Subject, load_rgb, slug
from mumu.io import atomic_path


def rendering_seed(base_seed: int, subject_key: str, k: int) -> int:
    """The scene seed of rendering k of a subject: from the config's seed and the subject only (stable across
    benchmarks and subject orders)."""
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{subject_key}:{k}".encode()).digest()[:4], "big")


def render_held_out(subject: Subject, out_dir: str | Path, cfg: CopyingConfig) -> list[str]:
    """`cfg.held_out_renderings` renderings of the subject's (first) image, written as PNG files under
    `out_dir/<subject>/k.png` (atomically; re-rendered each time, which is deterministic and takes milliseconds)."""
    image = Path(subject.images[0])
    size = max(load_rgb(image).size)  # the reference's own size, so resolution does not tell them apart
    paths = []
    for k in range(cfg.held_out_renderings):
        scene = render_scene(image.parent, rendering_seed(cfg.seed, subject.key, k), size=size, n_objects=1,
                             names={image.name: subject.name}, scale=cfg.held_out_scale)
        path = Path(out_dir) / slug(subject.key) / f"{k}.png"
        with atomic_path(path) as tmp:
            scene.image.save(tmp, format="PNG")
        paths.append(str(path))
    return paths
