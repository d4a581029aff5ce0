"""The cache-features stage as plain functions (tasks/features.py wraps them; flows/cache_features.py runs them).

    plan_cache (cache_spec -> key) -> [cache_empty_prompt, a prompt cache's] -> per data shard: read its samples
    in order -> the frozen parts' outputs, batched (VAE posterior of the target; vision-tower grids of the prompt
    images or the frozen encoder's hidden states of each prompt form) -> sidecar tar, then its report ->
    write_cache_manifest (counts checked against the data manifest)

A sample's prompts are built by the training loader's own decoding (mumu/train/data.py), unaugmented, so the
cache holds exactly what training would compute for them. Every data sample gets a sidecar member, in the data
shard's order (one it cannot decode gets an empty one: the loader skips that sample anyway).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from safetensors.torch import save as save_tensors

from data_schemas import Manifest, ShardReport
from data_schemas.features import FeatureManifest, FeatureShardReport
from models.decoder import build_vae, vae_posterior
from models.encoder import PromptEncoder
from models.mumu_model import target_pixels
from models.vision_tower import VisionTower
from mumu.config.model import ModelConfig
from mumu.config.train import TrainConfig
from mumu.errors import UserError
from mumu.io import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic
from mumu.train.features import (EMPTY_PROMPT, MEMBER, cache_dir, cache_spec, read_empty_prompt, sidecar_done,
                                 sidecar_report_path, spec_key)
from mumu.train.samples import BadSample, decode_sample


@dataclass(frozen=True)
class CachePlan:
    data_dir: str
    key: str
    spec: dict
    shards: tuple[ShardReport, ...]  # the data shards with samples, from the data manifest

    @property
    def folder(self) -> Path:
        return cache_dir(self.data_dir, self.key)


def plan_cache(data_dir: str | Path, model: ModelConfig, train: TrainConfig) -> CachePlan | None:
    """What to cache for this config and for which data shards; None when the config caches nothing."""
    path = Path(data_dir) / "manifest.json"
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run `mumu build-data --out {data_dir}` first") from None
    except ValueError as exc:
        raise UserError(f"{path} is not a build-data manifest ({str(exc).splitlines()[0]})") from None
    spec = cache_spec(model, train)
    if spec is None:
        return None
    shards = tuple(s for s in manifest.shards if s.written > 0)
    return CachePlan(str(data_dir), spec_key(spec), spec, shards)


class FrozenParts:
    """The frozen parts a cache spec needs, built from the model config alone (no UNet, no connector)."""

    def __init__(self, model: ModelConfig, spec: dict, device: torch.device | str = "cpu"):
        parts = spec["parts"]
        self.resolution, self.device = model.decoder.resolution, torch.device(device)
        self.vae = build_vae(model.decoder).to(self.device).eval().requires_grad_(False) if "latents" in parts else None
        # eval(): the cache holds the deterministic outputs (the frozen parts' dropout rates are all 0 anyway).
        # Prompt states need the whole encoder; vision features only its vision tower, loaded alone.
        self.encoder = PromptEncoder(model.encoder).to(self.device).eval() if "prompt" in parts else None
        self.vision = None
        if "vision" in parts:
            self.vision = self.encoder.vision if self.encoder is not None else VisionTower.load(model.encoder.model)
            self.vision.module.to(self.device).eval()
        self.forms = parts["prompt"]["forms"] if "prompt" in parts else []
        self.image_kinds = parts["vision"]["images"] if "vision" in parts else []

    @torch.no_grad()
    def compute(self, samples: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Per raw data sample (a webdataset dict), its cached tensors by name."""

        forms = sorted({*self.forms, *({"crop": "mumu", "segment": "unimo"}[k] for k in self.image_kinds)} - {"text"})
        views: list[dict] = []
        for raw in samples:  # the loader's own views of the sample, one per prompt form needed
            decoded = {}
            for form in [*forms, "text"]:
                if form == "text" and decoded:
                    break  # the caption view comes from another view below, without decoding again
                try:
                    decoded[form] = decode_sample(raw, form)
                except BadSample:
                    pass
            if decoded and "text" not in decoded:  # the caption view: any view's caption and target
                any_view = next(iter(decoded.values()))
                decoded["text"] = dataclasses.replace(any_view, segments=[any_view.caption])
            views.append(decoded)
        out: list[dict[str, torch.Tensor]] = [{} for _ in samples]
        for start in range(0, len(samples), batch_size):
            chunk = range(start, min(start + batch_size, len(samples)))
            self._posteriors(views, out, chunk)
            self._vision(views, out, chunk, batch_size)
            self._prompts(views, out, chunk)
        return out

    def _posteriors(self, views, out, chunk) -> None:
        todo = [i for i in chunk if "text" in views[i]]
        if self.vae is None or not todo:
            return
        pixels = torch.stack([target_pixels(views[i]["text"].image, self.resolution)[0] for i in todo])
        for i, post in zip(todo, vae_posterior(self.vae, pixels.to(self.device))):
            out[i]["posterior"] = post

    def _vision(self, views, out, chunk, batch_size: int) -> None:
        images = []  # (sample, member, image): each distinct prompt image of the forms cached
        for i in chunk:
            seen = set()
            for kind in self.image_kinds:
                d = views[i].get({"crop": "mumu", "segment": "unimo"}[kind])
                for seg in (d.segments if d is not None else []):
                    if not isinstance(seg, str) and seg[2] not in seen:
                        seen.add(seg[2])
                        images.append((i, seg[2], seg[0]))
        for start in range(0, len(images), batch_size):
            part = images[start:start + batch_size]
            pixel_values, pixel_mask = self.vision.preprocess([im for _, _, im in part])
            grids = self.vision.grids(pixel_values.to(self.device), pixel_mask.to(self.device))
            for (i, ref, _), grid in zip(part, grids):
                out[i][f"vision/{ref}"] = grid

    @torch.no_grad()
    def empty_prompt(self) -> dict[str, torch.Tensor]:
        """The empty prompt's hidden states and token ids (what CFG dropout and the sampler's unconditional half
        encode), computed as the encoder computes every prompt."""
        tokens = self.encoder.tokenize([[]]).to(self.device)
        real = tokens.attention_mask[0].bool()
        return {"prompt": self.encoder(tokens)[0, real], "prompt_ids": tokens.input_ids[0, real]}

    def _prompts(self, views, out, chunk) -> None:
        for form in self.forms:
            todo = [i for i in chunk if form in views[i] and (form == "text" or not views[i][form].text_only)]
            if not todo:
                continue
            prompts = [[views[i][form].caption] if form == "text" else
                       [s if isinstance(s, str) else s[0] for s in views[i][form].segments] for i in todo]
            tokens = self.encoder.tokenize(prompts).to(self.device)
            hidden = self.encoder(tokens)
            for b, i in enumerate(todo):
                real = tokens.attention_mask[b].bool()
                out[i][f"prompt/{form}"] = hidden[b, real]
                out[i][f"prompt_ids/{form}"] = tokens.input_ids[b, real]


def _data_samples(path: Path):
    with open(path, "rb") as stream:
        files = wds.tariterators.tar_file_expander([dict(url=str(path), stream=stream)])
        yield from wds.tariterators.group_by_keys(files)


def _chunks(items, n: int):
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def cache_shard(plan: CachePlan, shard: ShardReport, parts: FrozenParts, batch_size: int) -> FeatureShardReport:
    """The sidecar of one data shard (skipped when finished): tar first, then its report."""
    folder = plan.folder
    done = sidecar_done(folder, shard, plan.key)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".shard-{shard.shard:05d}.*.tmp"):  # what a killed run left of this shard
        stale.unlink(missing_ok=True)
    data_path = Path(plan.data_dir) / shard.name
    if sha256_file(data_path) != shard.sha256:
        raise UserError(f"{data_path} is not the shard its report describes (sha256 differs): run build-data again")
    counts: Counter = Counter()
    n = 0
    with atomic_path(folder / shard.name) as tmp, open(tmp, "wb") as f:
        writer = wds.TarWriter(f, user="mumu", group="mumu", mode=0o444, encoder=False, mtime=0.0)
        # A batch at a time: a real shard (1,000 samples, MBs of features each) never sits in memory whole.
        for chunk in _chunks(_data_samples(data_path), batch_size):
            for raw, named in zip(chunk, parts.compute(chunk, batch_size)):
                # per part: "posterior", "vision" (images), "prompt/<form>"
                counts.update(k if k.startswith("prompt/") else k.split("/")[0] for k in named
                              if not k.startswith("prompt_ids/"))
                counts["empty"] += not named
                # One metadata entry: safetensors writes its metadata map in no fixed order, and sidecars must be
                # byte-identical across runs.
                blob = save_tensors({k: v.detach().contiguous().cpu().clone() for k, v in named.items()},
                                    metadata={"cache_key": plan.key})
                writer.write({"__key__": raw["__key__"], MEMBER: blob})
                n += 1
        writer.close()
        if n != shard.written:  # before the rename: a sidecar that does not match its data shard is never seen
            raise UserError(f"{data_path}: {n} samples, its report says {shard.written}")
    path = folder / shard.name
    report = FeatureShardReport(shard=shard.shard, name=shard.name, key=plan.key, data_sha256=shard.sha256,
                                samples=n, sha256=sha256_file(path), bytes=path.stat().st_size,
                                tensors=dict(sorted(counts.items())))
    write_json_atomic(sidecar_report_path(folder, shard.shard), report.model_dump(mode="json"))
    return report


def cache_empty_prompt(plan: CachePlan, parts: FrozenParts) -> Path | None:
    """A prompt cache's EMPTY_PROMPT file (kept when it is already there and valid); None for other caches."""
    if "prompt" not in plan.spec["parts"]:
        return None
    path = plan.folder / EMPTY_PROMPT
    if read_empty_prompt(plan.folder, plan.key) is None:
        blob = save_tensors({k: v.detach().contiguous().cpu().clone() for k, v in parts.empty_prompt().items()},
                            metadata={"cache_key": plan.key})
        write_bytes_atomic(path, blob)
    return path


def write_cache_manifest(plan: CachePlan, reports: list[FeatureShardReport]) -> FeatureManifest:
    """manifest.json of the cache, after checking that every data shard has its sidecar with all its samples."""
    by_shard = {r.shard: r for r in reports}
    for shard in plan.shards:
        r = by_shard.get(shard.shard)
        if r is None or r.samples != shard.written or r.key != plan.key:
            raise ValueError(f"feature cache {plan.key}: shard {shard.name} has "
                             f"{'no sidecar' if r is None else f'{r.samples} samples'}, the data {shard.written}")
    if set(by_shard) != {s.shard for s in plan.shards}:
        raise ValueError(f"feature cache {plan.key}: sidecars of shards the data manifest does not list")
    if "prompt" in plan.spec["parts"] and read_empty_prompt(plan.folder, plan.key) is None:
        raise ValueError(f"feature cache {plan.key}: no valid {EMPTY_PROMPT}")
    ordered = [by_shard[s.shard] for s in plan.shards]
    keep = {s.name for s in plan.shards} | {sidecar_report_path(plan.folder, s.shard).name for s in plan.shards}
    for p in plan.folder.glob("shard-*"):  # sidecars of data shards a later build-data no longer lists
        if p.name not in keep:
            p.unlink(missing_ok=True)
    manifest = FeatureManifest(key=plan.key, spec=plan.spec, samples=sum(r.samples for r in ordered),
                               bytes=sum(r.bytes for r in ordered), shards=ordered)
    write_json_atomic(plan.folder / "manifest.json", manifest.model_dump(mode="json"))
    return manifest


def run_local(data_dir: str | Path, model: ModelConfig, train: TrainConfig, device="cpu") -> FeatureManifest | None:
    """Every unfinished sidecar of `data_dir`, one after another, then the manifest (no Prefect)."""
    plan = plan_cache(data_dir, model, train)
    if plan is None:
        return None
    parts = FrozenParts(model, plan.spec, device)
    cache_empty_prompt(plan, parts)
    reports = [cache_shard(plan, s, parts, train.features.batch_size) for s in plan.shards]
    return write_cache_manifest(plan, reports)
