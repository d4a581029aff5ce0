"""Bootstrap intervals over a benchmark's prompts: how far a score would move on another draw of prompts.

A benchmark score is a mean over a few hundred prompts (DreamBench 750, the toy 8-16), and two runs a few
hundredths apart may differ by the luck of the prompts alone. The percentile bootstrap resamples *items*
(prompts, each with all of its images, since images of one prompt are not independent) with replacement,
`resamples` times under a fixed seed, and takes the central `level` share of the resampled means. The same
seed gives the same interval, so a report is reproducible to the digit.

- `mean_interval`: the interval of a mean of per-item values (DINO, CLIP-I, CLIP-T, subject ID, copy-paste).
- `statistic_interval`: the same for any statistic of a resampled set of items (FID, refitted each time).
- `paired_difference`: the mean per-item difference of two runs over the items both scored, with its
  interval (the items resampled jointly, so prompt difficulty cancels out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mumu.config.eval import BootstrapConfig


def _resample_indices(n_items: int, cfg: BootstrapConfig, resamples: int | None = None) -> np.ndarray:
    """[resamples, n_items] item indices drawn with replacement under the config's seed."""
    rng = np.random.default_rng(cfg.seed)
    return rng.integers(0, n_items, size=(resamples or cfg.resamples, n_items))


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_interval(per_item: Sequence[float], cfg: BootstrapConfig | None = None) -> tuple[float, float] | None:
    """(low, high) bootstrap interval of the mean of per-item values; None for fewer than 2 items (no spread
    to resample)."""
    cfg = cfg or BootstrapConfig()
    values = np.asarray([v for v in per_item if v is not None], np.float64)
    if values.size < 2:
        return None
    means = values[_resample_indices(values.size, cfg)].mean(axis=1)
    return _percentiles(means, cfg.level)


def statistic_interval(n_items: int, statistic: Callable[[np.ndarray], float], cfg: BootstrapConfig | None = None,
                       resamples: int | None = None) -> tuple[float, float] | None:
    """(low, high) interval of `statistic(item indices)` over item resamples (e.g. FID of the resampled items'
    images); None for fewer than 2 items or 0 resamples."""
    cfg = cfg or BootstrapConfig()
    if n_items < 2 or resamples == 0:
        return None
    values = np.array([statistic(rows) for rows in _resample_indices(n_items, cfg, resamples)], np.float64)
    return _percentiles(values, cfg.level)


@dataclass(frozen=True)
class PairedDifference:
    n_items: int  # items both runs scored
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b over the shared items
    interval: tuple[float, float] | None


def paired_difference(a: dict[str, float], b: dict[str, float], cfg: BootstrapConfig | None = None) -> PairedDifference:
    """A - B over the items (keys) both dicts hold, per item value of A minus that of B, with its interval."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("the two runs share no item")
    va = np.array([a[k] for k in shared], np.float64)
    vb = np.array([b[k] for k in shared], np.float64)
    return PairedDifference(len(shared), float(va.mean()), float(vb.mean()), float((va - vb).mean()),
                            mean_interval((va - vb).tolist(), cfg))
