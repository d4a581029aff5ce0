"""Data of the toy ablation (bench/ablation.py): composed emoji scenes → shards, and held-out eval prompts.

Training scenes come from mumu.data.scenes.render_scene over the *training* subjects only (1–3 emoji on a
plain or gradient background, caption from their names or their colours and names, exact boxes and masks) and go through the real
data stage (mumu.data.stages.run_local) with the GroundTruth oracle as detector and segmenter, so the
shards hold exactly what the pipeline would write with perfect detection and segmentation.

Held out for evaluation:
- `heldout` subjects: never in any training scene (fidelity must come from the prompt image alone);
- the eval scenes of `seen` subjects are new prompts (subject x plain background pairs drawn under a seed
  different from training), so they test prompt following on known subjects.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mumu.data import stages
from mumu.data.oracle import GroundTruth
from mumu.data.scenes import PLAIN, _emoji_path, article, load_emoji_names, render_scene
from mumu.io import write_text_atomic

# Background colours whose name the word-level tokenizer knows ("teal" is not in mumu/resources/words.txt)
# and that are not near-white (the prompt images are shown on white).
EVAL_COLOURS = ("blue", "green", "yellow", "pink", "gray", "purple")


@dataclass(frozen=True)
class EvalPrompt:
    kind: str  # "heldout" (subject never trained on) or "seen" (subject in training scenes)
    emoji: str  # file name of the referenced subject
    name: str
    colour: str  # background colour named in the prompt (a key of scenes.PLAIN)

    def prompt(self, emoji_dir: Path, form: str) -> list:
        """The multimodal prompt as the data stage composes the training prompts of `form`: "mumu", the subject
        image before its name; "unimo", the image in place of the name (UNIMO-G)."""
        image = Image.open(_emoji_path(emoji_dir, self.emoji)).convert("RGBA")
        name = f" {self.name}" if form == "mumu" else ""
        return [f"{article(self.name)} ", image, f"{name} on {article(self.colour)} {self.colour} background"]

    def text(self, form: str) -> str:
        name = f" {self.name}" if form == "mumu" else ""
        return f"{article(self.name)} <image>{name} on {article(self.colour)} {self.colour} background"


def split_subjects(emoji_dir: Path, n_heldout: int, seed: int,
                   n_train: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(training subjects, held-out subjects) as {file: name}, a seeded split of names.json; `n_train` keeps
    that many of the rest for training (all by default): fewer subjects are seen more often in a budget."""
    names = load_emoji_names(emoji_dir)
    files = sorted(names)
    if n_heldout + (n_train or 1) > len(files):
        raise ValueError(f"cannot hold out {n_heldout} and train on {n_train} of {len(files)} subjects")
    rng = random.Random(seed)
    held = set(rng.sample(files, n_heldout))
    rest = [f for f in files if f not in held]
    train = set(rng.sample(rest, n_train)) if n_train else set(rest)
    return ({f: names[f] for f in files if f in train}, {f: names[f] for f in files if f in held})


def eval_prompts(train: dict[str, str], heldout: dict[str, str], n_seen: int, seed: int) -> list[EvalPrompt]:
    """Every held-out subject and `n_seen` training subjects, each on one seeded plain background."""
    rng = random.Random(seed + 7919)
    seen = rng.sample(sorted(train), n_seen)
    out = []
    for kind, files in (("heldout", sorted(heldout)), ("seen", sorted(seen))):
        for f in files:
            names = heldout if kind == "heldout" else train
            out.append(EvalPrompt(kind, f, names[f], rng.choice(EVAL_COLOURS)))
    return out


def build_shards(emoji_dir: Path, train: dict[str, str], out: Path, n_scenes: int, size: int, seed: int,
                 profile, max_objects: int = 3, scale: tuple[float, float] = (0.3, 0.5), recolour: float = 0.0,
                 describe_colours: bool = False) -> dict:
    """Render `n_scenes` training scenes into out/scenes and write shards to out/shards (skipped when the
    manifest already exists). `recolour`: chance that an emoji is drawn hue-rotated; `describe_colours`: each
    emoji's phrase names its colours ("a green and brown cactus", scenes.render_scene), and the data stage picks
    those whole phrases as entities (a vocabulary of them is written to out/entities.txt), so a UNIMO-G prompt
    replaces the colour words with the picture too. Returns a summary (counts, objects per scene)."""
    scenes_dir, shard_dir = out / "scenes", out / "shards"
    summary_path = out / "data_summary.json"
    if summary_path.exists() and (shard_dir / "manifest.json").exists():
        return json.loads(summary_path.read_text())
    scenes_dir.mkdir(parents=True, exist_ok=True)
    oracle, rows, n_objects, phrases = GroundTruth(), [], [], set()
    for i in range(n_scenes):
        n = random.Random(seed * 1_000_003 + i).randint(1, max_objects)
        scene = render_scene(emoji_dir, seed * 1_000_003 + i, size=size, names=train, n_objects=n, scale=scale,
                             recolour=recolour, describe_colours=describe_colours)
        oracle.add_scene(scene)
        phrases.update(o.name for o in scene.objects)
        file = f"scene_{i:05d}.png"
        scene.image.save(scenes_dir / file)
        rows.append(json.dumps({"image": file, "caption": scene.caption}))
        n_objects.append(len(scene.objects))
    write_text_atomic(scenes_dir / "captions.jsonl", "\n".join(rows) + "\n")
    data_cfg = profile.data
    if describe_colours:
        write_text_atomic(out / "entities.txt", "\n".join(sorted(phrases)) + "\n")
        entities = data_cfg.entities.model_copy(update={"vocabulary": str(out / "entities.txt")})
        data_cfg = data_cfg.model_copy(update={"entities": entities})
    manifest, _ = stages.run_local(scenes_dir, shard_dir, data_cfg, None, oracle, oracle, "ablation")
    if manifest.written != n_scenes:
        raise RuntimeError(f"data stage wrote {manifest.written} of {n_scenes} scenes (see {shard_dir})")
    summary = {"scenes": n_scenes, "written": manifest.written, "size": size,
               "objects": {str(k): n_objects.count(k) for k in sorted(set(n_objects))},
               "train_subjects": len(train), "background_colours": sorted(PLAIN), "scale": list(scale),
               "recolour": recolour, "describe_colours": describe_colours}
    write_text_atomic(summary_path, json.dumps(summary, indent=1, sort_keys=True) + "\n")  # the "done" marker
    return summary


def shard_urls(shard_dir: Path) -> list[str]:
    from mumu.data.shards import shard_urls as _urls

    return _urls(shard_dir)
