"""Evaluation metrics on encoder features: DINO, CLIP-I, CLIP-T and "FID".

All functions take features (numpy or torch, [N, D]) and compute in float64; the encoders live in
models/eval_encoders.py and the runner (mumu/eval/runner.py) feeds them.

- **DINO** / **CLIP-I**: cosine similarity between the features of a generated image and those of
  its subject's reference image(s) (DINO: CLS token of the last layer; CLIP-I: projected image
  embedding), averaged over reference images, then over generated images (DreamBooth, KOSMOS-G).
- **Multi-subject** (MultiBench, UNIMO-G): the similarity of a generated image is the mean over its
  subjects of its similarity to each subject's references; the benchmark score averages that.
- **CLIP-T**: cosine between the CLIP image embedding of a generated image and the CLIP text
  embedding of its prompt *as text*: each image reference replaced by its subject's name, as
  KOSMOS-G's DreamBench script scores "a backpack in the jungle" for the input "<image> in the
  jungle". Reported as the raw cosine (the papers' 0.2–0.35 range), not CLIPScore's 100·max(cos, 0).
- **"FID"**: the Fréchet distance ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½) between Gaussians fitted
  to the features of generated and real images. The standard FID uses InceptionV3 pool3 features
  (TF 2015-12-05 weights). On this project's machines that network cannot be run: pytorch-fid,
  clean-fid and torch-fidelity all import torchvision (which does not run beside torch 2.13 CPU),
  and their Inception weights are downloaded from GitHub releases at run time (no network here).
  So the features come from the evaluation encoders, chosen by `eval.fid.features`: "clip" (default)
  = CLIP ViT-B/32 image embeddings with PIL bicubic resize + centre crop, i.e. clean-fid's
  `model_name="clip_vit_b_32"` FID (Kynkäänniemi et al. 2023); "dino" = DINO CLS features
  (in the spirit of Stein et al. 2023's FD_DINOv2). Values are therefore NOT comparable with
  Inception-FID numbers in papers (UNIMO-G Table 2); compare runs with each other only.
- **Copy-paste**: similarity to the given reference minus similarity to the subject's other real images:
  mumu/eval/copying.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"expected features of shape [N, D], got {arr.shape}")
    return arr


def normalize(x) -> np.ndarray:
    x = _f64(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("cannot normalise a zero feature vector")
    return x / norms


def cosine_matrix(a, b) -> np.ndarray:
    """[N, M] cosine similarities between the rows of `a` and the rows of `b`."""
    return normalize(a) @ normalize(b).T


def paired_cosine(a, b) -> np.ndarray:
    """[N] cosine similarity of row i of `a` with row i of `b`."""
    a, b = normalize(a), normalize(b)
    if a.shape != b.shape:
        raise ValueError(f"paired features must have equal shapes, got {a.shape} and {b.shape}")
    return np.einsum("nd,nd->n", a, b)


def subject_similarity(generated, references: Sequence) -> np.ndarray:
    """[N] fidelity of each generated image to a set of subjects.

    `references` holds one [R_s, D] array per subject. Single subject: the mean cosine to its
    references. Several subjects: the mean over subjects of that (UNIMO-G's MultiBench protocol).
    """
    if not references:
        raise ValueError("at least one subject's reference features are needed")
    per_subject = [cosine_matrix(generated, ref).mean(axis=1) for ref in references]
    return np.mean(per_subject, axis=0)


def clip_t(image_embeds, text_embeds) -> np.ndarray:
    """[N] CLIP-T of each generated image against its prompt text (row i with row i)."""
    return paired_cosine(image_embeds, text_embeds)


# --- Fréchet distance ------------------------------------------------------------------------------

def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, N-1, as pytorch-fid / clean-fid) of [N, D] features."""
    x = _f64(features)
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1-mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^½), in float64.

    Tr((S1 S2)^½) is taken as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S1^½ S2 S1^½ (same spectrum as S1 S2), which stays real and finite for the singular
    covariances that few samples give, where scipy.linalg.sqrtm(S1 @ S2) needs an eps offset.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(value, 0.0)  # rounding can leave -1e-13 for identical sets


def fid_from_features(generated, real) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (see the module docstring)."""
    return frechet_distance(*feature_statistics(generated), *feature_statistics(real))


def frechet_to_reference(generated, mu_real, sigma_real) -> float:
    """`fid_from_features(generated, real)` with the real side's statistics given (fitted once, e.g. for
    bootstrap resamples of the generated side).

    With fewer generated images than feature dimensions (N - 1 < D) the generated covariance is
    S1 = Xcᵀ Xc / (N - 1) of rank <= N - 1, and S1 S2 has the nonzero spectrum of the N x N PSD matrix
    Xc S2 Xcᵀ / (N - 1): its eigenvalues give Tr((S1 S2)^½) in O(N² D) instead of O(D³)."""
    x = _f64(generated)
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {x.shape[0]}")
    mu_real, sigma_real = np.asarray(mu_real, np.float64), np.atleast_2d(np.asarray(sigma_real, np.float64))
    n, d = x.shape
    if n - 1 >= d:
        return frechet_distance(x.mean(axis=0), np.cov(x, rowvar=False), mu_real, sigma_real)
    if mu_real.shape != (d,) or sigma_real.shape != (d, d):
        raise ValueError(f"mismatched statistics: features of {d} dims, mu {mu_real.shape}, sigma {sigma_real.shape}")
    centred = x - x.mean(axis=0)
    small = centred @ sigma_real @ centred.T / (n - 1)
    eig = np.linalg.eigvalsh((small + small.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = x.mean(axis=0) - mu_real
    value = float(diff @ diff + (centred ** 2).sum() / (n - 1) + np.trace(sigma_real) - 2 * tr_covmean)
    return max(value, 0.0)
