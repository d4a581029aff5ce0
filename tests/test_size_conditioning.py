"""SDXL micro-conditioning at sampling time follows what training saw (mumu/size_conditioning.py):
the configured original size, else the size recorded by training, else the target size."""

import json

import numpy as np
import PIL.Image
import pytest

from mumu.config import load_profile
from mumu.errors import UserError
from mumu.generate import MumuSampler, load_model
from mumu.size_conditioning import SIZES_FILE, SizeTally, read_original_size, sampling_original_size, write_sizes
from mumu.train.data import Example
from mumu.train.loop import train

OVERRIDES = {"train.pretrain.sample_every": 0, "train.pretrain.checkpoint_every": 1}
PROFILE = load_profile("tiny", OVERRIDES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from models.mumu_model import MumuModel

    path = tmp_path_factory.mktemp("model")
    MumuModel.from_config(PROFILE.model).save_pretrained(path)
    return path


def _time_ids_used(sampler: MumuSampler, **kwargs) -> list[float]:
    seen = []
    real = sampler.model.predict

    def spy(latents, t, cond, time_ids):
        seen.append(time_ids[0].tolist())
        return real(latents, t, cond, time_ids)

    sampler.model.predict = spy
    try:
        sampler.generate(["a cat"], steps=1, **kwargs)
    finally:
        del sampler.model.predict
    assert all(ids == seen[0] for ids in seen)
    return seen[0]


def test_tally_keeps_the_most_common_size_and_round_trips():
    tally = SizeTally()
    assert tally.most_common() is None
    tally.add([(256, 256), (300, 200), (256, 256), (300, 200), (256, 256)])
    assert tally.most_common() == (256, 256)
    again = SizeTally(json.loads(json.dumps(tally.to_json())))
    again.add([(300, 200)] * 2)
    assert again.most_common() == (300, 200) and again.to_json() == {"256x256": 3, "300x200": 4}
    assert SizeTally({"10x10": 2, "20x20": 2}).most_common() == (20, 20)  # a tie goes to the larger area


def test_precedence_configured_then_trained_then_target():
    assert sampling_original_size(128, (256, 300), (64, 64)) == (128, 128)
    assert sampling_original_size(None, (256, 300), (64, 64)) == (256, 300)
    assert sampling_original_size(None, None, (64, 48)) == (64, 48)


def test_sampler_conditions_on_the_recorded_training_size(saved, tmp_path):
    sampler = MumuSampler.from_checkpoint(saved, PROFILE.eval.sampler)
    assert sampler.model.trained_original_size is None  # saved without a record: SDXL's target convention
    assert _time_ids_used(sampler) == [64, 64, 0, 0, 64, 64]
    assert _time_ids_used(sampler, height=32, width=48) == [32, 48, 0, 0, 32, 48]

    tally = SizeTally()
    tally.add([(256, 256)] * 3)
    write_sizes(saved, tally)
    try:
        sampler = MumuSampler.from_checkpoint(saved, PROFILE.eval.sampler)
        assert sampler.model.trained_original_size == (256, 256)
        assert _time_ids_used(sampler) == [256, 256, 0, 0, 64, 64]
        configured = MumuSampler(sampler.model, PROFILE.eval.sampler.model_copy(update={"original_size": 128}))
        assert _time_ids_used(configured) == [128, 128, 0, 0, 64, 64]
    finally:
        (saved / SIZES_FILE).unlink()


def test_a_broken_size_record_is_a_user_error(tmp_path):
    (tmp_path / SIZES_FILE).write_text('{"original_size": "big"}')
    with pytest.raises(UserError, match="not a training size record"):
        read_original_size(tmp_path)
    (tmp_path / SIZES_FILE).write_text('{"original_size": [0, 5]}')
    with pytest.raises(UserError, match="is not a size"):
        read_original_size(tmp_path)


def _examples(h: int, w: int) -> list[Example]:
    image = PIL.Image.fromarray(np.full((h, w, 3), 90, np.uint8))
    return [Example(f"k{i}", [f"a thing {i}"], image, []) for i in range(2)]


def test_training_records_the_original_sizes_it_saw_across_a_resume(tmp_path):
    def stream(urls, stage, seed, start_step=0):  # batch i: 256 px squares, every third batch 96x128
        i = start_step
        while True:
            yield _examples(96, 128) if i % 3 == 2 else _examples(256, 256)
            i += 1

    train("pretrain", load_profile("tiny", {**OVERRIDES, "train.pretrain.max_steps": 2}), [], tmp_path, iterate=stream)
    first = json.loads((tmp_path / "model" / SIZES_FILE).read_text())
    assert first == {"original_size": [256, 256], "counts": {"256x256": 4}}
    # max_steps raised: resumes from step 2
    train("pretrain", load_profile("tiny", {**OVERRIDES, "train.pretrain.max_steps": 4}), [], tmp_path, iterate=stream)
    record = json.loads((tmp_path / "model" / SIZES_FILE).read_text())
    assert record == {"original_size": [256, 256], "counts": {"256x256": 6, "96x128": 2}}
    model = load_model(tmp_path / "model")
    assert model.trained_original_size == (256, 256)
    assert _time_ids_used(MumuSampler(model, PROFILE.eval.sampler)) == [256, 256, 0, 0, 64, 64]
