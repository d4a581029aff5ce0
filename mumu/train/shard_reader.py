"""Reading the drawn shards of one loader slot: raw samples (tar members grouped by key), each with its sidecar
member when the feature cache is read, and a check that a shard was not cut short."""

from __future__ import annotations

import os

import webdataset as wds

from mumu.errors import UserError
from mumu.train.features import MEMBER as FEATURES_MEMBER
from mumu.train.features import FeatureCache
from mumu.train.samples import member_selector


class EndCheck:
    """Wraps a shard's byte stream to tell whether the tar reached its end-of-archive marker.

    Python's streaming tarfile (which webdataset uses) ends *silently* when a shard is cut inside a
    header or at a block boundary - about a quarter of the cut points - so a truncated shard would look
    complete. A whole tar ends with zero blocks: the shard is complete if tarfile stopped before the
    physical end (it only stops early on a zero block) or the last whole 512-byte block read is zeros.
    (A shard cut right after a 512-byte run of zeros inside a member would pass; PNG/JPEG/JSON have none.)
    """

    def __init__(self, raw):
        self.raw, self.total, self.eof, self.tail = raw, 0, False, b""

    def read(self, n=-1):
        data = self.raw.read(n)
        if not data or n is None or n < 0 or len(data) < n:
            self.eof = True
        self.total += len(data)
        self.tail = (self.tail + data)[-1536:]
        return data

    def complete(self) -> bool:
        if not self.eof:
            return True
        block_end = self.total // 512 * 512 - (self.total - len(self.tail))  # in tail coordinates
        return block_end >= 512 and self.tail[block_end - 512 : block_end] == bytes(512)

    def close(self) -> None:
        self.raw.close()


def in_step(samples, url: str, sidecar: str):
    """Each raw sample of a data shard with its sidecar's member: both tars hold the same keys in the same order."""
    stream = wds.gopen(sidecar)
    try:
        side = wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([dict(url=sidecar, stream=stream)]))
        for raw in samples:
            feat = next(side, None)
            if feat is None or feat["__key__"] != raw["__key__"]:
                raise UserError(f"{sidecar} does not list the samples of {os.path.basename(url)} in its order (at "
                                f"{raw['__key__']}): the feature cache is stale; run cache-features again")
            raw[FEATURES_MEMBER] = feat.get(FEATURES_MEMBER)
            yield raw
    finally:
        stream.close()


def read_shards(draws, prompt_mode: str, stats, guard, features: FeatureCache | None = None):
    """Raw samples of each drawn shard; a read error ends that shard (its earlier, complete samples stay)."""
    select = member_selector(prompt_mode)
    for draw in draws:
        url, failed = draw["url"], []

        def bad_shard(exn: Exception, url=url, failed=failed) -> bool:
            failed.append(1)
            message = str(exn.args[0]) if exn.args else ""
            stats.bad_shards.setdefault(url, f"{type(exn).__name__}: {message}"[:300])
            return True  # keep streaming: skip the rest of this shard

        stats.shards_opened += 1
        n = 0
        try:
            stream = EndCheck(wds.gopen(url))
        except Exception as exn:  # unreadable path or url: same as a shard that fails later
            bad_shard(exn)
            guard.fail()
            continue
        try:
            files = wds.tariterators.tar_file_expander([dict(url=url, stream=stream)], handler=bad_shard,
                                                       select_files=select)
            samples = wds.tariterators.group_by_keys(files, handler=bad_shard)
            sidecar = features.sidecar(url) if features is not None else None
            for raw in in_step(samples, url, sidecar) if sidecar else samples:
                n += 1
                yield raw
        finally:
            stream.close()
        if not failed and not stream.complete():
            bad_shard(EOFError(f"truncated tar: no end-of-archive marker after {stream.total} bytes"))
        if n == 0:
            guard.fail()
