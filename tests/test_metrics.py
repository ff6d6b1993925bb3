"""Tests of training/metrics.py: Frechet distance maths, batch-independent statistics, per-rank batches."""

import numpy as np
import PIL.Image
import pytest
import scipy.stats
import torch

import dnnlib
from training import detectors, metrics
from test_detectors import make_standin_pickle

#----------------------------------------------------------------------------

def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    q = scipy.stats.ortho_group.rvs(5, random_state=1)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    sigma1, sigma2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T # commuting: sqrt(S1 S2) = Q sqrt(ab) Q^T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-9)
    # Non-commuting case: trace term of 1-D and 2-D Gaussians, tr(sqrt(S1 S2)) via eigenvalues.
    s1 = np.array([[2.0, 0.3], [0.3, 1.0]])
    s2 = np.array([[1.0, -0.2], [-0.2, 0.5]])
    root_tr = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    assert metrics.frechet_distance(np.zeros(2), s1, np.ones(2), s2) == pytest.approx(2 + np.trace(s1 + s2) - 2 * root_tr, rel=1e-9)


def test_feature_stats_independent_of_batching():
    feats = torch.randn([23, 6], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    results = []
    for batch in (23, 5, 1):
        stats = metrics.FeatureStats(6)
        for chunk in feats.split(batch):
            stats.add(chunk.to(torch.float32))
        results.append(stats.mean_cov())
    ref = feats.to(torch.float32).double().numpy()
    for mu, sigma in results:
        np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-10, atol=1e-10)
    with pytest.raises(dnnlib.util.UserError):
        metrics.FeatureStats(6).add(torch.zeros([2, 5]))

#----------------------------------------------------------------------------

def test_calc_matches_library_stats(image_dirs, tmp_path):
    det = detectors.load_detector('inception', path=str(make_standin_pickle(tmp_path)))
    mu, sigma = metrics.calculate_stats(str(image_dirs['a']), det, max_batch_size=4)
    images = torch.stack([torch.from_numpy(np.array(PIL.Image.open(image_dirs['a'] / f'{i:06d}.png'))).permute(2, 0, 1) for i in range(12)])
    feats = det(images).double().numpy()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-9)


def test_rank_without_images_reads_no_empty_batch(image_dirs, tmp_path, monkeypatch):
    # 2 images over 3 ranks: rank 2's only batch is empty. It must yield no batch (an empty one cannot be
    # collated); its zero count would be summed with the other ranks' in a real run.
    det = detectors.load_detector('inception', path=str(make_standin_pickle(tmp_path)))
    monkeypatch.setattr(metrics.dist, 'get_world_size', lambda: 3)
    monkeypatch.setattr(metrics.dist, 'get_rank', lambda: 2)
    seen = []
    monkeypatch.setattr(metrics.FeatureStats, 'add', lambda self, f: seen.append(f.shape[0]))
    with pytest.raises(dnnlib.util.UserError, match='Found 0 images'):
        metrics.calculate_stats(str(image_dirs['a']), det, num_expected=2)
    assert not seen
