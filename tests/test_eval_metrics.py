"""Metric math against closed forms and an independent reference (scipy's sqrtm formula)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from mumu.eval import metrics


def scipy_reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch-fid's formula, written out here: sqrtm of the covariance product, real part."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_cosine_on_known_vectors():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = np.array([[0.0, 2.0], [5.0, 0.0], [-1.0, 0.0]])
    expected = np.array([[0.0, 1.0, -1.0], [1 / np.sqrt(2), 1 / np.sqrt(2), -1 / np.sqrt(2)], [0.8, 0.6, -0.6]])
    np.testing.assert_allclose(metrics.cosine_matrix(a, b), expected, atol=1e-12)
    np.testing.assert_allclose(metrics.paired_cosine(a, b), [0.0, 1 / np.sqrt(2), -0.6], atol=1e-12)
    # torch input, float32, scale invariance
    np.testing.assert_allclose(metrics.paired_cosine(torch.tensor(a * 7, dtype=torch.float32), b),
                               [0.0, 1 / np.sqrt(2), -0.6], atol=1e-6)
    with pytest.raises(ValueError, match="zero feature"):
        metrics.cosine_matrix(np.zeros((1, 2)), a)
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.paired_cosine(a, b[:2])


def test_subject_similarity_single_and_multi_subject():
    gen = np.array([[1.0, 0.0], [0.0, 1.0]])
    subject_a = np.array([[1.0, 0.0], [0.0, 1.0]])  # cos to gen0: 1, 0 -> 0.5; to gen1: 0, 1 -> 0.5
    subject_b = np.array([[-1.0, 0.0]])  # gen0: -1; gen1: 0
    np.testing.assert_allclose(metrics.subject_similarity(gen, [subject_a]), [0.5, 0.5])
    np.testing.assert_allclose(metrics.subject_similarity(gen, [subject_b]), [-1.0, 0.0])
    # UNIMO-G multi-subject: the mean over subjects of each subject's similarity
    np.testing.assert_allclose(metrics.subject_similarity(gen, [subject_a, subject_b]), [-0.25, 0.25])
    np.testing.assert_allclose(metrics.clip_t(gen, np.array([[2.0, 0.0], [1.0, 1.0]])), [1.0, 1 / np.sqrt(2)])


def test_frechet_identical_sets_is_zero_and_shift_is_squared_norm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    assert metrics.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.5, 0, 0, 0, 3.0, 0])
    # same covariance, means differ by `shift`: FID = ||shift||^2 exactly
    assert metrics.fid_from_features(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()  # 5 + 1 + 1 + 4
    assert metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    assert expected == 11.0


def test_frechet_matches_scipy_sqrtm_reference_on_the_same_features():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(16, 16))
    x = rng.normal(size=(300, 16)) @ mix
    y = rng.normal(size=(250, 16)) @ (mix + 0.3 * rng.normal(size=(16, 16))) + 0.5
    ours = metrics.fid_from_features(x, y)
    assert ours == pytest.approx(scipy_reference_fid(x, y), rel=1e-8)
    assert ours > 1.0
    # float32 torch features give the same number (computed in float64 internally)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    assert metrics.fid_from_features(xt, yt) == pytest.approx(
        scipy_reference_fid(xt.double().numpy(), yt.double().numpy()), rel=1e-6)


def test_frechet_with_fewer_samples_than_dimensions_stays_finite():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 32)), rng.normal(size=(6, 32)) + 1.0
    value = metrics.fid_from_features(x, y)
    assert np.isfinite(value) and value > 0
    # exact value from the same Gaussians via the PSD eigen identity, computed another way:
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)  # same spectrum as S1^1/2 S2 S1^1/2, real and >= 0 up to rounding
    tr = np.sqrt(np.clip(eig.real, 0, None)).sum()
    d = x.mean(0) - y.mean(0)
    assert value == pytest.approx(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr, rel=1e-6)


def test_statistics_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.feature_statistics(np.ones((1, 4)))
    with pytest.raises(ValueError, match="mismatched"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    mu, sigma = metrics.feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]))
    np.testing.assert_allclose(mu, [2.0, 4.0])
    np.testing.assert_allclose(sigma, np.cov(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]), rowvar=False))
