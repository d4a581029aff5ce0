"""Stand-ins for the evaluation's generator and DINO/CLIP encoders whose outputs are known in advance (tests of the
runner, the report and the benchmarks)."""

import numpy as np
import torch
from PIL import Image


class PixelEncoders:
    """A transparent stand-in for DINO/CLIP: features = centred 8x8 RGB thumbnails (texts: a hash)."""

    class _Enc:
        def features(self, images, batch_size=32):
            arr = np.stack([np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), np.float32)
                            for im in images])
            return torch.from_numpy((arr.reshape(len(images), -1) - 128.0) / 128.0)

        def image_embeds(self, images, batch_size=32, normalize=True):
            f = self.features(images)
            return torch.nn.functional.normalize(f, dim=-1) if normalize else f

        def text_embeds(self, texts, batch_size=64, normalize=True):
            rows = [np.random.default_rng(sum(map(ord, t))).normal(size=192) for t in texts]
            return torch.nn.functional.normalize(torch.tensor(np.stack(rows), dtype=torch.float32), dim=-1)

    def __init__(self):
        self.dino = self.clip = self._Enc()


class CountingGenerator:
    """Returns the prompt's first image (+ seeded noise, or another subject's colour) n times."""

    def __init__(self, noise=10.0, wrong_subject=False, fail_after=None):
        self.calls, self.noise, self.wrong, self.fail_after = [], noise, wrong_subject, fail_after

    def __call__(self, prompt, n, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("generator died")
        self.calls.append((tuple(p if isinstance(p, str) else "<img>" for p in prompt), n, seed))
        ref = np.asarray(next(p for p in prompt if isinstance(p, Image.Image)), np.float64)
        if self.wrong:
            ref = ref[..., ::-1]  # swaps red and blue: a different-looking subject
        rng = np.random.default_rng(seed)
        return [Image.fromarray(np.clip(ref + rng.normal(0, self.noise, ref.shape), 0, 255).astype(np.uint8))
                for _ in range(n)]
