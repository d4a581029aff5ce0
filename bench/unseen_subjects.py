"""Subjects never trained on: held-out identification against the number of training subjects and steps.

    python -m bench.unseen_subjects --subjects 16 64 374 --steps 1000 2000 [--tokens 16] [--set KEY=VALUE ...]

Each arm trains the tiny profile's model from scratch on mumu.eval.unseen's task (a subject's picture in a scene
its text sets -> the subject centred on that background), on that many of the bundled 390 emoji
(mumu/samples/fluent-emoji-3d) with 16 held out of every arm, then samples the held-out subjects and the first 16
trained ones in both prompt forms and scores them (mumu.eval.unseen.score_unseen: nearest target in pixels,
colour-and-silhouette identification, background adherence, copy share; chance 1/16). The tune stage's
attention-mask loss is on at the profile's weight (0.1): on 374 subjects at 2,000 steps it lifts held-out naming in
pixels from 0.32 ± 0.02 to 0.46 ± 0.11 over three seeds (docs/recipe.md); `--set train.tune.attn_loss.weight=0` is
the arm without it. Prints one markdown row per arm and form; writes each arm's grid of held-out references and
samples. Arms run one after the other on one torch thread (two torch processes side by side on 2 cores time
nothing): about 3.4 min of training per 1,000 steps and ~1 min of sampling an arm on 2 quiet cores, so the default
arms (3 x 2) take ~36 min, and with 256 subjects too ~49.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from mumu import FLUENT_EMOJI_DIR as EMOJI

HELD_OUT, SEED, COLOUR = 16, 1234, "pink"


def run_arm(n_subjects: int, steps: int, tokens: int, out: Path, seed: int,
            overrides: dict | None = None) -> list[dict]:
    from diffusers.utils import make_image_grid

    from mumu.config import load_profile
    from mumu.eval.unseen import FORMS, load_subjects, score_unseen, split_subjects, unseen_iterate
    from mumu.generate import MumuSampler, load_model
    from mumu.train.loop import train

    train_files, held_files = split_subjects(EMOJI, HELD_OUT, seed=0)
    picked = np.random.default_rng(1).choice(len(train_files), min(n_subjects, len(train_files)), replace=False)
    trained = load_subjects(EMOJI, [train_files[i] for i in sorted(picked)])
    held = load_subjects(EMOJI, held_files)
    profile = load_profile("tiny", {
        "runtime.seed": seed, "runtime.train_torch_threads": 1, "train.tune.batch_size": 8,
        "train.tune.max_steps": steps, "train.tune.warmup_steps": 10, "train.tune.checkpoint_every": steps,
        "train.tune.sample_every": 0, "train.tune.augment.share": 0.0,
        "model.encoder.image_tokens": tokens, **(overrides or {})})
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train("tune", profile, [], out, resume=False, iterate=unseen_iterate(trained))
    seconds = time.perf_counter() - t0
    sampler = MumuSampler(load_model(result.model_dir), profile.eval.sampler)
    rows = []
    for group, subjects in (("held out", held), ("trained", trained[:HELD_OUT])):
        for form in FORMS:
            score = score_unseen(sampler, subjects, COLOUR, form, n=2, seed=SEED)
            rows.append({"subjects": len(trained), "steps": steps, "tokens": tokens, "group": group, "form": form,
                         "pixels": score.pixels, "identified": score.identified, "adherence": score.adherence,
                         "copy": score.copy, "chance": score.chance, "train_s": seconds,
                         "loss": float(np.mean(result.losses[-50:]))})
            if group == "held out" and form == "unimo":
                cells = [im for s, row in zip(subjects, score.images) for im in [s.reference, *row]]
                make_image_grid(cells, rows=len(subjects), cols=3).save(out / "held_out.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[16, 64, 374])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--tokens", type=int, default=16, help="image tokens a picture (an n x n grid)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a profile override for every arm, e.g. --set model.encoder.freeze_vision=false")
    parser.add_argument("--out", default="runs/unseen")
    args = parser.parse_args(argv)
    from mumu.cli import _overrides

    overrides = _overrides(args.set)
    if overrides:
        print(f"overrides: {overrides}")
    print("| training subjects | steps | tokens | subjects asked | form | pixels | identified | background | copy | "
          "chance | train s | loss |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.subjects:
        for steps in args.steps:
            for r in run_arm(n, steps, args.tokens, Path(args.out) / f"s{n}-n{steps}", args.seed, overrides):
                print(f"| {r['subjects']} | {r['steps']} | {r['tokens']} | {r['group']} | {r['form']} | "
                      f"{r['pixels']:.2f} | {r['identified']:.2f} | {r['adherence']:.2f} | {r['copy']:.2f} | "
                      f"{r['chance']:.3f} | {r['train_s']:.0f} | {r['loss']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
