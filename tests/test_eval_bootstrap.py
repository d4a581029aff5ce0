"""Bootstrap intervals over items, paired differences, and the resampled FID's fast form."""

import numpy as np
import pytest

from mumu.config.eval import BootstrapConfig
from mumu.eval import metrics
from mumu.eval.bootstrap import mean_interval, paired_difference, statistic_interval


def test_interval_contains_the_mean_narrows_with_items_and_matches_the_normal_width():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.6, 0.1, 20), rng.normal(0.6, 0.1, 500)
    lo_s, hi_s = mean_interval(small)
    lo_l, hi_l = mean_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    # 25x the items: about 1/5 the width (the standard error's 1/sqrt(n)); the normal 95 % width is 2 x 1.96 se
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3
    for values, (lo, hi) in ((small, (lo_s, hi_s)), (large, (lo_l, hi_l))):
        se = values.std(ddof=1) / np.sqrt(values.size)
        assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    # a wider level gives a wider interval
    lo_99, hi_99 = mean_interval(small, BootstrapConfig(level=0.99))
    assert lo_99 < lo_s and hi_99 > hi_s


def test_seeded_intervals_are_deterministic_and_the_seed_matters():
    values = np.random.default_rng(1).normal(size=30).tolist()
    assert mean_interval(values, BootstrapConfig(seed=3)) == mean_interval(values, BootstrapConfig(seed=3))
    assert mean_interval(values, BootstrapConfig(seed=3)) != mean_interval(values, BootstrapConfig(seed=4))
    assert mean_interval([0.5]) is None and mean_interval([]) is None  # nothing to resample
    assert mean_interval([0.2, None, 0.4]) == mean_interval([0.2, 0.4])  # items without the metric left out
    # constant values: no spread, a zero-width interval at the value
    assert mean_interval([0.3] * 10) == pytest.approx((0.3, 0.3))


def test_statistic_interval_of_the_mean_is_the_mean_interval():
    values = np.random.default_rng(2).normal(size=40)
    cfg = BootstrapConfig(resamples=300)
    assert statistic_interval(40, lambda rows: float(values[rows].mean()), cfg) == pytest.approx(
        mean_interval(values, cfg))
    assert statistic_interval(1, lambda rows: 0.0, cfg) is None
    assert statistic_interval(40, lambda rows: 0.0, cfg, resamples=0) is None


def test_paired_difference_over_shared_items():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0.5, 0.2, 60)  # per-prompt difficulty, shared by both runs
    a = {f"i{k}": float(d + 0.03 + rng.normal(0, 0.01)) for k, d in enumerate(difficulty)}
    b = {f"i{k}": float(d) for k, d in enumerate(difficulty)}
    b["only-in-b"] = 9.0
    d = paired_difference(a, b)
    assert d.n_items == 60 and d.difference == pytest.approx(0.03, abs=0.005)
    assert d.difference == pytest.approx(np.mean([a[k] - b[k] for k in a]))
    assert d.mean_a - d.mean_b == pytest.approx(d.difference)
    assert 0 < d.interval[0] < d.difference < d.interval[1]  # excludes 0 although difficulty varies 7x more
    # unpaired, the same runs' intervals overlap: pairing is what removes the prompts' difficulty
    lo_a, hi_a = mean_interval(list(a.values()))
    lo_b, hi_b = mean_interval([b[k] for k in a])
    assert lo_a < hi_b
    same = paired_difference(a, a)
    assert same.difference == 0 and same.interval == (0.0, 0.0)
    with pytest.raises(ValueError, match="share no item"):
        paired_difference({"x": 1.0}, {"y": 1.0})


@pytest.mark.parametrize("n", [3, 12, 40, 80])
def test_frechet_to_reference_equals_the_full_fid(n):
    rng = np.random.default_rng(n)
    gen, real = rng.normal(size=(n, 24)) @ rng.normal(size=(24, 24)), rng.normal(size=(50, 24)) + 0.4
    mu, sigma = metrics.feature_statistics(real)
    assert metrics.frechet_to_reference(gen, mu, sigma) == pytest.approx(metrics.fid_from_features(gen, real),
                                                                         rel=1e-7)
