"""Which training recipe makes the tiny from-scratch model learn its condition? (mumu.eval.prompt_following)

    python -m bench.recipe_probe --steps 300 --arms base v v+zsnr v+zsnr+minsnr ... [--out runs/recipe]

Each arm trains the tiny profile with some overrides on the toy task (K subjects, text and image prompts,
same targets), then samples every prompt from the same seeds and prints nearest-target accuracy per prompt
kind (chance 1/K), prompt spread, final loss and wall time, as a markdown table. Arms run one after the
other in this process (timing two torch processes side by side on 2 cores says nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

V = {"model.decoder.prediction_type": "v_prediction"}
ZSNR = {**V, "model.decoder.rescale_betas_zero_snr": True}
ARMS: dict[str, dict] = {
    # the tiny profile as it was: epsilon, no feature norm
    "eps": {"model.decoder.prediction_type": "epsilon", "model.decoder.rescale_betas_zero_snr": False,
            "model.encoder.image_feature_norm": "none", "train.tune.snr_gamma": None},
    "eps+norm": {"model.decoder.prediction_type": "epsilon", "model.decoder.rescale_betas_zero_snr": False,
                 "train.tune.snr_gamma": None},
    "v": {**V, "model.decoder.rescale_betas_zero_snr": False, "train.tune.snr_gamma": None},
    "v-nonorm": {**V, "model.decoder.rescale_betas_zero_snr": False, "model.encoder.image_feature_norm": "none",
                 "train.tune.snr_gamma": None},
    "v+zsnr": {**ZSNR, "train.tune.snr_gamma": None},
    "v+zsnr+minsnr5": {**ZSNR, "train.tune.snr_gamma": 5.0},
    "v+minsnr5": {**V, "model.decoder.rescale_betas_zero_snr": False, "train.tune.snr_gamma": 5.0},
    "v+zsnr-nonorm": {**ZSNR, "train.tune.snr_gamma": None, "model.encoder.image_feature_norm": "none"},
    "v+zsnr lr3e-3": {**ZSNR, "train.tune.snr_gamma": None,
                      "train.tune.lr": {"connector": 3e-3, "encoder": 3e-3, "unet": 3e-3}},
    "v+zsnr lr5e-4": {**ZSNR, "train.tune.snr_gamma": None,
                      "train.tune.lr": {"connector": 5e-4, "encoder": 5e-4, "unet": 5e-4}},
    "v+zsnr b16": {**ZSNR, "train.tune.snr_gamma": None, "train.tune.batch_size": 16},
    "v+zsnr shuffled": {**ZSNR, "train.tune.snr_gamma": None},  # prompts paired with random targets
}


def run_arm(name: str, overrides: dict, args, seed: int) -> dict:
    import torch

    from mumu import SAMPLES_DIR
    from mumu.config import load_profile
    from mumu.eval.prompt_following import score_following, toy_iterate, toy_subjects
    from mumu.generate import MumuSampler, load_model
    from mumu.train.loop import train

    base = {"train.tune.batch_size": args.batch, "train.tune.max_steps": args.steps, "train.tune.warmup_steps": 10,
            "train.tune.checkpoint_every": 10**6, "train.tune.sample_every": 0, "train.tune.attn_loss.weight": 0.0,
            "train.tune.cfg_dropout": 0.1, "runtime.torch_threads": args.threads}
    seed_init = {"runtime.seed": seed, "model.decoder.unet.seed": 5 + 100 * seed, "model.encoder.model.seed": 4 + 100 * seed}
    profile = load_profile(args.profile, {**base, **overrides, **seed_init})
    subjects = toy_subjects(SAMPLES_DIR.parent / "emoji", args.k, profile.model.decoder.resolution)
    out = Path(args.out) / f"{name.replace(' ', '_')}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = train("tune", profile, [], out, resume=False,
                   iterate=toy_iterate(subjects, shuffle_targets="shuffled" in name))
    seconds = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    sampler = MumuSampler(load_model(result.model_dir), profile.eval.sampler)
    score = score_following(sampler, subjects, n=args.n, seed=1234, steps=args.sample_steps,
                            guidance_scale=args.guidance)
    from diffusers.utils import make_image_grid

    rows = [im for kind in score.images for imgs in score.images[kind] for im in imgs]
    make_image_grid(rows, rows=len(rows) // args.n, cols=args.n).save(out / "samples.png")
    return {"arm": name, "text": score.accuracy["text"], "image": score.accuracy["image"],
            "spread_text": score.spread["text"], "spread_image": score.spread["image"],
            "loss": sum(result.losses[-20:]) / 20, "seconds": seconds, "chance": score.chance}


def main(argv=None) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", nargs="+", default=["eps", "v", "v+zsnr", "v+zsnr+minsnr5"], choices=sorted(ARMS))
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (weight init and draws)")
    ap.add_argument("--n", type=int, default=4, help="images per prompt")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/recipe")
    args = ap.parse_args(argv)
    rows = []
    print("| arm | seed | steps x batch | text acc | image acc | spread text / image | loss | train s |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.arms:
        for seed in args.seeds:
            r = {**run_arm(name, ARMS[name], args, seed), "seed": seed}
            rows.append(r)
            print(f"| {name} | {seed} | {args.steps} x {args.batch} | {r['text']:.2f} | {r['image']:.2f} | "
                  f"{r['spread_text']:.1f} / {r['spread_image']:.1f} | {r['loss']:.3f} | {r['seconds']:.0f} |", flush=True)
    print("\n| arm | text acc (mean over seeds) | image acc |\n|---|---|---|")
    for name in args.arms:
        mine = [r for r in rows if r["arm"] == name]
        print(f"| {name} | {sum(r['text'] for r in mine) / len(mine):.2f} | {sum(r['image'] for r in mine) / len(mine):.2f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
