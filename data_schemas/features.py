"""Pydantic models of the feature cache's reports and manifest (the sidecar shards of `mumu cache-features`)."""

from __future__ import annotations

from typing import Any

from data_schemas.sample import _Record

FEATURES_VERSION = 1


class FeatureShardReport(_Record):
    """One sidecar shard; written after its tar, so "report exists" means "sidecar finished"."""

    shard: int
    name: str  # e.g. "shard-00000.tar", the data shard's name
    key: str  # the cache key (hash of `spec` in the manifest): features of one model config only
    data_sha256: str  # the data shard's sha256 it was computed from: a rebuilt data shard makes it stale
    samples: int  # == the data shard's `written`
    sha256: str
    bytes: int
    tensors: dict[str, int]  # per part ("posterior", "vision", "prompt/<mode>"): tensors written


class FeatureManifest(_Record):
    version: int = FEATURES_VERSION
    key: str
    spec: dict[str, Any]  # what is cached and from which model config (the key is its hash)
    samples: int
    bytes: int
    shards: list[FeatureShardReport]
