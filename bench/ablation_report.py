"""docs/ablation.md from a results.json of bench/ablation.py.

    python -m bench.ablation_report runs/ablation/results.json [--docs docs/ablation.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mumu.io import write_text_atomic

ARMS = {"a": "w/o Tuning", "b": "w/o VisualEnh", "c": "full"}

METHOD = """\
# Toy ablation of UNIMO-G's visual-enhanced learning

A CPU-scale version of UNIMO-G's ablation (Tables 2–3: "w/o Tuning", "w/o VisualEnh", full model).
It is a runnable experiment, not part of CI; `tests/test_ablation_smoke.py` runs its plumbing with 1–2 steps.

```
python -m bench.ablation --steps-pretrain 1000 --steps-tune 2000 --seeds 0 1 2 --threads 2 --samples 4 \
    --out runs/ablation --write-docs    # defaults: --prompt-mode unimo --recolour 0.5 --captions colours --mllm-steps 1000
python -m bench.ablation_report runs/ablation/results.json      # (re)writes this file
```

## Set-up

- **Data.** Composed emoji scenes (`mumu.data.scenes.render_scene`, 128 px): 1 to `--max-objects` emoji (default
  1, at 0.5–0.7 of the side, as the default run's `mumu/samples/train`) on a plain or gradient background,
  boxes and masks exact. With probability `--recolour` (0.5) an emoji is drawn with its hue rotated by 60–300°:
  its name then does not tell its colours. The caption names each emoji by the colours it is drawn in and its name
  (`--captions colours`: "a green and brown cactus on a blue background", `mumu.data.scenes.colour_words`), as a
  real caption would; the data stage takes the whole phrase as the entity, so a UNIMO-G prompt replaces colours and
  name with the picture, and tuning must read the colours from the image.
  They go through the real data stage (`mumu.data.stages.run_local`) with the `GroundTruth` oracle as detector
  and segmenter, so the shards hold MUMU and UNIMO-G prompts with the exact crops, segments and masks. 8 of the 72 subjects are
  **held out** (never in a training scene); training draws from `--train-subjects` of the other 64 (all by
  default; fewer subjects are each seen more often in the same budget).
- **The toy's pretrained MLLM** (`bench/ablation_mllm.py`, `--mllm-steps` 1000, shared by every arm and seed):
  UNIMO-G's (a) reads images through an MLLM pretrained on image-text data; the toy's Idefics2 has random weights,
  so nothing would let a model never tuned on image prompts read one. A LLaVA-style alignment stage (language model
  frozen) trains the vision tower, modality projection and image-feature norm so that each of a picture's 4 image
  tokens (a quadrant) lands on the input embedding of the word naming that quadrant's colour; on hue-rotated
  pictures of the *training* subjects only. Every arm loads the saved Idefics2 through the real loading path
  (`model.encoder.model.pretrained`) and keeps its vision tower frozen.
- **Model.** `mumu/profiles/ablation.yaml`: the tiny profile (its recipe: v-prediction on a zero-terminal-SNR
  schedule, the resampler's norm on image features, and the VAE fitted on the bundled samples,
  `bundled:tiny_vae`; docs/recipe.md) with a wider connector (64) and UNet cross-attention (64), 64 px images,
  batch 8, lr 1e-3.
- **Arms** (same data, seed and budget of N + M steps; per seed one stage-1 model is shared):
  (a) *w/o Tuning*: text-to-image pretraining for N + M steps (stage 1's run resumed from its step-N
  checkpoint); (b) *w/o VisualEnh*: stage 1 (N) + multimodal tuning (M) on UNIMO-G prompts (`--prompt-mode
  unimo`: each entity's masked segment, on white, in place of its words) with `train.tune.attn_loss.weight=0`;
  (c) *full*: the same with the profile's attention-mask loss weight (0.1). A seed changes the init of the
  encoder LoRA / connector / UNet and every training draw.
- **Evaluation prompts**, in the tuning prompts' form: "a <image> on a *colour* background" (the subject's emoji
  as the image, on white, in place of its name; `--prompt-mode mumu`: "a <image> *name* on ..."), one seeded
  plain background colour per subject: the 8 held-out subjects and 8 seen subjects; `--samples` (4) samples per
  prompt, DDIM 10 steps, guidance 3. Without its name or colours in words, a subject can only come from its image:
  (a), never trained on an image prompt, gets it only through what the aligned MLLM makes of the picture.

## Metrics, and why these

DINO / CLIP-I need pretrained encoders; offline the evaluation encoders are tiny models with *random*
weights, whose similarities carry no meaning. The scores are therefore weight-free pixel statistics
(`bench/ablation_metrics.py`), meaningful for emoji, which are largely identified by their colours:

- **identified**: subject identification (`mumu/eval/identify.py`, as the evaluation report's): share of images
  whose nearest subject, among all 16 evaluated subjects, on foreground colour histogram and silhouette, is the
  referenced one. Chance is 1/16 = 0.06. An arm must be well above it before arms are compared.
- **fidelity**: histogram intersection (4×4×4 RGB bins) between the generated image's foreground (pixels
  > 48 RGB units from the background colour, estimated as the median of the 3-px border) and the referenced
  emoji's opaque pixels; 0 if nothing was drawn.
- **margin**: fidelity to the referenced subject minus the mean fidelity to all 71 other subjects. Generic
  "emoji-like" colours raise fidelity against every subject and cancel here; only subject-specific colour
  counts. This is the column that says whether the prompt image was used.
- **adherence**: share of images whose border colour is nearest (in the scene palette) to the colour the
  prompt names.
- **fg share**: share of foreground pixels (how much was drawn at all), for reading the others.

The last row scores the prompt drawn exactly (the emoji pasted at the centre of the named colour): the ceiling.
"""


def _ordering(per_seed: dict, key: str) -> str:
    seeds = sorted(per_seed)
    means = {a: sum(per_seed[s][a][key] for s in seeds) / len(seeds) for a in ARMS}
    order = sorted(ARMS, key=lambda a: -means[a])
    return " > ".join(f"({a})" for a in order)


def prompt_spread(grid_path: Path, n_prompts: int) -> float:
    """How much the prompt changes the image: each sample column of a samples grid uses the same initial
    noise for every prompt (row), so the mean over pixels of the std across rows (0..255) is 0 for a model
    that ignores its conditioning."""
    arr = np.asarray(Image.open(grid_path).convert("RGB"), np.float64)
    cell = arr.shape[0] // n_prompts
    cols = arr.shape[1] // cell
    cells = arr.reshape(n_prompts, cell, cols, cell, 3)
    return float(cells.std(axis=0).mean())


def render(result: dict, run_dir: Path | None = None) -> str:
    b = result["budget"]
    per_seed = result["per_seed"]
    lines = [METHOD, "## Results", ""]
    lines += [(f"N = {b['steps_pretrain']} stage-1 steps, M = {b['steps_tune']} tuning steps, batch {b['batch_size']}, "
              f"seeds {b['seeds']}; {b['scenes']} training scenes of {b.get('train_subjects', 64)} subjects "
              f"({b.get('heldout_subjects', 8)} held out), {b.get('recolour', 0.0)} of their emoji recoloured; "
              f"{b.get('prompt_mode', 'mumu')} prompts; captions: {b.get('captions', 'names')}; "
              f"{_mllm(b.get('mllm'))}. Mean ± std over seeds."), "", result["table"], ""]
    lines += ["Order of the arms' means (higher first):", ""]
    for key in ("heldout/identified", "heldout/margin", "seen/identified", "seen/margin", "all/adherence"):
        lines.append(f"- {key}: {_ordering(per_seed, key)}")
    lines += ["", f"Chance of **identified**: {b['identification_chance']:.3f}.", "", "### Budget", "",
              (f"- machine: {b['cpu']}, {b['cores']} cores shared with other work; {b['jobs']} seed process(es) "
              f"in parallel, {b['threads']} torch thread(s) each"),
              (f"- total wall time {b['total_seconds'] / 60:.1f} min: data stage {b['data_seconds']:.0f} s, "
              f"{_mllm_seconds(b.get('mllm'))}training {b['train_seconds']:.0f} s, generation + scoring "
              f"{b['eval_seconds']:.0f} s; VAE {b['vae']}"),
              "- wall time per arm and seed, stage 1 included (s): "
              + "; ".join(f"({a}) {v}" for a, v in b["arm_seconds"].items()), ""]
    lines += ["### Per seed", "",
              ("Prompt spread: mean std (0..255) across prompts of the images drawn from the same noise "
              "(0 = the prompt changes nothing)."), "",
              "| seed | arm | final loss | mean attn loss (logged) | heldout identified | seen identified | adherence | prompt spread |",
              "|---|---|---|---|---|---|---|---|"]
    for s in sorted(per_seed):
        for a in ARMS:
            info, sc = result["arms"][s][a], per_seed[s][a]
            attn = "—" if info["attn_mean"] is None else f"{info['attn_mean']:.3f} (weight {info['attn_weight']})"
            lines.append(f"| {s} | ({a}) | {info['final_loss']:.3f} | {attn} | {sc['heldout/identified']:.3f} | "
                         f"{sc['seen/identified']:.3f} | {sc['all/adherence']:.3f} | {_spread(run_dir, s, a, result)} |")
    lines += ["", (f"Samples: `{run_dir or 'runs/ablation'}/seed-*/samples-{{a,b,c}}.png` (one row per prompt, in the order of "
              "`results.json` \"prompts\")."), ""]
    return "\n".join(lines)


def _mllm(m: dict | None) -> str:
    if not m:
        return "random-weight Idefics2 (no alignment stage)"
    return (f"Idefics2 aligned for {m['steps']} steps (colour-word accuracy of its image tokens {m['word_accuracy_train']:.2f} "
            f"on training subjects, {m['word_accuracy_heldout']:.2f} on held-out ones, chance {m['word_chance']:.2f})")


def _mllm_seconds(m: dict | None) -> str:
    return f"MLLM alignment {m['seconds']:.0f} s, " if m else ""


def _spread(run_dir: Path | None, seed: str, arm: str, result: dict) -> str:
    grid = None if run_dir is None else Path(run_dir) / f"seed-{seed}" / f"samples-{arm}.png"
    return "—" if grid is None or not grid.exists() else f"{prompt_spread(grid, len(result['prompts'])):.1f}"


READING = "\n## Reading (hand-written)"


def write_docs(path: Path, result: dict, run_dir: Path | None = None) -> None:
    """Regenerate everything above an existing hand-written "## Reading" section, which is kept as is
    (it interprets one run: re-read it after a new run)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(READING):] if READING in old else ""
    write_text_atomic(path, render(result, run_dir).rstrip("\n") + "\n" + kept)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--docs", default=str(Path(__file__).resolve().parent.parent / "docs" / "ablation.md"))
    a = ap.parse_args(argv)
    write_docs(Path(a.docs), json.loads(Path(a.results).read_text()), Path(a.results).parent)


if __name__ == "__main__":
    main()
