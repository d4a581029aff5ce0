"""The chunked, resumable evaluation runner: generate a benchmark's images chunk by chunk, then score.

Output layout (one `out_dir` per benchmark, e.g. <eval dir>/<benchmark.name>)::

    images/<item id>/<k>.png          sample k of an item (written atomically)
    chunks/chunk-<index:05d>.json     the chunk's record, written LAST: it exists <=> the chunk finished

A chunk whose record exists is not generated again, so a killed evaluation resumes where it stopped
and a retried Prefect task does no duplicate work. Sampling seeds derive from `eval.seed` and the
item id only, so images do not depend on chunk size or on which chunks were resumed.

`generate_fn(prompt_segments: list[str | PIL.Image], n: int, seed: int) -> list[PIL.Image]` is the
generator (passed in; tests give a fake), e.g. `MumuSampler.generate`. Optionally
`generate_batch_fn(prompts: list[list[str | PIL.Image]], n: int, seeds: list[int]) -> list[list[PIL.Image]]`
(e.g. `MumuSampler.generate_batch`) generates a whole chunk in one call, so its items share
denoising batches; the seeds are the same per item, so both paths give the same images.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mumu.config.eval import BootstrapConfig, EvalConfig
from mumu.errors import UserError
from mumu.eval import bootstrap, copying, identify, metrics, protocol
from mumu.eval.benchmarks import build_benchmarks, eval_config_for
from mumu.eval.held_out import render_held_out
from mumu.eval.items import BenchItem, Benchmark, chunk, load_rgb
from mumu.eval.presets import published_for
from mumu.eval.reference_rows import RealFeatures, item_copy_paste, reference_rows
from mumu.eval.report import Report, write_report  # re-exported: the runner's last step
from mumu.io import atomic_path, write_json_atomic

ITEM_METRICS = ("dino", "clip_i", "clip_t", "subject_id", "copy_paste")  # scored per generated image
GenerateFn = Callable[[list, int, int], list[Image.Image]]
GenerateBatchFn = Callable[[list[list], int, list[int]], list[list[Image.Image]]]


@dataclass(frozen=True)
class ChunkResult:
    chunk_index: int
    item_ids: list[str]
    images: dict[str, list[str]]  # item id -> image paths relative to out_dir
    generated: bool  # False when the chunk's record already existed (resumed)
    seconds: float


def item_seed(base_seed: int, item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{item_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def chunk_record_path(out_dir: str | Path, chunk_index: int) -> Path:
    return Path(out_dir) / "chunks" / f"chunk-{chunk_index:05d}.json"


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _read_record(path: Path, items: list[BenchItem], cfg: EvalConfig, out_dir: Path) -> ChunkResult | None:
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    expected = [item.id for item in items]
    if record["item_ids"] != expected or record["samples_per_prompt"] != cfg.samples_per_prompt \
            or record["seed"] != cfg.seed:
        raise UserError(f"{path} records a different chunk (other items, samples_per_prompt or seed): "
                        "evaluate into a fresh output directory")
    missing = [p for paths in record["images"].values() for p in paths if not (out_dir / p).exists()]
    if missing:
        return None  # images were removed after the chunk finished: regenerate it
    return ChunkResult(record["chunk_index"], expected, record["images"], generated=False,
                       seconds=record["seconds"])


def generate_chunk(items: list[BenchItem], generate_fn: GenerateFn | None, out_dir: str | Path, chunk_index: int,
                   cfg: EvalConfig, *, generate_batch_fn: GenerateBatchFn | None = None) -> ChunkResult:
    """Generate `cfg.samples_per_prompt` images for each item of one chunk, unless already done.

    Uses `generate_batch_fn` (one call for the chunk) when given, else `generate_fn` per item."""
    if generate_fn is None and generate_batch_fn is None:
        raise ValueError("give generate_fn or generate_batch_fn")
    out_dir = Path(out_dir)
    record_path = chunk_record_path(out_dir, chunk_index)
    done = _read_record(record_path, items, cfg, out_dir)
    if done is not None:
        return done
    start = time.perf_counter()
    images: dict[str, list[str]] = {}
    n = cfg.samples_per_prompt
    seeds = [item_seed(cfg.seed, item.id) for item in items]
    if generate_batch_fn is not None:
        batched = generate_batch_fn([item.load_prompt() for item in items], n, seeds)
        if len(batched) != len(items):
            raise ValueError(f"generate_batch_fn returned {len(batched)} results for {len(items)} prompts")
        per_item = iter(batched)
    else:  # lazily, so images of finished items are on disk before a later item fails
        per_item = (generate_fn(item.load_prompt(), n, seed) for item, seed in zip(items, seeds))
    for item, outputs in zip(items, per_item):
        if len(outputs) != n or not all(isinstance(im, Image.Image) for im in outputs):
            raise ValueError(f"generate_fn returned {len(outputs)} objects for item {item.id}, expected {n} PIL images")
        rel = [f"images/{item.id}/{k}.png" for k in range(n)]
        for image, path in zip(outputs, rel):
            _save_png(image.convert("RGB"), out_dir / path)
        images[item.id] = rel
    seconds = time.perf_counter() - start
    write_json_atomic(record_path, {
        "chunk_index": chunk_index, "item_ids": [item.id for item in items], "images": images,
        "samples_per_prompt": cfg.samples_per_prompt, "seed": cfg.seed, "seconds": round(seconds, 3),
    })
    return ChunkResult(chunk_index, [item.id for item in items], images, generated=True, seconds=seconds)


def generate_benchmark(bench: Benchmark, generate_fn: GenerateFn | None, out_dir: str | Path, cfg: EvalConfig,
                       *, generate_batch_fn: GenerateBatchFn | None = None) -> list[ChunkResult]:
    """Every chunk of `bench` in order, in this process (flows/evaluate.py instead maps tasks/evaluate.py's
    `generate_chunk` task over the chunks)."""
    return [generate_chunk(items, generate_fn, out_dir, i, cfg, generate_batch_fn=generate_batch_fn)
            for i, items in enumerate(chunk(bench.items, cfg.chunk_size))]


# --- scoring -------------------------------------------------------------------------------------

def _generated_paths(bench: Benchmark, out_dir: Path, cfg: EvalConfig) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for i, items in enumerate(chunk(bench.items, cfg.chunk_size)):
        path = chunk_record_path(out_dir, i)
        if not path.exists():
            raise UserError(f"{bench.name}: chunk {i} has not been generated ({path} is missing)")
        record = json.loads(path.read_text())
        if record["item_ids"] != [item.id for item in items]:
            raise UserError(f"{path} belongs to another benchmark or chunk size")
        found.update(record["images"])
    return found


def _encode(paths: list[str], encoders, batch: int, want_dino: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(DINO CLS features, unnormalised CLIP image embeddings) of image files, `batch` files at a time."""
    dino, clip = [], []
    for start in range(0, len(paths), batch):
        images = [load_rgb(p) for p in paths[start:start + batch]]
        if want_dino:
            dino.append(encoders.dino.features(images, batch).numpy())
        clip.append(encoders.clip.image_embeds(images, batch, normalize=False).numpy())
    return (np.concatenate(dino) if dino else np.zeros((0, 0))), np.concatenate(clip)


def _list_images(folder: Path, limit: int | None) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"eval.fid.reference_dir {folder} is not a directory")
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    return paths[:limit]


def unrelated_mean(items: list[BenchItem], item_rows: dict[str, list[int]], generated: np.ndarray,
                   item_vectors: np.ndarray) -> float | None:
    """A score's chance level: the mean of each item's generated images scored against every item that shares
    none of its subjects, i.e. what the score gives images unrelated to their prompt. With encoders of random
    weights (the tiny profile) a margin over it measures colour and layout statistics, not semantics.
    None when no two items are disjoint.

    The scores here are each a cosine of an image's features with a vector of the item it is scored against:
    DINO / CLIP-I with the mean over the item's subjects of their mean unit reference, CLIP-T with the unit
    text embedding (`item_vectors`, one row per item). So the mean over all (image, unrelated item) pairs is
    one product of summed unit image features with summed item vectors, not items² score calls."""
    unit = metrics.normalize(generated)
    image_sums = np.stack([unit[item_rows[item.id]].sum(axis=0) for item in items])  # [I, D]
    n_images = np.array([len(item_rows[item.id]) for item in items], np.float64)
    subjects = [set(item.subjects) for item in items]
    disjoint = np.array([[a.isdisjoint(b) for b in subjects] for a in subjects], np.float64)  # [I, I]
    pairs = float(n_images @ disjoint.sum(axis=1))
    if not pairs:
        return None
    return float(np.einsum("id,id->", image_sums, disjoint @ item_vectors)) / pairs


def subject_vectors(items: list[BenchItem], ref_features: np.ndarray,
                    ref_rows: Callable[[BenchItem], list[list[int]]]) -> np.ndarray:
    """[I, D] per item: the mean over its subjects of their mean unit reference feature (what
    metrics.subject_similarity takes the cosine with)."""
    unit = metrics.normalize(ref_features)
    return np.stack([np.mean([unit[rows].mean(axis=0) for rows in ref_rows(item)], axis=0) for item in items])


def score(bench: Benchmark, out_dir: str | Path, encoders, cfg: EvalConfig) -> dict:
    """DINO, CLIP-I, CLIP-T, "FID" (see mumu.eval.metrics) and subject identification with its chance level
    (mumu.eval.identify) of a generated benchmark; the copy-paste score (mumu.eval.copying), each metric's bootstrap
    interval over items (mumu.eval.bootstrap), the benchmark's ceiling and copy rows (mumu.eval.reference_rows),
    the protocol it was generated under (mumu.eval.protocol) and, where comparable, published figures.

    `encoders` is a models.eval_encoders.EvalEncoders (or anything with .dino.features and
    .clip.image_embeds / .clip.text_embeds). Returns the aggregate scores plus per-item scores.
    """
    out_dir = Path(out_dir)
    generated = _generated_paths(bench, out_dir, cfg)
    gen_files = [str(out_dir / p) for item in bench.items for p in generated[item.id]]
    gen_dino, gen_clip = _encode(gen_files, encoders, cfg.batch_size)

    ref_files = sorted({p for item in bench.items for refs in item.references for p in refs})
    others = other_real_images(bench, out_dir, cfg)
    # One encoder pass over every real image: references, the images the prompts gave, their subjects' others.
    real_files = sorted(set(ref_files) | {p for item in bench.items for p in item.given_images()}
                        | {p for groups in others.values() for group in groups for p in group})
    real = RealFeatures(real_files, *_encode(real_files, encoders, cfg.batch_size))
    ref_index = {p: i for i, p in enumerate(real_files)}
    ref_dino, ref_clip = real.dino, real.clip
    texts = sorted({item.text for item in bench.items})
    text_emb = encoders.clip.text_embeds(texts).numpy()
    text_index = {t: i for i, t in enumerate(texts)}

    # Subject identification against every subject of the benchmark (mumu/eval/identify.py).
    subject_keys = [sub.key for sub in bench.subjects]
    subject_feats = identify.subject_features([[load_rgb(p) for p in sub.images] for sub in bench.subjects])
    gen_desc = [identify.describe(load_rgb(f)) for f in gen_files]

    def ref_rows(item: BenchItem) -> list[list[int]]:
        return [[ref_index[p] for p in refs] for refs in item.references]

    def dino_of(rows: list[int], item: BenchItem) -> np.ndarray:
        return metrics.subject_similarity(gen_dino[rows], [ref_dino[r] for r in ref_rows(item)])

    def clip_i_of(rows: list[int], item: BenchItem) -> np.ndarray:
        return metrics.subject_similarity(gen_clip[rows], [ref_clip[r] for r in ref_rows(item)])

    def clip_t_of(rows: list[int], item: BenchItem) -> np.ndarray:
        return metrics.clip_t(gen_clip[rows], np.repeat(text_emb[[text_index[item.text]]], len(rows), axis=0))

    per_item = []
    dino_all, clip_i_all, clip_t_all, ident_all, chance_all, copy_all = [], [], [], [], [], []
    item_rows: dict[str, list[int]] = {}
    offset = 0
    for item in bench.items:
        rows = item_rows[item.id] = list(range(offset, offset + len(generated[item.id])))
        offset += len(rows)
        dino, clip_i, clip_t = dino_of(rows, item), clip_i_of(rows, item), clip_t_of(rows, item)
        referenced = [subject_keys.index(k) for k in item.subjects]
        ident = [identify.identify(gen_desc[r], subject_feats, referenced) for r in rows]
        copy_paste = item_copy_paste(gen_dino[rows], item.given_images(), others[item.id], real)
        copy_all += [] if copy_paste is None else copy_paste.tolist()
        dino_all += dino.tolist()
        clip_i_all += clip_i.tolist()
        clip_t_all += clip_t.tolist()
        ident_all += ident
        chance_all += [identify.chance(len(referenced), len(subject_keys))] * len(rows)
        per_item.append({"id": item.id, "text": item.text, "prompt": item.prompt_string(), "subjects": item.subjects,
                         "names": item.names,
                         "references": item.references, "images": [str(out_dir / p) for p in generated[item.id]],
                         "inputs": item.given_images(), "others": others[item.id], "seed": item_seed(cfg.seed, item.id),
                         "dino": dino.tolist(), "clip_i": clip_i.tolist(), "clip_t": clip_t.tolist(),
                         "subject_id": ident, "copy_paste": None if copy_paste is None else copy_paste.tolist()})

    fid_real = (_list_images(Path(cfg.fid.reference_dir), cfg.fid.max_reference_images)
                if cfg.fid.reference_dir else bench.reference_images()[:cfg.fid.max_reference_images])
    if cfg.fid.reference_dir or set(fid_real) - set(real_files):
        real_dino, real_clip = _encode(fid_real, encoders, cfg.batch_size, want_dino=cfg.fid.features == "dino")
    else:
        rows = [ref_index[p] for p in fid_real]
        real_dino, real_clip = ref_dino[rows], ref_clip[rows]
    gen_feat, real_feat = (gen_clip, real_clip) if cfg.fid.features == "clip" else (gen_dino, real_dino)
    fid, fid_note = None, None
    if len(gen_feat) >= 2 and len(real_feat) >= 2:
        fid = metrics.fid_from_features(gen_feat, real_feat)
    else:
        fid_note = f"needs >= 2 images on each side (generated {len(gen_feat)}, real {len(real_feat)})"
    item_ranges = [item_rows[item.id] for item in bench.items]
    fid_ci = None
    if fid is not None:  # the generated side refitted on each resample of items; the real side fixed
        mu_real, sigma_real = metrics.feature_statistics(real_feat)
        fid_ci = bootstrap.statistic_interval(
            len(item_ranges), lambda picked: metrics.frechet_to_reference(
                gen_feat[[r for i in picked for r in item_ranges[i]]], mu_real, sigma_real),
            cfg.bootstrap, cfg.bootstrap.fid_resamples)
    return {
        "benchmark": bench.name, "kind": bench.kind, "n_items": len(bench.items), "n_images": len(gen_files),
        "protocol": protocol.describe(bench, cfg, protocol.image_size(gen_files[0]) if gen_files else None),
        "copy_paste": float(np.mean(copy_all)) if copy_all else None, "published": published_for(bench.source, cfg),
        "ci": {**item_intervals(per_item, cfg.bootstrap), "fid": fid_ci}, "bootstrap_level": cfg.bootstrap.level,
        "reference_rows": reference_rows(bench.items, others, real,
                                         {t: text_emb[text_index[t]] for t in texts}, cfg.bootstrap),
        "n_references": len(ref_files), "n_fid_real": len(real_feat),
        "dino": float(np.mean(dino_all)), "clip_i": float(np.mean(clip_i_all)), "clip_t": float(np.mean(clip_t_all)),
        "subject_id": float(np.mean(ident_all)), "subject_id_chance": float(np.mean(chance_all)),
        "n_subjects": len(subject_keys),
        "dino_chance": unrelated_mean(bench.items, item_rows, gen_dino, subject_vectors(bench.items, ref_dino, ref_rows)),
        "clip_i_chance": unrelated_mean(bench.items, item_rows, gen_clip, subject_vectors(bench.items, ref_clip, ref_rows)),
        "clip_t_chance": unrelated_mean(bench.items, item_rows, gen_clip,
                                        metrics.normalize(text_emb[[text_index[item.text] for item in bench.items]])),
        "fid": fid, "fid_features": cfg.fid.features, "fid_note": fid_note, "items": per_item,
    }

def other_real_images(bench: Benchmark, out_dir: Path, cfg: EvalConfig) -> dict[str, list[list[str]]]:
    """{item id: per subject, its real images other than the one the prompt gave} (mumu/eval/copying.py): its
    other photos, or for the toy benchmark's one-image subjects held-out renderings, written under
    `out_dir/held_out/`."""
    used = {key for item in bench.items for key in item.subjects}
    held = {s.key: render_held_out(s, out_dir / "held_out", cfg.copying) for s in bench.subjects
            if bench.held_out_renderings and s.key in used and len(s.images) == 1}
    images = {s.key: s.images for s in bench.subjects}
    return {item.id: [copying.other_real_images(images[key], given, held.get(key))
                      for key, given in zip(item.subjects, item.given_images())] for item in bench.items}


def item_intervals(per_item: list[dict], cfg: BootstrapConfig) -> dict[str, tuple[float, float] | None]:
    """Bootstrap intervals over items of each per-image metric (each item's images averaged first)."""
    return {metric: bootstrap.mean_interval([float(np.mean(it[metric])) for it in per_item if it.get(metric)], cfg)
            for metric in ITEM_METRICS}


def evaluate(generate_fn: GenerateFn | None, out_dir: str | Path, encoders, cfg: EvalConfig, run: str = "mumu",
             *, generate_batch_fn: GenerateBatchFn | None = None) -> Report:
    """The whole evaluation in one process: build the configured benchmarks, generate each (resuming
    finished chunks) under `<out_dir>/<benchmark name>`, score them and write the report in `out_dir`.
    The Prefect flow maps `generate_chunk` over chunks instead; this is the same sequence, unmapped."""
    out_dir = Path(out_dir)
    scores = []
    for bench in build_benchmarks(cfg.benchmark):
        bench_cfg = eval_config_for(bench, cfg)  # e.g. DreamBench's 4 images per prompt, as the flow does
        generate_benchmark(bench, generate_fn, out_dir / bench.name, bench_cfg, generate_batch_fn=generate_batch_fn)
        scores.append(score(bench, out_dir / bench.name, encoders, bench_cfg))
    return write_report(scores, out_dir, cfg.report, run=run)


__all__ = ["ChunkResult", "Report", "evaluate", "generate_benchmark", "generate_chunk", "item_seed", "score",
           "write_report"]
