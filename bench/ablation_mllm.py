"""The toy ablation's stand-in for a pretrained MLLM: image tokens that read as colour words.

UNIMO-G's "w/o Tuning" model reads image prompts through an MLLM pretrained on image-text data: to its language
model, the tokens of a picture of a red parrot mean something close to the words "red parrot". The toy's Idefics2
has random weights, so a model never tuned on image prompts gets nothing from a picture, whatever the recipe.

This stage gives the toy the cheapest form of that pretraining, LLaVA's first stage (align the vision features
with the frozen language model): the vision tower, the modality projection and the image-feature norm are trained
so that each image token, one quadrant of the picture (models/encoder.py pools the patch grid to 2 x 2), lands on
the language model's input embedding of the word naming the dominant colour of that quadrant
(`mumu.data.scenes.COLOUR_NAMES`). The target is a word embedding rather than a caption because a random language
model cannot caption. Only the training subjects' pictures are used, each hue-rotated at random, so what is learnt
is colour, not identity; the held-out subjects' word accuracy says whether it generalises.

The result is saved with `save_pretrained` and loaded by every arm through the real loading path
(`model.encoder.model.pretrained`); every arm's later stages keep the vision tower frozen, as the profile does.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mumu.data.scenes import COLOUR_NAMES, _emoji_path, colour_words, rotate_hue
from mumu.io import write_text_atomic

GRID = 2  # image tokens per side (the ablation profile's image_tokens = 4)


def quadrant_words(image: Image.Image, grid: int = GRID, min_share: float = 0.05) -> list[str]:
    """Row-major, per cell of a grid x grid split of an RGBA picture: the colour name most of the cell's opaque
    pixels are nearest to. A cell with under `min_share` opaque pixels takes the whole picture's colour (it is
    background, on white: the word would otherwise be "white" for every small subject)."""
    image = image.convert("RGBA")
    opaque = np.asarray(image.getchannel("A")) > 127
    overall = colour_words(image, max_words=1)[0]
    h, w = opaque.shape
    out = []
    for r in range(grid):
        for c in range(grid):
            box = (c * w // grid, r * h // grid, (c + 1) * w // grid, (r + 1) * h // grid)
            cell_opaque = opaque[box[1]:box[3], box[0]:box[2]].mean()
            out.append(overall if cell_opaque < min_share else colour_words(image.crop(box), max_words=1)[0])
    return out


def prompt_picture(emoji: Image.Image, rng: random.Random, recolour: float) -> Image.Image:
    """An emoji as a prompt shows it: cut to its opaque box with a random margin, maybe hue-rotated (RGBA)."""
    em = emoji.convert("RGBA")
    if rng.random() < recolour:
        em = rotate_hue(em, rng.randint(1, 255))
    em = em.crop(em.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox())
    side = max(em.size)
    pad = [int(side * rng.uniform(0.0, 0.12)) for _ in range(4)]
    canvas = Image.new("RGBA", (em.width + pad[0] + pad[2], em.height + pad[1] + pad[3]), (0, 0, 0, 0))
    canvas.paste(em, (pad[0], pad[1]))
    return canvas


def on_white(image: Image.Image) -> Image.Image:
    """How the sampler and the data stage show a transparent picture to the encoder."""
    return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")


def examples(emoji_dir: Path, files: list[str], n: int, seed: int, recolour: float) -> tuple[list[Image.Image], list[list[str]]]:
    rng = random.Random(seed)
    sources = {f: Image.open(_emoji_path(emoji_dir, f)).convert("RGBA") for f in files}
    pictures = [prompt_picture(sources[files[i % len(files)]], rng, recolour) for i in range(n)]
    return [on_white(p) for p in pictures], [quadrant_words(p) for p in pictures]


def build_encoder(encoder_cfg):
    """The profile's encoder without LoRA: the plain Idefics2 whose vision side this stage trains."""
    from mumu.config.model import LoraConfig
    from models.encoder import PromptEncoder

    cfg = encoder_cfg.model_copy(update={"train_language_model": "frozen", "lora": LoraConfig(enabled=False),
                                         "freeze_vision": False})
    enc = PromptEncoder(cfg)
    enc.model.requires_grad_(False)
    enc.model.vision_model.requires_grad_(True)
    enc.model.connector.requires_grad_(True)  # the modality projection and the norm image features go through
    return enc


def word_accuracy(enc, pixels: torch.Tensor, masks: torch.Tensor, word_ids: torch.Tensor, table: torch.Tensor) -> float:
    """Share of image tokens whose nearest colour-word embedding is their target word's."""
    with torch.no_grad():
        feats = torch.cat([enc.image_features(pixels[i:i + 256], masks[i:i + 256]) for i in range(0, len(pixels), 256)])
    nearest = torch.cdist(feats.flatten(0, 1), table).argmin(-1).view_as(word_ids)
    colour_ids = torch.tensor(colour_word_ids(enc))
    return float((colour_ids[nearest] == word_ids).float().mean())


def colour_word_ids(enc) -> list[int]:
    tok = enc.processor.tokenizer
    ids = tok.convert_tokens_to_ids(list(COLOUR_NAMES))
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
        raise ValueError("a colour name is not a token of the encoder's tokenizer")
    return ids


def pretrain_mllm(encoder_cfg, emoji_dir: Path, train_files: list[str], heldout_files: list[str], out: Path,
                  steps: int, batch: int = 32, lr: float = 1e-2, seed: int = 0, pool: int = 2048) -> dict:
    """Train the image side of the profile's Idefics2 as described above; save it to out/model (skipped when
    out/summary.json exists). Returns the summary: losses, word accuracy on training and held-out subjects."""
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    enc = build_encoder(encoder_cfg)
    ids = colour_word_ids(enc)
    index = {w: i for w, i in zip(COLOUR_NAMES, ids)}
    embeddings = enc.model.get_input_embeddings().weight.detach()
    table = embeddings[ids]

    def tensors(images, words):
        pixels, masks = enc.preprocess_images(images)
        return pixels, masks, torch.tensor([[index[w] for w in ws] for ws in words])

    train_px, train_mask, train_ids = tensors(*examples(emoji_dir, train_files, pool, seed, recolour=0.75))
    held_px, held_mask, held_ids = tensors(*examples(emoji_dir, heldout_files, 256, seed + 1, recolour=0.5))
    scale = float(embeddings.pow(2).mean())
    with torch.no_grad():  # start the image tokens at the word embeddings' scale (they enter ~25x larger)
        feats = enc.image_features(train_px[:batch], train_mask[:batch])
        enc.model.connector.perceiver_resampler.norm.weight.mul_((scale / feats.pow(2).mean()) ** 0.5)
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    enc.train()
    for _ in range(steps):
        pick = torch.randint(len(train_px), (batch,), generator=gen)
        feats = enc.image_features(train_px[pick], train_mask[pick])
        loss = F.mse_loss(feats, embeddings[train_ids[pick]]) / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    enc.eval()
    summary = {
        "steps": steps, "batch": batch, "lr": lr, "seed": seed, "pool": pool,
        "loss_first": round(float(np.mean(losses[:10])), 4), "loss_last": round(float(np.mean(losses[-10:])), 4),
        "word_accuracy_train": round(word_accuracy(enc, train_px, train_mask, train_ids, table), 3),
        "word_accuracy_heldout": round(word_accuracy(enc, held_px, held_mask, held_ids, table), 3),
        "word_chance": round(1 / len(ids), 3), "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    enc.model.save_pretrained(tmp)
    enc.processor.save_pretrained(tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    write_text_atomic(summary_path, json.dumps(summary, indent=1, sort_keys=True) + "\n")  # the "done" marker
    return summary
