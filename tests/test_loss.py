"""Tests for training/loss.py: zero loss at the optimum, EDM's draw order, sigma distributions, weights, augmentation."""

import math
import pickle

import numpy as np
import pytest
import scipy.stats
import torch

from training.augment import AugmentPipe
from training.loss import EDMLoss, VELoss, VPLoss

LOSSES = [VPLoss, VELoss, EDMLoss]


class RecordingNet:
    """A denoiser that remembers its inputs and returns a fixed function of them."""

    def __init__(self, output):
        self.output = output
        self.calls = []

    def __call__(self, x, sigma, labels, augment_labels=None):
        self.calls.append(dict(x=x, sigma=sigma, labels=labels, augment_labels=augment_labels))
        return self.output(x, sigma)


def expected_sigma(loss_fn, n):
    """The noise levels EDM draws next from the global generator, written out from EDM's formulas."""
    if isinstance(loss_fn, EDMLoss):
        return (torch.randn([n, 1, 1, 1]) * loss_fn.P_std + loss_fn.P_mean).exp()
    u = torch.rand([n, 1, 1, 1])
    if isinstance(loss_fn, VELoss):
        return loss_fn.sigma_min * (loss_fn.sigma_max / loss_fn.sigma_min) ** u
    t = 1 + u * (loss_fn.epsilon_t - 1)
    return (torch.exp(0.5 * loss_fn.beta_d * t ** 2 + loss_fn.beta_min * t) - 1).sqrt()


@pytest.mark.parametrize('cls', LOSSES)
def test_perfect_denoiser_of_a_single_image_dataset_has_zero_loss(cls):
    image = torch.rand([1, 3, 8, 8]) * 2 - 1
    images = image.expand(6, -1, -1, -1)
    torch.manual_seed(0)
    loss = cls()(RecordingNet(lambda x, sigma: image.expand_as(x)), images)
    assert loss.shape == images.shape
    assert torch.equal(loss, torch.zeros_like(loss))
    # The same batch with a useless denoiser is penalised, so zero above is not vacuous.
    torch.manual_seed(0)
    assert (cls()(RecordingNet(lambda x, sigma: torch.zeros_like(x)), images) > 0).all()


@pytest.mark.parametrize('cls', LOSSES)
def test_draws_and_result_follow_edm_for_the_same_seed(cls):
    loss_fn = cls()
    images = torch.rand([5, 3, 4, 4]) * 2 - 1
    labels = torch.eye(5)
    net = RecordingNet(lambda x, sigma: 0.5 * x + 0.1 * sigma)
    torch.manual_seed(123)
    loss = loss_fn(net, images, labels)

    torch.manual_seed(123)
    sigma = expected_sigma(loss_fn, 5)
    noise = torch.randn_like(images)
    call, = net.calls
    torch.testing.assert_close(call['sigma'], sigma, rtol=1e-6, atol=0)
    torch.testing.assert_close(call['x'], images + noise * sigma)
    assert call['labels'] is labels and call['augment_labels'] is None
    D = 0.5 * call['x'] + 0.1 * sigma
    torch.testing.assert_close(loss, loss_fn.weight(sigma) * (D - images) ** 2)


def ks_pvalue(samples, cdf):
    return scipy.stats.kstest(np.asarray(samples, dtype=np.float64).ravel(), cdf).pvalue


def test_edm_sigma_is_log_normal():
    torch.manual_seed(1)
    loss_fn = EDMLoss(P_mean=0.4, P_std=0.7)
    log_sigma = loss_fn.sample_sigma(4000, torch.device('cpu')).log()
    assert ks_pvalue(log_sigma, scipy.stats.norm(0.4, 0.7).cdf) > 1e-3
    assert ks_pvalue(log_sigma, scipy.stats.norm(0.7, 0.7).cdf) < 1e-6


def test_ve_sigma_is_log_uniform():
    torch.manual_seed(2)
    loss_fn = VELoss(sigma_min=0.05, sigma_max=20)
    sigma = loss_fn.sample_sigma(4000, torch.device('cpu'))
    assert sigma.min() >= 0.05 and sigma.max() <= 20
    lo, hi = math.log(0.05), math.log(20)
    assert ks_pvalue(sigma.log(), scipy.stats.uniform(lo, hi - lo).cdf) > 1e-3
    assert ks_pvalue(sigma, scipy.stats.uniform(0.05, 20 - 0.05).cdf) < 1e-6


def test_vp_sigma_comes_from_uniform_time():
    torch.manual_seed(3)
    loss_fn = VPLoss()
    sigma = loss_fn.sample_sigma(4000, torch.device('cpu')).double()
    # Invert sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) for t in [epsilon_t, 1].
    t = ((loss_fn.beta_min ** 2 + 2 * loss_fn.beta_d * torch.log1p(sigma ** 2)).sqrt() - loss_fn.beta_min) / loss_fn.beta_d
    eps = loss_fn.epsilon_t
    assert ks_pvalue(t, scipy.stats.uniform(eps, 1 - eps).cdf) > 1e-3
    assert ks_pvalue(t, scipy.stats.uniform(0.1, 0.9).cdf) < 1e-6
    # The end points are EDM's VP sigma range, float32 rounding included (sigma(epsilon_t) = 2^-10, not 1.0005e-3).
    assert float(loss_fn.sigma(torch.tensor(1.0))) == pytest.approx(152.16697692871094, rel=1e-7)
    assert float(loss_fn.sigma(torch.tensor(eps))) == 0.0009765625


def test_weights_have_their_closed_forms():
    sigma = torch.logspace(-3, 2, 11, dtype=torch.float64)
    for sigma_data in (0.5, 1.3):
        c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
        torch.testing.assert_close(EDMLoss(sigma_data=sigma_data).weight(sigma), c_out ** -2)
    torch.testing.assert_close(VPLoss().weight(sigma), sigma ** -2)
    torch.testing.assert_close(VELoss().weight(sigma), sigma ** -2)


@pytest.mark.parametrize('cls', LOSSES)
def test_augmentation_happens_inside_the_loss(cls):
    images = torch.rand([4, 3, 8, 8]) * 2 - 1
    aug_labels = torch.randn([4, 9])
    pipe_calls = []

    def pipe(x):
        pipe_calls.append(x)
        return x.flip(3), aug_labels

    # A denoiser that knows the augmentation is perfect: the loss is measured against the augmented image.
    net = RecordingNet(lambda x, sigma: images.flip(3))
    torch.manual_seed(4)
    loss = cls()(net, images, None, augment_pipe=pipe)
    assert len(pipe_calls) == 1 and pipe_calls[0] is images
    assert net.calls[0]['augment_labels'] is aug_labels
    assert torch.equal(loss, torch.zeros_like(loss))


def test_edm_augment_pipe_labels_reach_the_net():
    pipe = AugmentPipe(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    net = RecordingNet(lambda x, sigma: torch.zeros_like(x))
    torch.manual_seed(5)
    EDMLoss()(net, torch.rand([3, 3, 8, 8]), None, augment_pipe=pipe)
    augment_labels = net.calls[0]['augment_labels']
    assert augment_labels.shape == (3, 9) and augment_labels.abs().sum() > 0


def test_loss_pickles_with_its_settings():
    loss_fn = pickle.loads(pickle.dumps(EDMLoss(P_mean=-0.4, sigma_data=0.7)))
    assert (loss_fn.P_mean, loss_fn.P_std, loss_fn.sigma_data) == (-0.4, 1.2, 0.7)
    images = torch.rand([2, 1, 4, 4])
    torch.manual_seed(6)
    a = loss_fn(RecordingNet(lambda x, sigma: x), images)
    torch.manual_seed(6)
    b = EDMLoss(P_mean=-0.4, sigma_data=0.7)(RecordingNet(lambda x, sigma: x), images)
    assert torch.equal(a, b)
