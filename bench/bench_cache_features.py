"""cache-features throughput: the Prefect flow vs the bare forwards of the frozen parts it runs, in one process,
and the disk the cache takes per sample.

    python -m bench.bench_cache_features [--images 96] [--repeats 2]

Two tiny configurations: the tiny profile (its encoder trains LoRA: the VAE posterior of each target and the
vision-tower grid of each crop are cached) and the tiny profile with the whole encoder frozen and UNIMO-G prompts
(posterior + the hidden states of the caption and of the UNIMO-G prompt). Data: `--images` emoji scenes with their
ground-truth boxes and masks, 8 a shard (the data stage's models are not what is measured here).
- bare:   the forwards alone on samples decoded before the timer, batched as the stage batches them
          (train.features.batch_size): VAE encoder on the targets, vision tower on the crops / encoder on the
          prompts;
- stages: mumu.train.feature_stage.run_local (read shards, decode, forwards, write sidecars), no Prefect;
- flow:   flows.cache_features.cache_features, warm (API started, models cached by a first run elsewhere).
Best of `--repeats` interleaved runs. Then bytes per sample of each cache (tensor data + headers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import torch  # noqa: E402

from mumu import SAMPLES_DIR  # noqa: E402
from mumu.config import load_profile  # noqa: E402
from mumu.data import stages  # noqa: E402
from mumu.data.oracle import GroundTruth  # noqa: E402
from mumu.data.scenes import render_scene  # noqa: E402
from mumu.train import feature_stage  # noqa: E402

CONFIGS = {
    "tiny (latents + vision)": {},
    "frozen encoder (latents + prompt)": {"model.encoder.train_language_model": "frozen",
                                          "model.encoder.lora.enabled": False, "train.tune.prompt_mode": "unimo"},
}


def make_data(root: Path, n: int) -> Path:
    src, out = root / "scenes", root / "data"
    src.mkdir(parents=True)
    oracle, rows = GroundTruth(), []
    for i in range(n):
        scene = render_scene(SAMPLES_DIR.parent / "emoji", 20_000 + i)
        oracle.add_scene(scene)
        scene.image.save(src / f"s{i:04d}.png")
        rows.append(json.dumps({"image": f"s{i:04d}.png", "caption": scene.caption}))
    (src / "captions.jsonl").write_text("\n".join(rows) + "\n")
    stages.run_local(src, out, load_profile("tiny").data, None, oracle, oracle, "bench")
    return out


def bare_seconds(data: Path, cfg) -> float:
    """The frozen parts' forwards alone, on samples read and decoded before the timer."""
    from models.decoder import vae_posterior
    from models.mumu_model import target_pixels
    from mumu.train.samples import decode_sample

    plan = feature_stage.plan_cache(data, cfg.model, cfg.train)
    parts = feature_stage.FrozenParts(cfg.model, plan.spec, "cpu")
    n = cfg.train.features.batch_size
    work = []
    for shard in plan.shards:
        views = [{f: decode_sample(raw, f) for f in ("text", "mumu", "unimo")}
                 for raw in feature_stage._data_samples(data / shard.name)]
        pixels = torch.stack([target_pixels(v["text"].image, cfg.model.decoder.resolution)[0] for v in views])
        crops = [s[0] for v in views for s in v["mumu"].segments if not isinstance(s, str)]
        prompts = {form: [[v["text"].caption] if form == "text" else
                          [s if isinstance(s, str) else s[0] for s in v[form].segments] for v in views]
                   for form in parts.forms}
        work.append((pixels, crops, prompts))
    start = time.perf_counter()
    with torch.no_grad():
        for pixels, crops, prompts in work:
            for i in range(0, len(pixels), n):
                vae_posterior(parts.vae, pixels[i:i + n])
            for i in range(0, len(crops) if parts.image_kinds else 0, n):
                parts.vision.grids(*parts.vision.preprocess(crops[i:i + n]))
            for batch in prompts.values():
                for i in range(0, len(batch), n):
                    parts.encoder(parts.encoder.tokenize(batch[i:i + n]))
    return time.perf_counter() - start


def flow_seconds(data: Path, overrides: dict) -> float:
    """The cache-features flow as a subflow, the way `mumu pipeline` runs it (a top-level run ends only when its
    heartbeat thread wakes from its 1 s sleep, which rounds every timing up to the next whole second)."""
    from prefect import flow

    from flows.cache_features import cache_features

    @flow(name="bench-cache-features")
    def parent(data: str, overrides: dict) -> float:
        start = time.perf_counter()
        cache_features(data=data, overrides=overrides)
        return time.perf_counter() - start

    return parent(str(data), overrides)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mumu.train.features import cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "main", args.images)
        warm = make_data(tmp / "warm", 8)
        for overrides in CONFIGS.values():
            flow_seconds(warm, overrides)  # API up, frozen parts in the task cache
        for label, overrides in CONFIGS.items():
            cfg = load_profile("tiny", overrides)
            plan = feature_stage.plan_cache(data, cfg.model, cfg.train)
            best = {}

            def fresh():
                shutil.rmtree(cache_dir(data, plan.key), ignore_errors=True)  # every run computes every shard

            def stage_seconds():
                fresh()
                start = time.perf_counter()
                feature_stage.run_local(data, cfg.model, cfg.train)
                return time.perf_counter() - start

            for _ in range(args.repeats):
                for name, seconds in (("bare", lambda: bare_seconds(data, cfg)), ("stages", stage_seconds),
                                      ("flow", lambda: fresh() or flow_seconds(data, overrides))):
                    best[name] = min(best.get(name, float("inf")), seconds())
                # The flow's fixed cost: a re-run with every sidecar finished (its flow runs, plan, manifest,
                # artifact, event).
                best["fixed"] = min(best.get("fixed", float("inf")), flow_seconds(data, overrides))
            manifest = json.loads((cache_dir(data, plan.key) / "manifest.json").read_text())
            n = manifest["samples"]
            print(f"{label}: {n} samples in {len(manifest['shards'])} shards, best of {args.repeats}, "
                  f"load average {os.getloadavg()[0]:.1f}")
            fixed = best.pop("fixed")
            for name, seconds in best.items():
                print(f"  {name:7s} {n / seconds:8.1f} samples/s ({seconds:.2f} s)  {best['bare'] / seconds:.2f}x bare")
            print(f"  the flow's fixed cost {fixed:.2f} s (all sidecars done); without it "
                  f"{best['bare'] / (best['flow'] - fixed):.2f}x bare")
            data_bytes = sum(s["bytes"] for s in json.loads((data / "manifest.json").read_text())["shards"])
            print(f"  disk: {manifest['bytes'] / n / 1e3:.1f} KB per sample ({manifest['bytes'] / data_bytes:.2f}x the "
                  f"data shards' bytes); parts {', '.join(manifest['spec']['parts'])}")


if __name__ == "__main__":
    main()
