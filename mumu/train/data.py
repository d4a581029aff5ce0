"""Training examples streamed from the data stage's webdataset shards.

Pipeline of one *slot* (a (rank, loader worker) pair), built from webdataset's pieces:
    ResampledShards (seeded, infinite) -> this slot's share of the draws -> tar members (ours: png/jpg/json
    only; with a feature cache, the sidecar shard's member of each sample read in step) -> shuffle buffer
    (seeded) -> decode + validate (own handlers, never pickle) -> batches
    -> per-sample view (text / MUMU / UNIMO prompt, text-only conversion, crop augmentation, the cached
    features that fit the view: models/cached.py).

Determinism and resume: every random choice is seeded. Shard draws come from one sequence fixed by
`seed` and are dealt round-robin to the world_size * max(1, loader_workers) slots; the shuffle buffer
of a slot is seeded by (seed, rank, slot); the view of a sample (text-only coin, augmentation) by
(seed, rank, slot, index of the sample in the slot). Global batch g of a rank comes from slot g % W
(W workers; torch's DataLoader hands out worker batches round-robin, in order) as that slot's batch
g // W. A resumed stream (start_step=s) starts DataLoader worker j as slot (s + j) % W and fast-forwards
it by (s + j) // W batches: it reads and validates the skipped samples (validity decides batch
membership) but builds no views. The stream is therefore a function of (shards, stage, seed, rank,
world_size, loader_workers): change the worker count and you get a different (equally valid) stream.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from models.cached import CachedFeatures
from mumu.config.train import StageConfig
from mumu.errors import UserError
from mumu.train.augment import augment_prompt_images
from mumu.train.features import FeatureCache
from mumu.train.samples import DECODER, BadSample, Decoded, decode_sample
from mumu.train.shard_reader import read_shards
from mumu.train.shard_urls import expand_shard_urls

__all__ = ["DECODER", "Example", "LoaderStats", "expand_shard_urls", "iterate_examples", "slot_shard_draws"]

# Shard draws / samples in a row that give no valid example before the stream gives up: the shards are
# resampled forever, so an all-bad or empty dataset would otherwise loop forever.
MAX_CONSECUTIVE_FAILURES = 500
_MAX_REASONS = 100  # reasons kept in LoaderStats (counts stay exact)


@dataclass
class Example:
    key: str
    prompt: list[str | Image.Image]  # ordered text / image segments
    image: Image.Image  # target, RGB
    entity_masks: list[np.ndarray]  # bool HxW at the target's size, one per image segment of prompt, in order
    features: CachedFeatures | None = None  # outputs of frozen parts from the feature cache, aligned with prompt


@dataclass
class LoaderStats:
    samples: int = 0  # valid samples delivered in batches
    fast_forwarded: int = 0  # valid samples read only to reach start_step
    skipped_samples: int = 0  # samples dropped as undecodable / inconsistent
    shards_opened: int = 0
    text_only: int = 0  # delivered examples whose prompt is the caption alone (mumu/unimo modes)
    text_only_converted: int = 0  # ... of which converted by the text_only_share coin
    augmented_images: int = 0
    bad_shards: dict[str, str] = field(default_factory=dict)  # url -> first reason it failed to read
    skip_reasons: list[str] = field(default_factory=list)  # first _MAX_REASONS "<shard>#<key>: reason"

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            fresh = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(self, f.name, fresh)

    def merge(self, other: LoaderStats) -> None:
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), int):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for url, reason in other.bad_shards.items():
            self.bad_shards.setdefault(url, reason)
        self.skip_reasons.extend(other.skip_reasons[: _MAX_REASONS - len(self.skip_reasons)])


# ------------------------------------------------------------------------------------------ one slot


class _Guard:
    """Counts shard draws / samples in a row that gave nothing usable; raises UserError past the bound."""

    def __init__(self, limit: int, n_urls: int, stats: LoaderStats):
        self.limit, self.n_urls, self.stats, self.failures = limit, n_urls, stats, 0

    def ok(self) -> None:
        self.failures = 0

    def fail(self) -> None:
        self.failures += 1
        if self.failures >= self.limit:
            s = self.stats
            first = next(iter(s.bad_shards.values()), None) or (s.skip_reasons[0] if s.skip_reasons else "")
            raise UserError(
                f"no usable training sample in {self.limit} shard reads/samples in a row from {self.n_urls} "
                f"shard(s): {len(s.bad_shards)} unreadable shard(s), {s.skipped_samples} undecodable sample(s), "
                f"other reads empty{'; first problem: ' + first if first else ''}"
            )


def _note(stats: LoaderStats, reason: str) -> None:
    if len(stats.skip_reasons) < _MAX_REASONS:
        stats.skip_reasons.append(reason[:300])


def _decode_valid(raws, prompt_mode: str, stats: LoaderStats, guard: _Guard, cache_key: str | None = None):
    for raw in raws:
        try:
            decoded = decode_sample(raw, prompt_mode, cache_key)
        except BadSample as exn:
            stats.skipped_samples += 1
            _note(stats, f"{os.path.basename(str(raw.get('__url__')))}#{raw.get('__key__')}: {exn}")
            guard.fail()
            continue
        guard.ok()
        yield decoded


def _view(d: Decoded, stage: StageConfig, rng: np.random.Generator, stats: LoaderStats) -> Example:
    # The one text-only coin (UNIMO-G trains 10 % of steps on the plain caption). It is drawn here, per draw,
    # rather than fixed per sample by the data stage: each sample is then seen with its images on the other
    # draws, and the share is a training choice (per stage, per run) that needs no data rebuild.
    # `d.text_only` is only ever true for shards written before the share moved here.
    to_text = rng.random() < stage.text_only_share  # always drawn: keeps later draws independent of mode
    if stage.prompt_mode == "text" or d.text_only or to_text:
        if stage.prompt_mode != "text":
            stats.text_only += 1
            stats.text_only_converted += int(to_text and not d.text_only)
        return Example(d.key, [d.caption], d.image, [], _cached(d.features, "text", []))
    images = [s for s in d.segments if not isinstance(s, str)]
    prompt = [s if isinstance(s, str) else s[0] for s in d.segments]
    seen, n_aug = augment_prompt_images(prompt, stage.augment, rng)
    stats.augmented_images += n_aug
    # An augmented image is new pixels: its cached features (and the whole prompt's) no longer apply.
    refs = [ref if out is orig else None for (orig, _, ref), out in
            zip(images, [s for s in seen if not isinstance(s, str)])]
    return Example(d.key, seen, d.image, [s[1] for s in images], _cached(d.features, stage.prompt_mode, refs))


def _cached(features: dict | None, form: str, refs: list[str | None]) -> CachedFeatures | None:
    """The cached features that fit a view: posterior, each unaugmented image's grid, and the prompt's states
    when no image of it was augmented (refs: per prompt image its member, None if augmented)."""
    if features is None:
        return None
    whole = all(r is not None for r in refs)
    return CachedFeatures(
        posterior=features.get("posterior"),
        images=tuple(features.get(f"vision/{r}") if r is not None else None for r in refs),
        prompt=features.get(f"prompt/{form}") if whole else None,
        prompt_ids=features.get(f"prompt_ids/{form}") if whole else None,
    )


def _zero_worker_seed() -> int:
    return 0  # every slot draws from the same shard sequence; slots take disjoint draws of it


class _SlotStream(IterableDataset):
    """Yields (batch | None, stats delta, error | None); one copy runs in each DataLoader worker."""

    def __init__(self, urls, stage: StageConfig, seed: int, start_step: int, rank: int, world_size: int,
                 max_failures: int, features: FeatureCache | None = None):
        super().__init__()
        self.urls, self.stage, self.seed, self.start_step = urls, stage, seed, start_step
        self.rank, self.world_size, self.max_failures = rank, world_size, max_failures
        self.features = features
        self.n_workers = max(1, stage.loader_workers)

    def slot(self) -> tuple[int, int]:
        """(logical worker, batches to fast-forward) of the current process."""
        info = get_worker_info()
        j = 0 if info is None else info.id
        return (self.start_step + j) % self.n_workers, (self.start_step + j) // self.n_workers

    def __iter__(self):
        stats = LoaderStats()
        try:
            for batch in self._batches(stats):
                # A copy: a worker pickles what it yields in a background thread, after we move on.
                yield batch, copy.deepcopy(stats), None
                stats.reset()
        except UserError as exn:  # re-raised by the consumer: a worker's traceback would not be one line
            yield None, copy.deepcopy(stats), str(exn)

    def _batches(self, stats: LoaderStats):
        stage = self.stage
        worker, skip = self.slot()
        n_slots = self.world_size * self.n_workers
        guard = _Guard(self.max_failures, len(self.urls), stats)
        pipeline = wds.DataPipeline(
            lambda: slot_shard_draws(self.urls, self.seed, self.rank * self.n_workers + worker, n_slots),
            lambda draws: read_shards(draws, stage.prompt_mode, stats, guard, self.features),
            wds.shuffle(max(1, stage.shuffle_buffer), initial=max(1, stage.shuffle_buffer),
                        rng=random.Random(_seed(self.seed, "shuffle", self.rank, worker))),
            lambda raws: _decode_valid(raws, stage.prompt_mode, stats, guard,
                                       self.features.key if self.features is not None else None),
            wds.batched(stage.batch_size, collation_fn=None, partial=False),
        )
        view_seed = _seed(self.seed, "view", self.rank, worker)
        for b, decoded in enumerate(pipeline):
            if b < skip:
                stats.fast_forwarded += len(decoded)
                continue
            batch = []
            for i, d in enumerate(decoded):
                rng = np.random.default_rng([view_seed, b * stage.batch_size + i])
                batch.append(_view(d, stage, rng, stats))
            stats.samples += len(batch)
            yield batch


def _seed(seed: int, *parts) -> int:
    """A 63-bit seed from the run seed and labels (stable across processes, unlike hash() of a str)."""
    words = [seed] + [p if isinstance(p, int) else int.from_bytes(str(p).encode()[:8], "little") for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> 1)


def slot_shard_draws(urls: list[str], seed: int, slot: int, n_slots: int) -> Iterator[dict]:
    """Slot `slot`'s share (every n_slots-th draw) of the one seeded, infinite shard-resampling sequence.

    This is webdataset's split_by_node/split_by_worker applied to ResampledShards, with rank and worker
    passed explicitly: webdataset's splitters read them from the environment / torch.distributed.
    """
    draws = wds.ResampledShards(urls, seed=_seed(seed, "shards"), deterministic=True,
                                worker_seed=_zero_worker_seed)
    return itertools.islice(iter(draws), slot, None, n_slots)


# ------------------------------------------------------------------------------------------ public API


def _identity(x):
    return x


def iterate_examples(
    shard_urls: list[str],
    stage: StageConfig,
    seed: int,
    start_step: int = 0,
    *,
    rank: int = 0,
    world_size: int = 1,
    stats: LoaderStats | None = None,
    max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
    features: FeatureCache | None = None,
) -> Iterator[list[Example]]:
    """Endless batches of `stage.batch_size` examples for this rank; batch k is global step start_step + k.

    Bad shards / samples are skipped and counted in `stats`; nothing usable at all raises UserError.
    `features` (mumu/train/features.py find_cache): each example also carries its cached frozen outputs; the
    stream of examples is the same with or without it.
    """
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world_size {world_size}")
    if start_step < 0 or stage.batch_size < 1:
        raise UserError(f"start_step ({start_step}) must be >= 0 and batch_size ({stage.batch_size}) >= 1")
    urls = expand_shard_urls(shard_urls)  # checked now, not at the first next()
    dataset = _SlotStream(urls, stage, seed, start_step, rank, world_size, max_consecutive_failures, features)
    return _consume(dataset, stage.loader_workers, stats if stats is not None else LoaderStats())


def _consume(dataset: _SlotStream, workers: int, stats: LoaderStats) -> Iterator[list[Example]]:
    if workers > 0:
        # forkserver, not fork: this process may run threads (Prefect's API client and event workers, the
        # tokenizers pool) whose locks a forked child would inherit held; seen as workers dying at start-up.
        source = iter(DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
                                 prefetch_factor=2, multiprocessing_context="forkserver"))
    else:
        source = iter(dataset)
    try:
        for batch, delta, error in source:
            stats.merge(delta)
            if error is not None:
                raise UserError(error)
            yield batch
    finally:
        del source  # shuts DataLoader workers down when the consumer stops early
