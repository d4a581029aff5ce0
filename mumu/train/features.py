"""The feature cache: which frozen outputs a model can take from disk, under which key, and where they are.

    DATA/features/<key>/shard-00000.tar            sidecar of DATA/shard-00000.tar: per sample, in the data
                                                   shard's order, <sample key>.features.safetensors
    DATA/features/<key>/shard-00000.report.json    FeatureShardReport (written last: it exists <=> finished)
    DATA/features/<key>/empty_prompt.safetensors   a prompt cache's: the empty prompt's states (CFG dropout, the
                                                   sampler's unconditional half), so training needs no encoder
    DATA/features/<key>/manifest.json, spec.json, config.yaml

`key` is the hash of `cache_spec`: the parts cached and every config value their outputs depend on (VAE source,
dtype and resolution; encoder source, freeze flags, image-feature norm, resampler bypass, image tokens, prompt
length; the prompt forms). A changed model therefore looks under another key and never finds stale features;
a sidecar that carries another key than the folder it sits in is refused. The stage that writes the cache is
mumu/train/feature_stage.py; the training loader reads it (mumu/train/data.py) and the model uses it
(models/cached.py). Which parts are worth caching, in numbers: docs/feature_cache.md.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors

from data_schemas import ShardReport
from data_schemas.features import FEATURES_VERSION, FeatureShardReport
from models.cached import CachedFeatures
from mumu.config.base import BUNDLED_PREFIX, ModelSource
from mumu.config.model import ModelConfig
from mumu.config.train import TrainConfig
from mumu.errors import UserError
from mumu.train.shard_urls import expand_shard_urls

FEATURES_DIR = "features"
MEMBER = "features.safetensors"  # the one tar member per sample: <sample key>.features.safetensors
EMPTY_PROMPT = "empty_prompt.safetensors"
IMAGE_KIND = {"mumu": "crop", "unimo": "segment"}  # the prompt image a prompt form shows an entity with


def prompt_forms(train: TrainConfig) -> list[str]:
    """The prompt forms training shows (the caption "text" also when a multimodal stage draws text-only steps)."""
    forms = set()
    for stage in (train.pretrain, train.tune):
        forms.add(stage.prompt_mode)
        if stage.prompt_mode != "text" and stage.text_only_share > 0:
            forms.add("text")
    return sorted(forms)


def _source(src: ModelSource) -> dict:
    """A model source as the key sees it. Weights the package ships (`bundled:NAME`) are hashed too: a refitted
    bundled model keeps its name. Hub ids are as exact as their `revision`; a local directory is taken by its path
    (point a changed one at a new path, or delete its cache)."""
    out = src.model_dump(mode="json")
    if src.pretrained is not None and src.pretrained.startswith(BUNDLED_PREFIX):
        digest = hashlib.sha256()
        for f in sorted(Path(src.location).rglob("*")):
            if f.is_file():
                digest.update(f.relative_to(src.location).as_posix().encode() + b"\0" + f.read_bytes())
        out["weights_sha256"] = digest.hexdigest()
    return out


def cache_spec(model: ModelConfig, train: TrainConfig) -> dict | None:
    """What the cache holds for this model and training config, or None when nothing applies."""
    want, enc, dec = train.features, model.encoder, model.decoder
    parts: dict = {}
    if want.latents:  # the VAE is always frozen
        parts["latents"] = {"vae": _source(dec.vae), "resolution": dec.resolution}
    forms = prompt_forms(train)
    image_forms = [f for f in forms if f in IMAGE_KIND]
    encoder_source = _source(enc.model)
    if want.prompt and enc.freeze_vision and enc.train_language_model == "frozen":
        # The hidden states of the whole prompt: they stand for the vision features too.
        parts["prompt"] = {
            "model": encoder_source, "freeze_vision": enc.freeze_vision, "train_language_model": enc.train_language_model,
            "bypass_resampler": enc.bypass_resampler, "image_tokens": enc.image_tokens,
            "image_feature_norm": enc.image_feature_norm, "max_text_tokens": enc.max_text_tokens, "forms": forms,
        }
    elif want.vision and enc.freeze_vision and image_forms:
        parts["vision"] = {"model": encoder_source, "freeze_vision": enc.freeze_vision,
                           "images": sorted(IMAGE_KIND[f] for f in image_forms)}
    return {"version": FEATURES_VERSION, "parts": parts} if parts else None


def spec_key(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(data_dir: str | Path, key: str) -> Path:
    return Path(data_dir) / FEATURES_DIR / key


def sidecar_report_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.report.json"


def sidecar_done(folder: Path, data_report: ShardReport, key: str) -> FeatureShardReport | None:
    """The report of a finished sidecar for this data shard and key, or None (missing, torn, stale)."""
    try:
        report = FeatureShardReport.model_validate_json(sidecar_report_path(folder, data_report.shard).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None
    if report.key != key:
        raise UserError(f"{sidecar_report_path(folder, data_report.shard)} holds features of model config "
                        f"{report.key}, not {key}: refusing them (delete {folder} and run cache-features again)")
    tar = folder / report.name
    if (report.data_sha256 != data_report.sha256 or report.samples != data_report.written
            or not tar.is_file() or tar.stat().st_size != report.bytes):
        return None
    return report


@dataclass
class FeatureCache:
    """A complete cache for a set of data shards: what the training loader needs (picklable, for its workers)."""

    key: str
    sidecars: dict[str, str] = field(default_factory=dict)  # data shard url -> sidecar tar path
    empty_prompt: str | None = None  # a prompt cache's EMPTY_PROMPT file

    @property
    def has_prompts(self) -> bool:
        return self.empty_prompt is not None

    def empty_prompt_states(self):
        """A prompt cache's empty-prompt states (models/cached.py CachedFeatures)."""
        states = read_empty_prompt(Path(self.empty_prompt).parent, self.key)
        if states is None:
            raise UserError(f"{self.empty_prompt} is missing or unreadable: run `mumu cache-features` again")
        return states

    def sidecar(self, url: str) -> str | None:
        return self.sidecars.get(url)


def find_cache(data_urls: list[str], model: ModelConfig, train: TrainConfig) -> tuple[FeatureCache | None, str]:
    """(the cache to train with or None, one line saying which and why). `train.features.use` "require" turns
    every "None" into a UserError; "off" never looks."""
    use = train.features.use
    if use == "off":
        return None, "feature cache off (train.features.use): the frozen parts run every step"
    spec = cache_spec(model, train)

    def without(reason: str) -> tuple[None, str]:
        if use == "require":
            raise UserError(f"train.features.use is 'require' but {reason}")
        return None, f"{reason}: the frozen parts run every step"

    if spec is None:
        return without("this model and config have nothing to cache (train.features)")
    key = spec_key(spec)
    data_urls = expand_shard_urls(data_urls)  # the urls the loader will draw: directories and braces expanded
    if any("://" in u or u.startswith("pipe:") for u in data_urls):
        return without("the shards are not local files, so no feature cache is looked for")
    sidecars, missing = {}, []
    for url in data_urls:
        data = Path(url)
        folder = cache_dir(data.parent, key)
        try:
            data_report = ShardReport.model_validate_json((data.parent / f"{data.stem}.report.json").read_bytes())
        except (OSError, ValidationError, ValueError):
            missing.append(url)
            continue
        if sidecar_done(folder, data_report, key) is None:
            missing.append(url)
        else:
            sidecars[url] = str(folder / data.name)
    if missing:
        root = Path(missing[0]).parent
        others = sorted(p.name for p in (root / FEATURES_DIR).glob("*") if p.is_dir() and p.name != key)
        where = f"no complete feature cache for this model (key {key}) in {root / FEATURES_DIR}"
        if others:
            where += f"; the cache(s) there ({', '.join(others)}) were written for another model config, refused"
        return without(f"{where} ({len(missing)} of {len(data_urls)} shards missing; run `mumu cache-features "
                       f"--data {root}`)")
    empty = None
    if "prompt" in spec["parts"]:  # the empty prompt's states, in the cache of every data folder
        for root in sorted({Path(u).parent for u in data_urls}):
            if read_empty_prompt(cache_dir(root, key), key) is None:
                return without(f"{cache_dir(root, key) / EMPTY_PROMPT} is missing (run `mumu cache-features "
                               f"--data {root}`)")
        empty = str(cache_dir(Path(data_urls[0]).parent, key) / EMPTY_PROMPT)
    return (FeatureCache(key, sidecars, empty),
            f"feature cache {key} ({', '.join(spec['parts'])}) for {len(sidecars)} shards")


def read_empty_prompt(folder: Path, key: str):
    """The empty prompt's cached states (models/cached.py CachedFeatures), or None when missing or unreadable."""
    path = folder / EMPTY_PROMPT
    try:
        tensors = decode_features(path.read_bytes(), key, str(path))
    except (OSError, ValueError, SafetensorError):
        return None
    if set(tensors) != {"prompt", "prompt_ids"}:
        return None
    return CachedFeatures(prompt=tensors["prompt"], prompt_ids=tensors["prompt_ids"])


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (its JSON header), read without loading any tensor."""
    if len(blob) < 8:
        raise ValueError("not a safetensors blob (shorter than its header length)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError("not a safetensors blob (header longer than the blob)")
    return json.loads(blob[8:8 + n]).get("__metadata__") or {}


def decode_features(blob: bytes, key: str, where: str) -> dict:
    """A sample's cached tensors (name -> tensor), after checking that they carry the expected cache key."""
    got = safetensors_metadata(blob).get("cache_key")
    if got != key:
        raise UserError(f"{where}: features of model config {got}, not {key}: refusing them (run cache-features again)")
    return load_tensors(blob)
