"""One knob for the text-only share: over a training stream, the share of draws trained on the plain
caption is train.<stage>.text_only_share, not that plus a share chosen when the data was built."""

import itertools

import numpy as np
import pytest

from mumu.config import load_profile
from mumu.data import stages
from mumu.data.reader import read_shard
from mumu.data.shards import shard_urls
from mumu.train.data import LoaderStats, iterate_examples
from tests.scenes import write_scene_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """16 emoji scenes through the real data stage (oracle boxes and masks) with the tiny profile."""
    root, out = tmp_path_factory.mktemp("scenes"), tmp_path_factory.mktemp("data")
    oracle = write_scene_folder(root, range(900, 916), size=96)
    cfg = load_profile("tiny")
    manifest, _ = stages.run_local(root, out, cfg.data, None, oracle, oracle, "test")
    assert manifest.written == 16 and "text_only" not in manifest.counts
    return out, cfg


def test_the_data_stage_writes_every_sample_with_both_prompts_and_its_caption(built):
    out, _ = built
    records = [s.record for url in shard_urls(out) for s in read_shard(url)]
    assert len(records) == 16 and not any(r["text_only"] for r in records)
    for r in records:
        assert r["caption"] and any(seg["type"] == "image" for seg in r["prompt_mumu"])
        assert sum(seg["type"] == "image" for seg in r["prompt_unimo"]) == sum(e["in_prompt"] for e in r["entities"])


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_measured_text_only_share_of_a_stream_is_the_knob(built, share):
    out, cfg = built
    stage = cfg.train.tune.model_copy(update={"text_only_share": share, "batch_size": 16, "shuffle_buffer": 16,
                                               "augment": cfg.train.tune.augment.model_copy(update={"share": 0.0})})
    stats = LoaderStats()
    examples = list(itertools.chain(*itertools.islice(iterate_examples(shard_urls(out), stage, 7, stats=stats), 75)))
    n = len(examples)
    caption_only = sum(all(isinstance(s, str) for s in ex.prompt) for ex in examples)
    assert n == 1200 and stats.text_only == caption_only == stats.text_only_converted
    # Binomial(n, share): within 4 standard deviations. The old double draw (10 % at build time, then
    # the knob at training time) would give 1 - 0.9 * (1 - share): 19 % / 37 %, > 10 sigma away.
    sigma = np.sqrt(share * (1 - share) / n)
    assert abs(caption_only / n - share) < 4 * sigma, (caption_only / n, share)
