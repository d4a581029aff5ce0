"""Cost of the data-stage wrappers over the bare transformers forward they wrap, same process.

    python -m bench.bench_data_models [--profile tiny] [--images 16] [--repeats 3] [--threads 1]

For the captioner, detector and segmenter of a profile, prints seconds per image of
  - baseline: the model's forward/generate on inputs prepared beforehand (what transformers costs);
  - wrapper:  caption / detect / segment end to end (preprocessing, batching, thresholds, NMS, masks);
and wrapper/baseline (how much the wrapper adds). The detector is also timed at batch size 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from mumu.config import load_profile
from models.captioner import Captioner
from models.detector import Detector
from models.segmenter import Segmenter


def scene(seed: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        draw.rectangle([x0, y0, x0 + size // 3, y0 + size // 3], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, n: int, baseline: float, wrapper: float) -> None:
    print(f"{name:<22} baseline {baseline / n * 1e3:8.2f} ms/img   wrapper {wrapper / n * 1e3:8.2f} ms/img   "
          f"ratio {wrapper / baseline:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_profile(args.profile).data
    images = [scene(i, args.size) for i in range(args.images)]
    phrases = [["red box", "blue ball", "dog"][: 1 + i % 3] for i in range(args.images)]
    n = len(images)

    captioner = Captioner.from_config(cfg.caption)
    batches = [captioner.processor(images=[[im] for im in images[i : i + cfg.caption.batch_size]],
                                   text=[captioner.prompt] * len(images[i : i + cfg.caption.batch_size]),
                                   padding=True, return_tensors="pt")
               for i in range(0, n, cfg.caption.batch_size)]

    def generate():
        with torch.no_grad():
            for b in batches:
                captioner.model.generate(**b, max_new_tokens=cfg.caption.max_new_tokens, do_sample=False)

    report("captioner", n, best_of(generate, args.repeats), best_of(lambda: captioner.caption(images), args.repeats))

    detector = Detector.from_config(cfg.detect)
    bs = cfg.detect.batch_size
    prompts = [". ".join(p) + "." for p in phrases]
    batches = [detector.processor(images=images[i : i + bs], text=prompts[i : i + bs], padding="longest",
                                  return_tensors="pt") for i in range(0, n, bs)]

    def forward():
        with torch.no_grad():
            for b in batches:
                detector.model(**b)

    baseline = best_of(forward, args.repeats)
    report("detector", n, baseline, best_of(lambda: detector.detect(images, phrases), args.repeats))
    single = Detector(detector.model, detector.processor, cfg.detect.model_copy(update={"batch_size": 1}))
    report("detector batch=1", n, baseline, best_of(lambda: single.detect(images, phrases), args.repeats))

    segmenter = Segmenter.from_config(cfg.segment)
    s = args.size
    two = [(0.1 * s, 0.1 * s, 0.5 * s, 0.6 * s), (0.4 * s, 0.3 * s, 0.9 * s, 0.9 * s)]
    boxes = [two[: 1 + i % 2] for i in range(n)]
    prepared = [segmenter.processor(images=im, input_boxes=[[list(b) for b in bx]], return_tensors="pt")
                for im, bx in zip(images, boxes)]

    def sam_forward():
        with torch.no_grad():
            for p in prepared:
                segmenter.model(pixel_values=p["pixel_values"], input_boxes=p["input_boxes"], multimask_output=False)

    report("segmenter", n, best_of(sam_forward, args.repeats),
           best_of(lambda: segmenter.segment(images, boxes), args.repeats))


if __name__ == "__main__":
    main()
