"""Where the training shards are: the urls a loader draws from, expanded and checked before the first step.

Its own module because both the loader (mumu.train.data) and the feature-cache lookup (mumu.train.features,
which the loader reads) need the same list of urls.
"""

from __future__ import annotations

import glob
import os

import webdataset as wds

from mumu.errors import UserError


def expand_shard_urls(shard_urls: list[str]) -> list[str]:
    """Brace-expand urls, list *.tar in directories, and check that local shards exist (UserError if not)."""
    urls: list[str] = []
    for url in shard_urls:
        for u in wds.shardlists.expand_urls(str(url)):
            if os.path.isdir(u):
                urls.extend(sorted(glob.glob(os.path.join(u, "*.tar"))))
            else:
                urls.append(u)
    if not urls:
        raise UserError(f"no training shards found at {', '.join(map(str, shard_urls)) or '(no paths given)'}")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"training shard not found: {missing[0]}{more}")
    return urls
