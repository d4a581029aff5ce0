"""Toy reproduction of UNIMO-G's ablation (Tables 2-3): w/o Tuning vs w/o VisualEnh vs full, on CPU.

    python -m bench.ablation --steps-pretrain 150 --steps-tune 80 --seeds 0 1 2 --out runs/ablation [--write-docs]

Per seed, with the same budget (N + M optimizer steps of batch `train.*.batch_size`) and the same data:
  (a) "w/o Tuning":    stage 1 (text-to-image pretraining) for N + M steps
                       (= stage 1's N-step run resumed from its last checkpoint for M more steps);
  (b) "w/o VisualEnh": stage 1 (N steps, the same model as (a) at step N) + tuning, train.tune.attn_loss.weight=0;
  (c) "full":          the same stage 1 + tuning with the attention-mask loss (the profile's weight > 0).
Before the seeds, the toy's Idefics2 is aligned once so that its image tokens read as colour words
(bench/ablation_mllm.py, the stand-in for UNIMO-G's pretrained MLLM; --mllm-steps 0 keeps the random one), and every
arm loads it.
Data: emoji scenes captioned with their colours and names (bench/ablation_data.py); the tiny profile's recipe and
fitted VAE (mumu/profiles/tiny.yaml);
scores: subject identification among all evaluated subjects (mumu/eval/identify.py, with its chance level),
colour-histogram subject fidelity and background adherence (bench/ablation_metrics.py), on held-out subjects
and on new prompts of seen subjects. Not part of CI (tests/test_ablation_smoke.py runs the
plumbing with 1-2 steps). Everything is written under --out; re-running reuses finished parts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from mumu.io import write_text_atomic

ARMS = {"a": "w/o Tuning (stage 1 only)", "b": "w/o VisualEnh (attn weight 0)", "c": "full (tune + attn loss)"}
COLUMNS = [("heldout", "identified"), ("heldout", "margin"), ("seen", "identified"), ("seen", "margin"),
           ("all", "adherence")]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps-pretrain", type=int, default=150, help="N: stage-1 steps")
    ap.add_argument("--steps-tune", type=int, default=80, help="M: tuning steps (arm a pretrains M more instead)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--profile", default="ablation")
    ap.add_argument("--scenes", type=int, default=512, help="training scenes rendered")
    ap.add_argument("--scene-size", type=int, default=128)
    ap.add_argument("--max-objects", type=int, default=1, choices=(1, 2, 3), help="emoji per training scene: 1 to this")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.5, 0.7), help="emoji side as a share of the scene's "
                    "(as the default run's mumu/samples/train)")
    ap.add_argument("--heldout", type=int, default=8, help="subjects never in training scenes")
    ap.add_argument("--seen", type=int, default=8, help="training subjects with new eval prompts")
    ap.add_argument("--train-subjects", type=int, default=None,
                    help="train on this many of the subjects not held out (default: all of them)")
    ap.add_argument("--prompt-mode", default="unimo", choices=("unimo", "mumu"),
                    help="tuning prompts and eval prompts: the subject image in place of its name (UNIMO-G) or before it")
    ap.add_argument("--recolour", type=float, default=0.5,
                    help="chance that a training emoji is drawn hue-rotated, so only its picture tells its colours")
    ap.add_argument("--captions", default="colours", choices=("colours", "names"),
                    help="name each training emoji with its colours and name ('a green and brown cactus') or its name")
    ap.add_argument("--mllm-steps", type=int, default=1000,
                    help="steps of the toy MLLM's image-text alignment (bench/ablation_mllm.py) shared by every arm; "
                         "0 = the random-weight Idefics2")
    ap.add_argument("--samples", type=int, default=None, help="images per prompt (default eval.samples_per_prompt)")
    ap.add_argument("--sample-steps", type=int, default=None, help="denoising steps (default eval.sampler.steps)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--write-docs", action="store_true", help="also write docs/ablation.md")
    return ap.parse_args(argv)


def seed_overrides(seed: int) -> dict:
    """A seed changes the weight init of every trained part and every training draw."""
    return {"runtime.seed": seed, "model.encoder.model.seed": 4 + 100 * seed, "model.decoder.unet.seed": 5 + 100 * seed}


def mllm_overrides(mllm_dir: str | None) -> dict:
    """The encoder loaded from the aligned toy MLLM (its saved Idefics2) instead of built from its config."""
    return {} if mllm_dir is None else {"model.encoder.model.pretrained": mllm_dir, "model.encoder.model.config": None}


def run_seed(args_dict: dict, seed: int, urls: list[str]) -> dict:
    """Train the three arms of one seed → {arm: {model_dir, steps, seconds, attn_weight, attn_mean, ...}}."""
    import torch

    from mumu.config import load_profile
    from mumu.train.loop import train

    torch.set_num_threads(args_dict["threads"])
    n, m = args_dict["steps_pretrain"], args_dict["steps_tune"]
    root = Path(args_dict["out"]) / f"seed-{seed}"
    base = {**seed_overrides(seed), **mllm_overrides(args_dict["mllm_dir"]),
            "runtime.train_torch_threads": args_dict["threads"],
            "train.tune.prompt_mode": args_dict["prompt_mode"],
            "train.pretrain.max_steps": n, "train.tune.max_steps": m}
    profile = load_profile(args_dict["profile"], base)
    profile_b = load_profile(args_dict["profile"], {**base, "train.tune.attn_loss.weight": 0.0})
    results: dict[str, dict] = {}

    def logger(store):
        return lambda step, metrics: store.append(metrics["attn"])

    stage1 = root / "stage1-model"
    summary_path = root / "arms.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    first = train("pretrain", profile, urls, root / "a-pretrain", resume=False)
    stage1_seconds = time.perf_counter() - t0
    shutil.rmtree(stage1, ignore_errors=True)
    shutil.copytree(first.model_dir, stage1)
    t0 = time.perf_counter()
    # arm a: the same run extended to n + m steps (max_steps is not in the checkpoints' fingerprint: it resumes)
    longer = load_profile(args_dict["profile"], {**base, "train.pretrain.max_steps": n + m})
    arm_a = train("pretrain", longer, urls, root / "a-pretrain", resume=True)
    results["a"] = {"model_dir": str(arm_a.model_dir), "pretrain_steps": arm_a.steps, "tune_steps": 0,
                    "resumed_from": arm_a.start_step, "attn_weight": None, "attn_mean": None,
                    "tune_checkpoint": None, "final_loss": arm_a.final_loss,
                    "seconds": stage1_seconds + time.perf_counter() - t0}
    for arm, prof in (("b", profile_b), ("c", profile)):
        attn: list[float] = []
        t0 = time.perf_counter()
        res = train("tune", prof, urls, root / f"{arm}-tune", init=stage1, resume=False, on_log=logger(attn))
        results[arm] = {"model_dir": str(res.model_dir), "pretrain_steps": n, "tune_steps": res.steps,
                        "resumed_from": 0, "attn_weight": prof.train.tune.attn_loss.weight,
                        "attn_mean": float(np.mean(attn)) if attn else None,
                        "tune_checkpoint": str(res.checkpoints[-1]) if res.checkpoints else None,
                        "final_loss": res.final_loss, "seconds": stage1_seconds + time.perf_counter() - t0}
    write_text_atomic(summary_path, json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def evaluate_seed(args_dict: dict, seed: int, arms: dict, prompts: list, emoji_dir: str) -> dict:
    """Generate the eval prompts with each arm's model and score them → {arm: {column: value}}."""
    import torch
    from diffusers.utils import make_image_grid

    from bench import ablation_metrics as M
    from mumu.config import load_profile
    from mumu.data.scenes import load_emoji_names
    from mumu.eval import identify
    from mumu.generate import MumuSampler, load_model

    torch.set_num_threads(args_dict["threads"])
    emoji = Path(emoji_dir)
    profile = load_profile(args_dict["profile"])
    n = args_dict["samples"] or profile.eval.samples_per_prompt
    steps = args_dict["sample_steps"] or profile.eval.sampler.steps
    hists = {f: M.subject_hist(emoji, f) for f in sorted(load_emoji_names(emoji))}
    subjects, subject_feats = eval_subjects(emoji, prompts)
    out = {}
    for arm, info in arms.items():
        sampler = MumuSampler(load_model(info["model_dir"]), profile.eval.sampler)
        images = sampler.generate_batch([p.prompt(emoji, args_dict["prompt_mode"]) for p in prompts], n=n,
                                        seed=1000 * seed, steps=steps)
        rows = []
        for p, imgs in zip(prompts, images):
            others = [h for f, h in hists.items() if f != p.emoji]
            rows += [{"kind": p.kind, **M.score_image(im, p.colour, hists[p.emoji], others),
                      "identified": identify.identify(identify.describe(im), subject_feats, [subjects.index(p.emoji)])}
                     for im in imgs]
        grid = make_image_grid([im for imgs in images for im in imgs], rows=len(prompts), cols=n)
        grid.save(Path(args_dict["out"]) / f"seed-{seed}" / f"samples-{arm}.png")
        out[arm] = aggregate(rows)
    return out


def eval_subjects(emoji: Path, prompts: list):
    """Identification is among the evaluated subjects (held-out and seen): chance = 1 / their number."""
    from PIL import Image

    from mumu.data.scenes import _emoji_path
    from mumu.eval import identify

    subjects = sorted({p.emoji for p in prompts})
    return subjects, identify.subject_features([[Image.open(_emoji_path(emoji, f))] for f in subjects])


def aggregate(rows: list[dict]) -> dict:
    """Mean of each (subset, metric) column over image rows."""
    res = {}
    for kind, metric in COLUMNS + [("all", "foreground_share"), ("heldout", "fidelity"), ("seen", "fidelity")]:
        vals = [r[metric] for r in rows if kind == "all" or r["kind"] == kind]
        res[f"{kind}/{metric}"] = float(np.mean(vals)) if vals else float("nan")
    return res


def format_table(per_seed: dict[int, dict], reference: dict | None) -> str:
    """Markdown table: rows = arms, columns = metrics as mean ± std over seeds."""
    head = ["Method"] + [f"{k} {m}" for k, m in COLUMNS] + ["fg share"]
    keys = [f"{k}/{m}" for k, m in COLUMNS] + ["all/foreground_share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, label in ARMS.items():
        cells = []
        for key in keys:
            vals = np.array([per_seed[s][arm][key] for s in sorted(per_seed)])
            cells.append(f"{vals.mean():.3f} ± {vals.std():.3f}")
        lines.append(f"| ({arm}) {label} | " + " | ".join(cells) + " |")
    if reference is not None:
        lines.append("| prompt drawn exactly (metric ceiling) | " + " | ".join(f"{reference[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> dict:
    import torch

    from bench import ablation_data as D
    from bench import ablation_metrics as M
    from mumu import SAMPLES_DIR
    from mumu.config import load_profile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emoji = SAMPLES_DIR.parent / "emoji"
    profile = load_profile(args.profile)
    train_subjects, heldout = D.split_subjects(emoji, args.heldout, seed=0, n_train=args.train_subjects)
    prompts = D.eval_prompts(train_subjects, heldout, args.seen, seed=0)
    t0 = time.perf_counter()
    data = D.build_shards(emoji, train_subjects, out / "data", args.scenes, args.scene_size, 0, profile,
                          args.max_objects, tuple(args.scale), args.recolour, args.captions == "colours")
    urls = D.shard_urls(out / "data" / "shards")
    data_seconds = time.perf_counter() - t0
    print(f"data: {data['written']} scenes ({data_seconds:.0f} s)", flush=True)
    mllm = None
    if args.mllm_steps:
        from bench.ablation_mllm import pretrain_mllm

        mllm = pretrain_mllm(profile.model.encoder, emoji, sorted(train_subjects), sorted(heldout), out / "mllm",
                             args.mllm_steps)
        print(f"toy MLLM alignment: {mllm}", flush=True)

    ad = {**vars(args), "mllm_dir": str(out / "mllm" / "model") if mllm else None}
    per_seed_arms: dict[int, dict] = {}
    t_train = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futs = {s: pool.submit(run_seed, ad, s, urls) for s in args.seeds}
            per_seed_arms = {s: f.result() for s, f in futs.items()}
    else:
        per_seed_arms = {s: run_seed(ad, s, urls) for s in args.seeds}
    train_seconds = time.perf_counter() - t_train
    t_eval = time.perf_counter()
    per_seed = {s: evaluate_seed(ad, s, per_seed_arms[s], prompts, str(emoji)) for s in args.seeds}
    eval_seconds = time.perf_counter() - t_eval

    hists = {f: M.subject_hist(emoji, f) for f in sorted(D.load_emoji_names(emoji))}
    from mumu.eval import identify

    subjects, subject_feats = eval_subjects(emoji, prompts)
    ref_rows = []
    for p in prompts:
        drawn = M.reference_render(emoji, p.emoji, p.colour)
        ref_rows.append({"kind": p.kind, **M.score_image(drawn, p.colour, hists[p.emoji],
                                                         [h for f, h in hists.items() if f != p.emoji]),
                         "identified": identify.identify(identify.describe(drawn), subject_feats, [subjects.index(p.emoji)])})
    reference = aggregate(ref_rows)
    table = format_table(per_seed, reference)
    budget = {"steps_pretrain": args.steps_pretrain, "steps_tune": args.steps_tune, "seeds": args.seeds,
              "batch_size": profile.train.pretrain.batch_size, "scenes": data["written"],
              "train_subjects": len(train_subjects), "heldout_subjects": len(heldout), "max_objects": args.max_objects, "recolour": args.recolour,
              "prompt_mode": args.prompt_mode, "captions": args.captions, "mllm": mllm,
              "identification_chance": 1 / len(subjects), "vae": profile.model.decoder.vae.pretrained,
              "data_seconds": round(data_seconds, 1), "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(eval_seconds, 1), "total_seconds": round(time.perf_counter() - t_all, 1),
              "cpu": cpu_name(), "cores": os.cpu_count(), "jobs": args.jobs, "threads": args.threads,
              "arm_seconds": {a: [round(per_seed_arms[s][a]["seconds"], 1) for s in args.seeds] for a in ARMS}}
    result = {"table": table, "per_seed": {str(s): v for s, v in per_seed.items()},
              "arms": {str(s): v for s, v in per_seed_arms.items()}, "reference": reference, "budget": budget,
              "prompts": [p.text(args.prompt_mode) for p in prompts], "heldout_subjects": sorted(heldout.values())}
    write_text_atomic(out / "results.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(table)
    print(json.dumps(budget, indent=1))
    if args.write_docs:
        from bench.ablation_report import write_docs

        write_docs(ROOT / "docs" / "ablation.md", result, out)
    return result


if __name__ == "__main__":
    main()
