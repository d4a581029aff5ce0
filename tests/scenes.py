"""Folders of ground-truth emoji scenes for tests: images + captions.jsonl, and the oracle that knows them."""

import json
from pathlib import Path

from mumu import SAMPLES_DIR
from mumu.data.oracle import GroundTruth
from mumu.data.scenes import render_scene

EMOJI = SAMPLES_DIR.parent / "emoji"


def write_scene_folder(root: Path, seeds, size: int = 256) -> GroundTruth:
    """Render one scene per seed into root (s0.png, s1.png, ... + captions.jsonl); the GroundTruth oracle
    answers as detector and segmenter for them."""
    root.mkdir(parents=True, exist_ok=True)
    oracle, rows = GroundTruth(), []
    for i, seed in enumerate(seeds):
        scene = render_scene(EMOJI, seed, size=size)
        oracle.add_scene(scene)
        scene.image.save(root / f"s{i}.png")
        rows.append(json.dumps({"image": f"s{i}.png", "caption": scene.caption}))
    (root / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return oracle
