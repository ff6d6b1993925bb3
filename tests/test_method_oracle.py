"""Tests for ambient/method/oracle.py: closed-form denoisers, Lemma 4.1 (sampling lands on S_tn), memorization by EDM's optimum."""

import math

import pytest
import torch

from ambient.method.dataset import fixed_noise
from ambient.method.loss import AmbientEDMLoss
from ambient.method.oracle import AmbientOracle, EDMOracle, ShiftedTime, noisy_copy, posterior_mean
from training.sampler import edm_sampler

SIGMA_TN = 1.0


@pytest.fixture(scope='module')
def data():
    """Four 3x8x8 training images, their fixed noisy copies, and 16 sampling latents."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand([4, 3, 8, 8], generator=gen, dtype=torch.float64) * 2 - 1
    x_tn = noisy_copy(x0, SIGMA_TN, noise_seed=0, raw_indices=range(4))
    latents = torch.randn([16, 3, 8, 8], generator=gen, dtype=torch.float64)
    return x0, x_tn, latents


def nearest(x, points):
    """(distance, index) of each row's nearest point."""
    dist = torch.cdist(x.flatten(1), points.flatten(1))
    return dist.min(dim=1)


def test_noisy_copy_uses_the_training_noise(data):
    x0, x_tn, _ = data
    eps = torch.from_numpy(fixed_noise(0, 2, [3, 8, 8])).double()
    torch.testing.assert_close(x_tn[2], x0[2] + SIGMA_TN * eps)


def test_edm_oracle_limits_and_stability(data):
    x0, _, _ = data
    oracle = EDMOracle(x0)
    probe = x0[1:2] + 1e-3 * torch.randn_like(x0[1:2])
    torch.testing.assert_close(oracle(probe, 1e-3), x0[1:2])          # tiny sigma: the nearest image, no NaN
    torch.testing.assert_close(oracle(probe, 1e4), x0.mean(0, keepdim=True), atol=1e-4, rtol=0) # huge: the mean
    out = oracle(probe.float(), torch.tensor([0.5]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_posterior_mean_matches_direct_bayes():
    gen = torch.Generator().manual_seed(1)
    points = torch.randn([5, 6], generator=gen, dtype=torch.float64)
    x = torch.randn([3, 6], generator=gen, dtype=torch.float64)
    var = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    lik = torch.stack([torch.distributions.Normal(points, var[i].sqrt()).log_prob(x[i]).sum(1) for i in range(3)])
    expected = torch.softmax(lik, dim=1) @ points
    torch.testing.assert_close(posterior_mean(x, points, var), expected)


def test_ambient_oracle_is_clean_below_sigma_tn_and_nan_at_it(data):
    x0, x_tn, latents = data
    ambient, edm = AmbientOracle(x0, x_tn, SIGMA_TN), EDMOracle(x0)
    x = latents[:4] * 0.6
    torch.testing.assert_close(ambient(x, 0.6), edm(x, 0.6))
    assert torch.isnan(ambient(x, SIGMA_TN)).all()
    sigma = torch.tensor([0.5, 2.0, 0.5, 3.0], dtype=torch.float64)
    mixed = ambient(x, sigma)
    torch.testing.assert_close(mixed[[0, 2]], edm(x[[0, 2]], 0.5))
    assert not torch.allclose(mixed[[1, 3]], edm(x[[1, 3]], sigma[[1, 3]]))


def test_ambient_oracle_minimises_the_ambient_loss(data):
    # Every item at sigma = 2 > sigma_tn: the ambient optimum must beat the clean optimum (which uses data the
    # loss never shows) and small perturbations of itself, on the real loss with shared random draws.
    x0, x_tn, _ = data
    images = x0.repeat(64, 1, 1, 1)
    eps = ((x_tn - x0) / SIGMA_TN).repeat(64, 1, 1, 1)
    ambient = AmbientOracle(x0, x_tn, SIGMA_TN)
    nets = {'ambient': ambient, 'edm': EDMOracle(x0), 'shrunk': lambda x, s: 0.97 * ambient(x, s), 'shifted': lambda x, s: ambient(x, s) + 0.03}
    loss_fn = AmbientEDMLoss(P_mean=math.log(2.0), P_std=0.0, sigma_tn=SIGMA_TN)
    losses = {}
    for name, net in nets.items():
        torch.manual_seed(0)
        losses[name] = loss_fn(lambda x, s, labels=None, augment_labels=None: net(x, s), images, tn_noise=eps).mean().item()
    assert all(losses['ambient'] < losses[name] for name in ('edm', 'shrunk', 'shifted'))


def test_edm_oracle_sampling_replicates_training_images(data):
    x0, _, latents = data
    out = edm_sampler(EDMOracle(x0), latents, num_steps=18)
    dist, idx = nearest(out, x0)
    assert dist.max() < 1e-6
    assert len(set(idx.tolist())) == 4


def test_lemma_4_1_ambient_sampling_lands_on_noisy_points(data):
    # Integrate the ambient optimum's ODE from sigma = 80 down to sigma_tn (in the time s, where EDM's steps are stable).
    x0, x_tn, latents = data
    state = edm_sampler(ShiftedTime(AmbientOracle(x0, x_tn, SIGMA_TN), SIGMA_TN), latents, num_steps=18, sigma_max=80)
    dist_tn, idx = nearest(state, x_tn)
    dist_clean, _ = nearest(state, x0)
    assert dist_tn.max() < 1e-6
    assert len(set(idx.tolist())) == 4
    assert dist_clean.min() > 0.5 * SIGMA_TN * math.sqrt(x0[0].numel()) # nowhere near a clean image
    # Control: the clean optimum run the same way stops at noisy points of its own, not on S_tn.
    control = edm_sampler(ShiftedTime(EDMOracle(x0), SIGMA_TN), latents, num_steps=18, sigma_max=80)
    assert nearest(control, x_tn)[0].min() > 1.0


def test_shifted_time_is_a_pure_time_change(data):
    # Its EDM ODE direction (x - D')/s equals the wrapped net's (x - D)/sigma times dsigma/ds = s/sigma.
    x0, x_tn, latents = data
    oracle = AmbientOracle(x0, x_tn, SIGMA_TN)
    s = torch.tensor(1.7, dtype=torch.float64)
    sigma = (s ** 2 + SIGMA_TN ** 2).sqrt()
    x = latents[:3] * sigma
    lhs = (x - ShiftedTime(oracle, SIGMA_TN)(x, s)) / s
    rhs = (x - oracle(x, sigma)) / sigma * (s / sigma)
    torch.testing.assert_close(lhs, rhs)


def test_rejects_bad_inputs(data):
    x0, x_tn, _ = data
    with pytest.raises(ValueError):
        EDMOracle(x0[0])
    with pytest.raises(ValueError):
        AmbientOracle(x0, x_tn[:2], SIGMA_TN)
    with pytest.raises(ValueError):
        AmbientOracle(x0, x_tn, 0.0)
