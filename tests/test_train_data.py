"""Training-data loader and crop augmentation, on small shards written here with webdataset.TarWriter."""

from __future__ import annotations

import io
import itertools
import pickle
import tarfile
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data_schemas.sample import EntityRecord, ImageSegment, SampleRecord, TextSegment
from mumu.config.train import AugmentConfig, StageConfig
from mumu.errors import UserError
from mumu.train.augment import augment_image, augment_prompt_images
from mumu.train.data import DECODER, LoaderStats, iterate_examples, slot_shard_draws

SIZE = 16


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def make_sample(key: str, rng: np.random.Generator, n_entities: int = 2, text_only: bool = False) -> dict:
    """A sample following data_schemas/sample.py: record, target, and per entity crop / segment / mask."""
    target = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "RGB")
    words = [f"thing{key}x{i}" for i in range(n_entities)]
    caption = "a " + " and ".join(words)
    entities, members, mumu, unimo = [], {}, [TextSegment(text="a ")], [TextSegment(text="a ")]
    pos = 2
    for i, word in enumerate(words):
        box = (i, 2 * i, i + 7 + i, 2 * i + 9)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[box[1] + 1 : box[3], box[0] : box[2]] = 255  # not the full box: mask != box
        crop = target.crop(box)
        segment = np.asarray(crop).copy()
        segment[0, :] = 255  # the row outside the mask is white, as in the data stage
        entities.append(EntityRecord(phrase=word, char_span=(pos, pos + len(word)), box=box, score=1.0,
                                     crop=f"crop_{i}.png", segment=f"segment_{i}.png", mask=f"mask_{i}.png",
                                     in_prompt=True))
        members[f"crop_{i}.png"] = _png(crop)
        members[f"segment_{i}.png"] = _png(Image.fromarray(segment, "RGB"))
        members[f"mask_{i}.png"] = _png(Image.fromarray(mask, "L"))
        mumu += [ImageSegment(ref=f"crop_{i}.png", entity=i), TextSegment(text=word + " ")]
        unimo += [ImageSegment(ref=f"segment_{i}.png", entity=i), TextSegment(text=" ")]
        pos += len(word) + 5
    if text_only:
        mumu = unimo = [TextSegment(text=caption)]
    record = SampleRecord(key=key, source=f"in/{key}.png", image="image.png", width=SIZE, height=SIZE,
                          caption=caption, caption_source="given", entities=entities, text_only=text_only,
                          prompt_mumu=mumu, prompt_unimo=unimo)
    return {"__key__": key, "json": record.model_dump_json().encode(), "image.png": _png(target), **members}


def write_shard(path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 shards x 8 samples (every 4th text-only); returns (urls, {key: sample})."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    urls, samples = [], {}
    for s in range(3):
        shard = [make_sample(f"s{s}k{i}", rng, n_entities=1 + i % 2, text_only=i % 4 == 3) for i in range(8)]
        samples.update({x["__key__"]: x for x in shard})
        urls.append(write_shard(root / f"shard-{s:05d}.tar", shard))
    return urls, samples


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _png_pixels(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def _take(urls, stage, n, seed=0, **kw):
    return list(itertools.islice(iterate_examples(urls, stage, seed, **kw), n))


def _fingerprint(batches):
    out = []
    for batch in batches:
        for ex in batch:
            prompt = [s if isinstance(s, str) else _pixels(s).tobytes() for s in ex.prompt]
            out.append((ex.key, prompt, _pixels(ex.image).tobytes(), [m.tobytes() for m in ex.entity_masks]))
    return out


def _record(sample):
    return SampleRecord.model_validate_json(sample["json"])


def test_text_mode_gives_caption_and_target(dataset):
    urls, samples = dataset
    stats = LoaderStats()
    batches = _take(urls, StageConfig(batch_size=3, shuffle_buffer=4, prompt_mode="text"), 5, stats=stats)
    assert [len(b) for b in batches] == [3] * 5
    for ex in itertools.chain(*batches):
        sample = samples[ex.key]
        assert ex.prompt == [_record(sample).caption]
        assert ex.image.mode == "RGB" and ex.image.size == (SIZE, SIZE)
        np.testing.assert_array_equal(_pixels(ex.image), _png_pixels(sample["image.png"]))
        assert ex.entity_masks == []
    assert stats.samples == 15 and stats.skipped_samples == 0 and stats.bad_shards == {}


@pytest.mark.parametrize("mode", ["mumu", "unimo"])
def test_multimodal_prompt_follows_the_record(dataset, mode):
    urls, samples = dataset
    stage = StageConfig(batch_size=4, shuffle_buffer=8, prompt_mode=mode, text_only_share=0.0)
    stats = LoaderStats()
    n_multimodal = 0
    for ex in itertools.chain(*_take(urls, stage, 6, stats=stats)):
        sample = samples[ex.key]
        record = _record(sample)
        if record.text_only:
            assert ex.prompt == [record.caption] and ex.entity_masks == []
            continue
        n_multimodal += 1
        segments = record.prompt_mumu if mode == "mumu" else record.prompt_unimo
        assert len(ex.prompt) == len(segments)
        images = [s for s in segments if isinstance(s, ImageSegment)]
        assert len(ex.entity_masks) == len(images) == len(record.entities) > 0
        for got, seg in zip(ex.prompt, segments):
            if isinstance(seg, TextSegment):
                assert got == seg.text
            else:
                assert isinstance(got, Image.Image) and got.mode == "RGB"
                np.testing.assert_array_equal(_pixels(got), _png_pixels(sample[seg.ref]))
        for mask, seg in zip(ex.entity_masks, images):
            expected = _png_pixels(sample[record.entities[seg.entity].mask], "L") > 127
            assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
            np.testing.assert_array_equal(mask, expected)
            assert 0 < mask.sum() < SIZE * SIZE
    assert n_multimodal > 0
    assert stats.text_only == 24 - n_multimodal and stats.text_only_converted == 0


def test_text_only_share_is_seeded_and_respected(dataset):
    urls, samples = dataset
    stage = StageConfig(batch_size=8, shuffle_buffer=8, prompt_mode="mumu", text_only_share=0.5)
    stats = LoaderStats()
    examples = list(itertools.chain(*_take(urls, stage, 40, seed=3, stats=stats)))
    multimodal = [ex for ex in examples if not _record(samples[ex.key]).text_only]
    converted = sum(ex.prompt == [_record(samples[ex.key]).caption] for ex in multimodal)
    assert converted == stats.text_only_converted
    # Binomial(n, 0.5): 4.5 sigma bounds.
    n = len(multimodal)
    assert abs(converted - n / 2) < 4.5 * np.sqrt(n / 4), (converted, n)
    all_text = StageConfig(batch_size=8, shuffle_buffer=8, prompt_mode="unimo", text_only_share=1.0)
    for ex in itertools.chain(*_take(urls, all_text, 3)):
        assert ex.prompt == [_record(samples[ex.key]).caption] and ex.entity_masks == []


def test_same_seed_same_batches_other_seed_other_order(dataset):
    urls, _ = dataset
    stage = StageConfig(batch_size=4, shuffle_buffer=8, prompt_mode="mumu", augment=AugmentConfig(share=0.5))
    a = _fingerprint(_take(urls, stage, 6, seed=11))
    b = _fingerprint(_take(urls, stage, 6, seed=11))
    c = _fingerprint(_take(urls, stage, 6, seed=12))
    assert a == b
    assert [x[0] for x in a] != [x[0] for x in c]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_the_uninterrupted_batches(dataset, workers):
    urls, _ = dataset
    stage = StageConfig(batch_size=3, shuffle_buffer=6, prompt_mode="mumu", text_only_share=0.3,
                        loader_workers=workers, augment=AugmentConfig(share=0.5))
    full = _take(urls, stage, 9, seed=5)
    for start in (3, 4):
        stats = LoaderStats()
        resumed = _take(urls, stage, 9 - start, seed=5, start_step=start, stats=stats)
        assert _fingerprint(resumed) == _fingerprint(full[start:])
        assert stats.fast_forwarded == start * 3 and stats.samples == (9 - start) * 3


def test_worker_streams_are_seeded(dataset):
    urls, _ = dataset
    stage = StageConfig(batch_size=2, shuffle_buffer=4, prompt_mode="text", loader_workers=2)
    a, b = _take(urls, stage, 6, seed=2), _take(urls, stage, 6, seed=2)
    assert _fingerprint(a) == _fingerprint(b)


def test_ranks_take_disjoint_draws_of_one_shard_sequence(dataset):
    urls, _ = dataset
    single = [d["url"] for d in itertools.islice(slot_shard_draws(urls, 7, 0, 1), 40)]
    slots = [[d["url"] for d in itertools.islice(slot_shard_draws(urls, 7, s, 4), 10)] for s in range(4)]
    assert [slots[i % 4][i // 4] for i in range(40)] == single
    assert set(single) == set(urls)  # resampling reaches every shard
    stage = StageConfig(batch_size=4, shuffle_buffer=4, prompt_mode="text")
    r0 = _fingerprint(_take(urls, stage, 3, rank=0, world_size=2))
    r1 = _fingerprint(_take(urls, stage, 3, rank=1, world_size=2))
    assert r0 != r1


def _cut_points(path) -> list[int]:
    """Cuts at t1's 5th member (mask_0.png, after its json): at its header (block boundary), in it, in its data."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[12]
    return [member.offset, member.offset + 100, member.offset_data + 50]


@pytest.mark.parametrize("cut", [0, 1, 2])
def test_bad_shards_and_samples_are_skipped_and_counted(tmp_path, cut):
    rng = np.random.default_rng(1)
    good = [make_sample(f"g{i}", rng) for i in range(6)]
    corrupt_image = {**make_sample("badimg", rng), "image.png": b"\x89PNG\r\n\x1a\nnot really"}
    bad_json = {**make_sample("badjson", rng), "json": b'{"key": "badjson", "caption": '}
    mixed = write_shard(tmp_path / "mixed.tar", good[:3] + [corrupt_image, bad_json] + good[3:])
    whole = write_shard(tmp_path / "whole.tar", [make_sample(f"t{i}", rng) for i in range(6)])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(open(whole, "rb").read()[: _cut_points(whole)[cut]])
    stats = LoaderStats()
    stage = StageConfig(batch_size=4, shuffle_buffer=4, prompt_mode="mumu")
    examples = list(itertools.chain(*_take([mixed, str(truncated)], stage, 12, stats=stats)))
    keys = {ex.key for ex in examples}
    # 8 members per sample: t0 is complete, t1 lost its masks (skipped), t2.. are gone.
    assert keys <= {f"g{i}" for i in range(6)} | {"t0"}
    assert {"g0", "g5", "t0"} <= keys and "badimg" not in keys and "badjson" not in keys
    assert list(stats.bad_shards) == [str(truncated)]
    reason = stats.bad_shards[str(truncated)]
    assert "truncated tar" in reason or "ReadError" in reason
    assert stats.samples == 48
    assert any("badimg: image.png" in r for r in stats.skip_reasons)
    assert any("badjson: json" in r for r in stats.skip_reasons)
    assert any("#t1: missing member mask_0.png" in r for r in stats.skip_reasons), stats.skip_reasons


def _bad_only(tmp_path):
    rng = np.random.default_rng(2)
    return write_shard(tmp_path / "bad.tar", [{**make_sample(f"b{i}", rng), "image.png": b"junk"} for i in range(3)])


@pytest.mark.parametrize("workers", [0, 2])
def test_all_bad_or_empty_data_is_one_user_error(tmp_path, workers):
    empty = write_shard(tmp_path / "empty.tar", [])
    stage = StageConfig(batch_size=2, shuffle_buffer=4, prompt_mode="text", loader_workers=workers)
    for urls in ([_bad_only(tmp_path)], [empty], [empty, _bad_only(tmp_path)]):
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            next(iterate_examples(urls, stage, 0))
        assert time.monotonic() - t0 < 20
        message = str(err.value)
        assert "\n" not in message and "no usable training sample" in message


def test_missing_shards_are_a_user_error(tmp_path):
    stage = StageConfig(batch_size=2, prompt_mode="text")
    with pytest.raises(UserError, match="training shard not found: .*nope.tar"):
        iterate_examples([str(tmp_path / "nope.tar")], stage, 0)  # raised at the call, not at first next()
    with pytest.raises(UserError, match="no training shards found"):
        next(iterate_examples([str(tmp_path)], stage, 0))  # a directory without shards
    with pytest.raises(UserError, match="no training shards found"):
        next(iterate_examples([], stage, 0))


class _Payload:
    """Unpickling this creates a directory: proof that a member was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_pickle_members_are_never_unpickled(tmp_path):
    marker = tmp_path / "was-unpickled"
    payload = pickle.dumps(_Payload(str(marker)))
    sample = {**make_sample("p0", np.random.default_rng(3)), "evil.pyd": payload, "x.pickle": payload}
    shard = write_shard(tmp_path / "pyd.tar", [sample])
    batch = next(iterate_examples([shard], StageConfig(batch_size=2, shuffle_buffer=1, prompt_mode="mumu"), 0))
    assert [ex.key for ex in batch] == ["p0", "p0"]
    # The decoder itself leaves pickle members as bytes (webdataset's default handlers would unpickle).
    decoded = DECODER.decode({"evil.pyd": payload, "x.pickle": payload, "pth": payload})
    assert decoded == {"evil.pyd": payload, "x.pickle": payload, "pth": payload}
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ augmentation


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def test_augment_is_deterministic_and_keeps_shape():
    cfg = AugmentConfig(share=1.0, random_crop=0.7, flip=True, noise_std=0.05, grayscale=0.5)
    image = _images(1)[0]
    a = augment_image(image, cfg, np.random.default_rng(4))
    b = augment_image(image, cfg, np.random.default_rng(4))
    c = augment_image(image, cfg, np.random.default_rng(5))
    assert a.size == image.size and a.mode == "RGB"
    np.testing.assert_array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))
    assert not np.array_equal(_pixels(a), _pixels(image))
    ta = augment_image(image, cfg, torch.Generator().manual_seed(9))
    tb = augment_image(image, cfg, torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(_pixels(ta), _pixels(tb))


def test_augment_parts():
    image = _images(1)[0]
    off = dict(random_crop=1.0, flip=False, noise_std=0.0, grayscale=0.0)
    same = augment_image(image, AugmentConfig(**off), np.random.default_rng(0))
    np.testing.assert_array_equal(_pixels(same), _pixels(image))
    gray = _pixels(augment_image(image, AugmentConfig(**{**off, "grayscale": 1.0}), np.random.default_rng(0)))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    flips = [_pixels(augment_image(image, AugmentConfig(**{**off, "flip": True}), np.random.default_rng(s)))
             for s in range(20)]
    assert all(np.array_equal(f, _pixels(image)) or np.array_equal(f, _pixels(image)[:, ::-1]) for f in flips)
    assert 0 < sum(np.array_equal(f, _pixels(image)) for f in flips) < 20
    noisy = _pixels(augment_image(image, AugmentConfig(**{**off, "noise_std": 0.02}), np.random.default_rng(0)))
    diff = noisy.astype(int) - _pixels(image).astype(int)
    assert noisy.dtype == np.uint8 and 2 < diff.std() < 8  # 0.02 * 255 = 5.1, minus clipping


def test_augment_share():
    images = _images(400, seed=1)
    prompt = ["text"] + images
    cfg = AugmentConfig(share=0.3)
    out, n = augment_prompt_images(prompt, cfg, np.random.default_rng(0))
    assert out[0] == "text" and len(out) == len(prompt)
    changed = sum(o is not i for o, i in zip(out[1:], images))
    assert changed == n and abs(n - 120) < 4.5 * np.sqrt(400 * 0.3 * 0.7)
    again, _ = augment_prompt_images(prompt, cfg, np.random.default_rng(0))
    assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(out[1:], again[1:]))
    unchanged, n0 = augment_prompt_images(prompt, AugmentConfig(share=0.0), np.random.default_rng(0))
    assert n0 == 0 and all(o is i for o, i in zip(unchanged, prompt))


def test_loader_applies_augmentation_to_prompt_images(dataset):
    urls, samples = dataset
    stage = StageConfig(batch_size=4, shuffle_buffer=4, prompt_mode="mumu", text_only_share=0.0,
                        augment=AugmentConfig(share=1.0, noise_std=0.05))
    stats = LoaderStats()
    n_images = 0
    for ex in itertools.chain(*_take(urls, stage, 3, stats=stats)):
        record = _record(samples[ex.key])
        for got, seg in zip(ex.prompt, record.prompt_mumu):
            if isinstance(seg, ImageSegment):
                n_images += 1
                crop = _png_pixels(samples[ex.key][seg.ref])
                assert got.size == crop.shape[1::-1] and not np.array_equal(_pixels(got), crop)
    assert n_images > 0 and stats.augmented_images == n_images


def test_loader_and_augment_config_ranges_are_checked():
    for bad in (dict(share=1.5), dict(random_crop=0.0), dict(noise_std=-0.1), dict(grayscale=2.0)):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)
    for bad in (dict(shuffle_buffer=0), dict(loader_workers=-1), dict(text_only_share=1.1)):
        with pytest.raises(ValueError):
            StageConfig(**bad)
