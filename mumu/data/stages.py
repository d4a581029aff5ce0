"""The data stage of one shard as plain functions over `ShardWork` (the Prefect tasks wrap these 1:1).

    plan_shards → ingest → caption → find_entities → detect → segment → compose → write
    shard_done (skip finished shards) · write_manifest (after all shards)

Each stage returns a new ShardWork; an item that fails in a stage (undecodable, empty caption, a model
error on that item, ...) leaves `items` for `quarantined` with the stage and a reason, so at the end
`inputs == written + quarantined` holds per shard (asserted before writing) and overall.

Models are anything with the methods of mumu/data/contracts.py: CaptionModel.caption(images) -> list[str];
DetectionModel.detect(images, phrases) -> per image a list of BoxDetection; SegmentationModel.segment(images,
boxes) -> list[bool ndarray [n, H, W]]. A model call covers the whole shard (the model batches by its config);
if it raises, items are retried one by one so only the failing ones are quarantined — unless every
item fails, which means the model (not the data) is broken, and the error propagates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_schemas import Manifest, ShardReport
from mumu.config import config_hash as hash_config
from mumu.config.data import ComposeConfig, DataConfig, EntitiesConfig, IngestConfig
from mumu.data import entities as _entities
from mumu.data.compose import compose_sample, int_box
from mumu.data.contracts import CaptionModel, DetectionModel, SegmentationModel
from mumu.data.decode import BadInput, decode_input
from mumu.data.entities import same_phrase
from mumu.data.ingest import plan_shards, read_refs
from mumu.data.scenes import rle_to_mask
from mumu.data.shard_io import background
from mumu.data.shards import shard_done, write_manifest, write_shard
from mumu.data.work import Composed, Entity, GivenObject, InputShard, Item, ShardWork

__all__ = [
    "InputShard",
    "ShardWork",
    "Item",
    "plan_shards",
    "ingest",
    "caption",
    "find_entities",
    "detect",
    "segment",
    "compose",
    "write",
    "shard_done",
    "write_manifest",
    "compose_shard",
    "run_shard",
    "run_shards",
    "run_local",
]


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"[:300]


def _run_model(call: Callable, args: list[tuple], check: Callable[[Any, tuple], None]) -> list[Any]:
    """`call(*columns)` for all items at once; per item a result or the exception it caused."""

    def once(batch: list[tuple]) -> list[Any]:
        out = list(call(*[list(col) for col in zip(*batch)]))
        if len(out) != len(batch):
            raise ValueError(f"model returned {len(out)} results for {len(batch)} inputs")
        for o, a in zip(out, batch):
            check(o, a)
        return out

    if not args:
        return []
    try:
        return once(args)
    except Exception as exc:  # noqa: BLE001 — find which item(s) the model failed on
        if len(args) == 1:
            return [exc]
    results: list[Any] = []
    for a in args:
        try:
            results.append(once([a])[0])
        except Exception as exc:  # noqa: BLE001
            results.append(exc)
    if all(isinstance(r, Exception) for r in results):
        raise results[0]
    return results


def _apply(work: ShardWork, stage: str, todo: list[int], results: list[Any], update: Callable[[Item, Any], Any]):
    """Each model result onto its item → (items kept, quarantine records). A result that is an exception,
    or an `update` that returns a reason (str) instead of an item, moves the item to quarantine."""
    items: list[Item | None] = list(work.items)
    bad = []
    for i, res in zip(todo, results):
        it = work.items[i]
        out = _reason(res) if isinstance(res, Exception) else update(it, res)
        if isinstance(out, str):
            bad.append(work.reject(it.source, stage, out))
            items[i] = None
        else:
            items[i] = out
    return [it for it in items if it is not None], bad


def ingest(shard: InputShard, cfg: IngestConfig) -> ShardWork:
    """Read and decode every planned input; bad ones go to quarantine with the decoder's reason."""
    work = ShardWork(shard=shard.index, inputs=len(shard.refs), items=(), plan_sha256=shard.plan_sha256)
    items, bad = [], []
    for ref, data, given, error in read_refs(shard.refs, cfg.max_file_bytes):
        if error is None:
            try:
                decoded = decode_input(data, cfg)
            except BadInput as exc:
                error = exc.reason
        if error is not None:
            bad.append(work.reject(ref.source, "ingest", error))
            continue
        items.append(Item(key=ref.key, source=ref.source, image=decoded.image, image_png=decoded.png, caption=given,
                          caption_source="given", given=ref.given))
    given_n = sum(1 for it in items if it.caption)
    annotated = sum(1 for it in items if it.given is not None)
    return work.next(items, bad, {"inputs": len(shard.refs), "decoded": len(items), "captions_given": given_n,
                                  "annotated": annotated})


def caption(work: ShardWork, captioner: CaptionModel | None) -> ShardWork:
    """Caption the items that came without one (`captioner` may be None when every item has one)."""
    todo = [i for i, it in enumerate(work.items) if not it.caption]
    if not todo:
        return work.next(list(work.items))
    if captioner is None:
        results: list[Any] = [RuntimeError("no caption given and no captioner configured")] * len(todo)
    else:

        def check(out, _):
            if not isinstance(out, str):
                raise TypeError(f"captioner returned {type(out).__name__}, not str")

        results = _run_model(captioner.caption, [(work.items[i].image,) for i in todo], check)

    def update(it: Item, text: str):
        if not text.strip():
            return "empty caption from captioner"
        return it.replace(caption=text.strip(), caption_source="vlm")

    items, bad = _apply(work, "caption", todo, results, update)
    return work.next(items, bad, {"captioned_by_vlm": len(todo) - len(bad)})


def find_entities(work: ShardWork, cfg: EntitiesConfig) -> ShardWork:
    """Entity phrases and their caption spans (see mumu/data/entities.py)."""
    items, c = [], Counter()
    for it in work.items:
        ents = _entities.find_entities(it.caption, cfg)
        c["entities"] += len(ents)
        c["no_entities"] += not ents
        items.append(it.replace(entities=tuple(ents)))
    return work.next(items, [], dict(c))


def _given_match(it: Item, phrase: str) -> GivenObject | None:
    return next((o for o in it.given if same_phrase(o.name, phrase)), None)


def _given_box(obj: GivenObject, image_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The annotation's box in the decoded image's pixels (ingest may have downscaled the image)."""
    sx, sy = image_size[0] / obj.size[1], image_size[1] / obj.size[0]
    x0, y0, x1, y1 = obj.box
    return int_box((x0 * sx, y0 * sy, x1 * sx, y1 * sy), *image_size)


def _given_mask(obj: GivenObject, image_size: tuple[int, int]) -> np.ndarray:
    mask = rle_to_mask({"size": list(obj.size), "counts": list(obj.mask_counts)})
    if mask.shape != (image_size[1], image_size[0]):
        mask = np.asarray(Image.fromarray(mask).resize(image_size, Image.Resampling.NEAREST))
    return mask


def detect(work: ShardWork, detector: DetectionModel) -> ShardWork:
    """Best box per entity phrase, as integer pixel boxes; entities with no detection are dropped.
    Annotated items take the box of the given object with the phrase's name (score 1.0) instead; a phrase
    the annotation does not list is dropped like an undetected one."""
    c = Counter()
    items = list(work.items)
    for i, it in enumerate(items):
        if it.given is None or not it.entities:
            continue
        kept = []
        for ent in it.entities:
            obj = _given_match(it, ent.phrase)
            box = _given_box(obj, it.image.size) if obj is not None else None
            if box is None:
                c["entities_unannotated"] += 1
                continue
            kept.append(Entity(ent.phrase, ent.span, box, 1.0))
        c["boxes_given"] += len(kept)
        items[i] = it.replace(entities=tuple(kept))
    work = work.next(items, [], dict(c))
    todo = [i for i, it in enumerate(work.items) if it.entities and it.given is None]

    def check(dets, args):
        n = len(args[1])
        for d in dets:
            if not 0 <= d.phrase_index < n:
                raise ValueError(f"detection phrase_index {d.phrase_index} out of range for {n} phrases")

    args = [(work.items[i].image, [e.phrase for e in work.items[i].entities]) for i in todo]
    results = _run_model(detector.detect, args, check) if todo else []
    c = Counter()

    def update(it: Item, detections) -> Item:
        kept: list[Entity] = []
        for j, ent in enumerate(it.entities):
            best = max((d for d in detections if d.phrase_index == j), key=lambda d: d.score, default=None)
            box = int_box(best.box, *it.image.size) if best is not None else None
            if box is None:
                c["entities_undetected"] += 1
                continue
            kept.append(Entity(ent.phrase, ent.span, box, float(best.score)))
        c["boxes"] += len(kept)
        return it.replace(entities=tuple(kept))

    items, bad = _apply(work, "detect", todo, results, update)
    return work.next(items, bad, dict(c))


def segment(work: ShardWork, segmenter: SegmentationModel) -> ShardWork:
    """One full-image bool mask per detected entity (stored as [n, H, W] on the item); annotated items take
    the given masks."""
    items = list(work.items)
    given = 0
    for i, it in enumerate(items):
        if it.given is not None and it.entities:
            masks = [_given_mask(_given_match(it, e.phrase), it.image.size) for e in it.entities]
            items[i] = it.replace(masks=np.stack(masks))
            given += len(masks)
    work = work.next(items, [], {"masks_given": given})
    todo = [i for i, it in enumerate(work.items) if it.entities and it.given is None]

    def check(masks, args):
        image, boxes = args
        want = (len(boxes), image.size[1], image.size[0])
        if not isinstance(masks, np.ndarray) or masks.shape != want:
            got = masks.shape if isinstance(masks, np.ndarray) else type(masks).__name__
            raise ValueError(f"segmenter returned {got}, expected {want}")

    args = [(work.items[i].image, [tuple(map(float, e.box)) for e in work.items[i].entities]) for i in todo]
    results = _run_model(segmenter.segment, args, check) if todo else []
    c = Counter()

    def update(it: Item, masks) -> Item:
        masks = masks.astype(bool)
        c["masks"] += len(masks)
        c["masks_empty"] += int((~masks.reshape(len(masks), -1).any(axis=1)).sum())
        return it.replace(masks=masks)

    items, bad = _apply(work, "segment", todo, results, update)
    return work.next(items, bad, dict(c))


def compose(work: ShardWork, cfg: ComposeConfig) -> ShardWork:
    """Crops, segments, masks and both prompts per item (see mumu/data/compose.py)."""
    items, bad, c = [], [], Counter()
    for it in work.items:
        try:
            composed, counts = compose_sample(
                key=it.key,
                source=it.source,
                image=it.image,
                image_png=it.image_png,
                caption=it.caption,
                caption_source=it.caption_source,
                entities=list(it.entities),
                masks=it.masks,
                cfg=cfg,
            )
        except ValueError as exc:
            bad.append(work.reject(it.source, "compose", _reason(exc)))
            continue
        c.update(counts)
        items.append(it.replace(composed=composed))
    return work.next(items, bad, dict(c))


def _with_image_format(composed: Composed, fmt: str) -> Composed:
    """compose names the target "image.png"; the write config decides its real encoding."""
    old, new = composed.record.image, f"image.{fmt}"
    if old == new:
        return composed
    images = {(new if k == old else k): v for k, v in composed.images.items()}
    encoded = {k: v for k, v in composed.encoded.items() if k != old}  # PNG bytes, not the format asked for
    return Composed(record=composed.record.model_copy(update={"image": new}), images=images, encoded=encoded)


def write(work: ShardWork, out_dir: str | Path, cfg: DataConfig) -> ShardReport:
    """Atomic shard tar, then its quarantine file, then its report (the "finished" marker)."""
    if work.inputs != len(work.items) + len(work.quarantined):
        raise AssertionError(
            f"{work.name}: inputs {work.inputs} != items {len(work.items)} + quarantined {len(work.quarantined)}"
        )
    missing = [it.source for it in work.items if it.composed is None]
    if missing:
        raise ValueError(f"{work.name}: {len(missing)} items were not composed (first: {missing[0]})")
    samples = [_with_image_format(it.composed, cfg.write.image_format) for it in work.items]
    counts = Counter(work.counts)
    counts["written"] = len(samples)
    counts["quarantined"] = len(work.quarantined)
    for q in work.quarantined:
        counts[f"quarantined_{q.stage}"] += 1
    return write_shard(
        out_dir, work.shard, samples, list(work.quarantined), work.inputs, dict(counts), cfg.write, work.plan_sha256,
        hash_config(cfg),
    )


def compose_shard(shard: InputShard, cfg: DataConfig, captioner: CaptionModel | None, detector: DetectionModel,
                  segmenter: SegmentationModel) -> ShardWork:
    """Every stage of one shard up to `write`."""
    return compose_ingested(ingest(shard, cfg.ingest), cfg, captioner, detector, segmenter)


def compose_ingested(work: ShardWork, cfg: DataConfig, captioner: CaptionModel | None, detector: DetectionModel,
                     segmenter: SegmentationModel) -> ShardWork:
    """The stages between `ingest` and `write`: the models, then the crops."""
    return compose(through_models(work, cfg, captioner, detector, segmenter), cfg.compose)


def through_models(work: ShardWork, cfg: DataConfig, captioner: CaptionModel | None, detector: DetectionModel,
                   segmenter: SegmentationModel) -> ShardWork:
    """The stages of an ingested shard that call the models: caption, entities, detect, segment."""
    work = caption(work, captioner)
    work = find_entities(work, cfg.entities)
    work = detect(work, detector)
    return segment(work, segmenter)


def run_shard(shard: InputShard, out_dir, cfg: DataConfig, captioner: CaptionModel | None, detector: DetectionModel,
              segmenter: SegmentationModel) -> ShardReport:
    """All stages of one shard in order (what the flow does per shard, without Prefect)."""
    return write(compose_shard(shard, cfg, captioner, detector, segmenter), out_dir, cfg)


def run_shards(shards: Sequence[InputShard], out_dir, cfg: DataConfig, captioner: CaptionModel | None,
               detector: DetectionModel, segmenter: SegmentationModel, ran: list[int] | None = None,
               write_behind: bool = False, read_ahead: bool = False, shard_io: str = "thread") -> list[ShardReport]:
    """`run_shard` on each shard whose report does not exist yet (what one task run of the flow does: a retried
    run redoes only its unfinished shards); the index of each shard run now is appended to `ran`.

    Both options keep the single-threaded models busy by giving a core they leave idle the rest of the work, on
    one background worker for both (in order: a shard's compose and write, then the next shard's ingest):
    read_ahead: the next shard is ingested (inputs read, decoded, resized) there while this one is in the models;
    an ingest error surfaces when its shard's turn comes, as without it.
    write_behind: each shard is composed and written (crops, PNG encoding, tar, fsync, sha256) there while the
    next one goes through the models. A shard's write must finish before the next shard is handed over: its
    error surfaces there, and no more than two shards' images are held. Whatever ends the run, a write in
    progress finishes first (leaving its report, or nothing) before the error propagates, so a retry never races
    it for the same files.
    shard_io: where that worker is, "thread" or "process" (mumu/data/shard_io.py; docs/figures.md: build-data)."""
    config_hash = hash_config(cfg)
    reports: dict[int, ShardReport | Future] = {
        s.index: r for s in shards if (r := shard_done(out_dir, s.index, s, config_hash)) is not None}
    todo = [s for s in shards if s.index not in reports]
    with background(shard_io) as submit:
        pending: Future | None = None
        for shard, ingested in zip(todo, _ingested(todo, cfg, submit if read_ahead else None)):
            work = through_models(ingested, cfg, captioner, detector, segmenter)
            if ran is not None:
                ran.append(shard.index)
            if write_behind:
                if pending is not None:
                    pending.result()
                reports[shard.index] = pending = submit(compose_and_write, work, out_dir, cfg)
            else:
                reports[shard.index] = compose_and_write(work, out_dir, cfg)
    return [r.result() if isinstance(r, Future) else r for r in (reports[s.index] for s in shards)]


def compose_and_write(work: ShardWork, out_dir, cfg: DataConfig) -> ShardReport:
    """The stages of a shard after the models (what `write_behind` runs in the background)."""
    return write(compose(work, cfg.compose), out_dir, cfg)


def _ingested(shards: Sequence[InputShard], cfg: DataConfig, submit: Callable[..., Future] | None):
    """`ingest` of each shard in order; with `submit`, the next shard's runs there while this one is used. The
    first is ingested here: a worker process that is still starting would only be waited for."""
    if submit is None or not shards:
        yield from (ingest(shard, cfg.ingest) for shard in shards)
        return
    ahead = submit(ingest, shards[1], cfg.ingest) if len(shards) > 1 else None
    yield ingest(shards[0], cfg.ingest)
    for i in range(1, len(shards)):
        current, ahead = ahead, (submit(ingest, shards[i + 1], cfg.ingest) if i + 1 < len(shards) else None)
        yield current.result()


def run_local(
    input_path, out_dir, cfg: DataConfig, captioner: CaptionModel | None, detector: DetectionModel,
    segmenter: SegmentationModel, config_hash: str, write_behind: bool = False, read_ahead: bool = False,
    shard_io: str = "thread",
) -> tuple[Manifest, list[int]]:
    """Plan, run every unfinished shard sequentially, write the manifest → (manifest, shards run now)."""
    ran: list[int] = []
    reports = run_shards(plan_shards(input_path, cfg.ingest), out_dir, cfg, captioner, detector, segmenter, ran,
                         write_behind, read_ahead, shard_io)
    return write_manifest(out_dir, reports, config_hash), ran
