"""Tests for ambient/method/loss.py: EDM at sigma_tn=0, the learned optimum, the split, the weighting, leak-free augmentation."""

import math
import pickle

import numpy as np
import pytest
import scipy.stats
import torch

from ambient.method.loss import AmbientEDMLoss, AmbientVELoss, AmbientVPLoss, x_tn_prediction
from training.augment import AugmentPipe
from training.loss import EDMLoss, VELoss, VPLoss


class RecordingNet:
    """A denoiser that remembers its inputs and returns a fixed function of them."""

    def __init__(self, output=lambda x, sigma: 0.9 * x):
        self.output = output
        self.calls = []

    def __call__(self, x, sigma, labels=None, augment_labels=None):
        self.calls.append(dict(x=x, sigma=sigma, augment_labels=augment_labels))
        return self.output(x, sigma)


def edm_augment_pipe():
    """EDM's train.py augmentation (geometric, p=0.12 raised so most items are augmented)."""
    return AugmentPipe(p=0.6, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


@pytest.mark.parametrize('native, ambient', [(EDMLoss, AmbientEDMLoss), (VPLoss, AmbientVPLoss), (VELoss, AmbientVELoss)])
@pytest.mark.parametrize('augment', [False, True])
def test_sigma_tn_zero_is_the_native_loss(native, ambient, augment):
    images = torch.rand([6, 3, 8, 8]) * 2 - 1
    pipe = edm_augment_pipe() if augment else None
    eps = torch.randn_like(images)
    net = RecordingNet()
    torch.manual_seed(7)
    expected = native()(net, images, None, augment_pipe=pipe)
    torch.manual_seed(7)
    got = ambient(sigma_tn=0.0)(net, images, None, augment_pipe=pipe, tn_noise=eps)
    assert torch.equal(got, expected)
    assert torch.equal(net.calls[0]['x'], net.calls[1]['x'])


def fit_linear_denoiser(loss_fn, x0, eps, seed=0):
    """Minimise the loss over D(x) = a x + b in closed form: the loss is quadratic in (a, b), one Newton step is exact."""
    a = torch.zeros([], dtype=torch.float64, requires_grad=True)
    b = torch.zeros([], dtype=torch.float64, requires_grad=True)
    net = RecordingNet(lambda x, sigma: a * x + b)
    torch.manual_seed(seed)
    loss = loss_fn(net, x0, tn_noise=eps).mean()
    grad = torch.autograd.grad(loss, (a, b), create_graph=True)
    hess = torch.stack([torch.stack(torch.autograd.grad(g, (a, b), retain_graph=True)) for g in grad])
    step = torch.linalg.solve(hess.detach(), torch.stack(grad).detach())
    return (-step).tolist(), net.calls[0]['sigma'].flatten()[0].item()


@pytest.mark.parametrize('sigma', [0.3, 0.8, 1.5, 4.0])
def test_learns_the_clean_optimum_from_noisy_data(sigma):
    # x0 ~ N(mu, s^2): the optimal denoiser is a x + b with a = s^2/(s^2+sigma^2), b = mu sigma^2/(s^2+sigma^2).
    # Above sigma_tn the loss only ever sees x_tn, yet its minimiser must be that clean optimum.
    mu, s, sigma_tn, n = 0.3, 0.5, 0.5, 200_000
    gen = torch.Generator().manual_seed(1)
    x0 = (mu + s * torch.randn([n, 1, 1, 1], generator=gen, dtype=torch.float64))
    eps = torch.randn([n, 1, 1, 1], generator=gen, dtype=torch.float64)
    loss_fn = AmbientEDMLoss(P_mean=math.log(sigma), P_std=0.0, sigma_tn=sigma_tn)
    (a, b), sig = fit_linear_denoiser(loss_fn, x0, eps)
    assert abs(sig - sigma) < 1e-5
    assert a == pytest.approx(s ** 2 / (s ** 2 + sig ** 2), abs=0.015)
    assert b == pytest.approx(mu * sig ** 2 / (s ** 2 + sig ** 2), abs=0.015)


def test_noisy_regime_never_reads_the_clean_image():
    # Same x_tn from different (x0, eps) pairs must give the same loss when every item is noisy.
    loss_fn = AmbientEDMLoss(P_mean=1.0, P_std=0.1, sigma_tn=0.5)
    x0 = torch.rand([4, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(x0)
    delta = torch.randn_like(x0)
    torch.manual_seed(3)
    first = loss_fn(RecordingNet(), x0, tn_noise=eps)
    torch.manual_seed(3)
    second = loss_fn(RecordingNet(), x0 + delta, tn_noise=eps - delta / 0.5)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


def test_edm_split_keeps_edm_sigma_distribution():
    loss_fn = AmbientEDMLoss(sigma_tn=0.8)
    torch.manual_seed(0)
    sigma, noisy = loss_fn.sample_sigma_split(20_000, 'cpu')
    log_sigma = sigma.flatten().log().double().numpy()
    assert scipy.stats.kstest(log_sigma, scipy.stats.norm(loc=-1.2, scale=1.2).cdf).pvalue > 0.01
    p_noisy = scipy.stats.norm.sf((math.log(0.8) + 1.2) / 1.2)
    assert noisy.float().mean().item() == pytest.approx(p_noisy, abs=4 * math.sqrt(p_noisy * (1 - p_noisy) / 20_000))
    assert torch.equal(noisy, sigma >= 0.8)


@pytest.mark.parametrize('cls, kwargs, log_dist', [
    (AmbientEDMLoss, dict(), scipy.stats.norm(loc=-1.2, scale=1.2)),
    (AmbientVELoss, dict(), scipy.stats.uniform(loc=math.log(0.02), scale=math.log(100 / 0.02))),
])
def test_uniform_split_is_half_noisy_with_truncated_sigma(cls, kwargs, log_dist):
    sigma_tn, n = 2.0, 20_000
    loss_fn = cls(sigma_tn=sigma_tn, split='uniform', **kwargs)
    torch.manual_seed(0)
    sigma, noisy = loss_fn.sample_sigma_split(n, 'cpu')
    assert noisy.float().mean().item() == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / n))
    assert bool((sigma[noisy] >= sigma_tn).all()) and bool((sigma[~noisy] < sigma_tn).all())
    # Within each regime sigma follows the family's distribution truncated at sigma_tn.
    cut = log_dist.cdf(math.log(sigma_tn))
    above = lambda v: (log_dist.cdf(v) - cut) / (1 - cut)
    below = lambda v: log_dist.cdf(v) / cut
    assert scipy.stats.kstest(sigma[noisy].log().double().numpy(), above).pvalue > 0.01
    assert scipy.stats.kstest(sigma[~noisy].log().double().numpy(), below).pvalue > 0.01


def test_uniform_split_vp_conditions_on_sigma_tn():
    loss_fn = AmbientVPLoss(sigma_tn=1.0, split='uniform')
    torch.manual_seed(0)
    sigma, noisy = loss_fn.sample_sigma_split(20_000, 'cpu')
    assert noisy.float().mean().item() == pytest.approx(0.5, abs=0.015)
    # The time variable is uniform within each side of t(sigma_tn).
    t = loss_fn.sigma_inv(sigma.double()).flatten().numpy()
    t_tn = float(loss_fn.sigma_inv(1.0))
    assert scipy.stats.kstest(t[noisy.flatten().numpy()], scipy.stats.uniform(t_tn, 1 - t_tn).cdf).pvalue > 0.01
    assert scipy.stats.kstest(t[~noisy.flatten().numpy()], scipy.stats.uniform(1e-5, t_tn - 1e-5).cdf).pvalue > 0.01


@pytest.mark.parametrize('cls', [AmbientEDMLoss, AmbientVELoss, AmbientVPLoss])
@pytest.mark.parametrize('coin', [0.0, 0.75])
def test_uniform_split_extreme_uniform_draws_stay_finite(monkeypatch, cls, coin):
    # torch.rand can return exactly 0; the truncated inverse CDF must still give a positive, finite sigma.
    draws = iter([coin, 0.0])
    monkeypatch.setattr(torch, 'rand', lambda shape, device=None: torch.full(shape, next(draws), device=device))
    loss_fn = cls(sigma_tn=1.0, split='uniform')
    sigma, noisy = loss_fn.sample_sigma_split(4, 'cpu')
    assert bool((noisy == (coin < 0.5)).all())
    assert bool(torch.isfinite(sigma).all()) and bool((sigma > 0).all())
    assert bool(torch.isfinite(loss_fn.weight(sigma)).all())
    assert bool((sigma >= 1.0).all()) if coin < 0.5 else bool((sigma < 1.0).all())


def test_regime_decides_what_the_network_sees():
    # images = 0, so the input is sigma * n (clean regime) or sigma_tn eps + ... (noisy regime).
    eps = torch.randn([2, 3, 16, 16])
    for sigma, corr_min, corr_max in [(0.9, -0.2, 0.2), (1.05, 0.9, 1.0)]:
        net = RecordingNet()
        AmbientEDMLoss(P_mean=math.log(sigma), P_std=0.0, sigma_tn=1.0)(net, torch.zeros_like(eps), tn_noise=eps)
        x = net.calls[0]['x']
        corr = [np.corrcoef(x[i].flatten(), eps[i].flatten())[0, 1] for i in range(2)]
        assert all(corr_min < c < corr_max for c in corr)


def test_augmentation_acts_on_the_noisy_image():
    # sigma = sigma_tn = 1 exactly (P_mean = 0, P_std = 0) means no extra diffusion noise: the input IS aug(x_tn).
    pipe = AugmentPipe(p=1, xflip=1, translate_int=1, translate_int_max=0.25)
    x0 = torch.rand([8, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(x0)
    net = RecordingNet()
    torch.manual_seed(5)
    AmbientEDMLoss(P_mean=0.0, P_std=0.0, sigma_tn=1.0)(net, x0, augment_pipe=pipe, tn_noise=eps)
    torch.manual_seed(5)
    torch.randn([8, 1, 1, 1]) # the loss's sigma draw
    expected, labels = pipe(x0 + eps)
    assert torch.equal(net.calls[0]['x'], expected)
    assert torch.equal(net.calls[0]['augment_labels'], labels)
    # Fresh noise on an augmented clean image (the authors' order) is a different input whenever the draw moved pixels.
    torch.manual_seed(5)
    torch.randn([8, 1, 1, 1])
    authors = pipe(x0)[0] + eps
    moved = (labels.abs().sum(dim=1) > 0)
    assert moved.any()
    assert not torch.allclose(expected[moved], authors[moved])


def test_clean_then_noise_order_reproduces_the_authors():
    pipe = AugmentPipe(p=1, xflip=1, translate_int=1)
    x0 = torch.rand([8, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(x0)
    net = RecordingNet()
    torch.manual_seed(5)
    AmbientEDMLoss(P_mean=0.0, P_std=0.0, sigma_tn=1.0, aug_order='clean-then-noise')(net, x0, augment_pipe=pipe, tn_noise=eps)
    torch.manual_seed(5)
    torch.randn([8, 1, 1, 1])
    assert torch.equal(net.calls[0]['x'], pipe(x0)[0] + eps)


def test_denoiser_weighting_puts_edm_weight_on_d_error():
    sigma_tn, sigma = 0.5, 1.2
    x0 = torch.rand([4, 3, 8, 8], dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    losses = {}
    for weighting in ('target', 'denoiser'):
        net = RecordingNet(lambda x, s: 0.7 * x)
        torch.manual_seed(2)
        loss_fn = AmbientEDMLoss(P_mean=math.log(sigma), P_std=0.0, sigma_tn=sigma_tn, weighting=weighting)
        losses[weighting] = loss_fn(net, x0, tn_noise=eps)
        x, sig = net.calls[0]['x'], net.calls[0]['sigma'].double()
    # The clean target implied by x_tn: the D for which the x_tn prediction is exact.
    implied = (sig ** 2 * (x0 + sigma_tn * eps) - sigma_tn ** 2 * x) / (sig ** 2 - sigma_tn ** 2)
    lam = (sig ** 2 + 0.25) / (sig * 0.5) ** 2
    # sigma and the weights are float32, as in training.
    torch.testing.assert_close(losses['denoiser'], lam * (0.7 * x - implied) ** 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses['target'], losses['denoiser'] * ((sig ** 2 - sigma_tn ** 2) / sig ** 2) ** 2, rtol=1e-5, atol=1e-6)


def test_exact_tie_at_sigma_tn_is_finite():
    x0 = torch.rand([4, 3, 8, 8]) * 2 - 1
    for weighting in ('target', 'denoiser'):
        loss = AmbientEDMLoss(P_mean=0.0, P_std=0.0, sigma_tn=1.0, weighting=weighting)(RecordingNet(), x0, tn_noise=torch.randn_like(x0))
        assert torch.isfinite(loss).all()


def test_pickles_with_its_options():
    # (tests/test_persistence.py checks that the module imports only what EDM's checkout offers.)
    loss_fn = AmbientVELoss(sigma_tn=1.5, split='uniform', aug_order='clean-then-noise')
    clone = pickle.loads(pickle.dumps(loss_fn))
    assert (clone.sigma_tn, clone.split, clone.aug_order, clone.sigma_max) == (1.5, 'uniform', 'clean-then-noise', 100)
    torch.manual_seed(0)
    first = clone.sample_sigma_split(8, 'cpu')
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(first, loss_fn.sample_sigma_split(8, 'cpu')))


def test_bad_options_and_missing_noise():
    for kwargs in [dict(sigma_tn=-1.0), dict(sigma_tn=float('nan')), dict(sigma_tn=1.0, split='half'),
                   dict(sigma_tn=1.0, weighting='x'), dict(sigma_tn=1.0, aug_order='x'), dict(sigma_tn=0.0, split='uniform')]:
        with pytest.raises(ValueError):
            AmbientEDMLoss(**kwargs)
    with pytest.raises(ValueError):
        AmbientVELoss(sigma_tn=0.01, split='uniform') # no VE noise level below 0.02
    x0 = torch.zeros([2, 3, 8, 8])
    with pytest.raises(ValueError, match='tn_noise'):
        AmbientEDMLoss(sigma_tn=1.0)(RecordingNet(), x0)
    with pytest.raises(ValueError, match='shape'):
        AmbientEDMLoss(sigma_tn=1.0)(RecordingNet(), x0, tn_noise=torch.zeros([2, 3, 4, 4]))


def test_reports_each_regimes_loss_and_fraction_without_changing_the_loss():
    from torch_utils import training_stats
    collector = training_stats.Collector(regex='Loss/ambient/.*', keep_previous=False)
    images = torch.rand([64, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(images)
    loss_fn = AmbientEDMLoss(sigma_tn=0.5, split='uniform')
    torch.manual_seed(3)
    loss = loss_fn(RecordingNet(), images, tn_noise=eps, augment_pipe=edm_augment_pipe())
    after = torch.rand([])
    collector.update()
    torch.manual_seed(3)
    net = RecordingNet()
    again = loss_fn(net, images, tn_noise=eps, augment_pipe=edm_augment_pipe())
    assert torch.equal(loss, again) and torch.equal(after, torch.rand([])) # Same value, same RNG draws after it.
    noisy = (net.calls[0]['sigma'].flatten() >= 0.5)
    per_item = loss.flatten(1).mean(dim=1).double()
    assert 0 < int(noisy.sum()) < 64
    assert collector.num('Loss/ambient/above_sigma_tn') == int(noisy.sum())
    assert collector.num('Loss/ambient/below_sigma_tn') == 64 - int(noisy.sum())
    assert collector.mean('Loss/ambient/above_sigma_tn') == pytest.approx(float(per_item[noisy].mean()), rel=1e-5)
    assert collector.mean('Loss/ambient/below_sigma_tn') == pytest.approx(float(per_item[~noisy].mean()), rel=1e-5)
    assert collector.mean('Loss/ambient/fraction_above') == pytest.approx(float(noisy.double().mean()))
    # A regime without items reports nothing (EDM's API: every name every call, possibly empty).
    collector.update() # Drops the second call's statistics.
    AmbientEDMLoss(P_mean=math.log(2.0), P_std=0.0, sigma_tn=0.5)(RecordingNet(), images, tn_noise=eps)
    collector.update()
    assert collector.num('Loss/ambient/below_sigma_tn') == 0 and collector.num('Loss/ambient/above_sigma_tn') == 64
    assert collector.mean('Loss/ambient/fraction_above') == 1.0


#----------------------------------------------------------------------------
# Per-item sigma_tn (sigma_tn='per_image': each call passes every item's own value).

FAMILIES = [(AmbientEDMLoss, dict(P_mean=0.0)), (AmbientVELoss, dict()), (AmbientVPLoss, dict())]


def alternating(n, values=(0.2, 2.0)):
    """float64 [n] per-item sigma_tn cycling through `values`, as the dataset's field arrives collated."""
    return torch.tensor([values[i % len(values)] for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize('cls, kwargs', FAMILIES)
@pytest.mark.parametrize('weighting', ['target', 'denoiser'])
def test_per_item_sigma_tn_is_the_global_loss_of_each_items_value(cls, kwargs, weighting):
    n = 64
    images = torch.rand([n, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(images)
    levels = alternating(n)
    per_item = cls(sigma_tn='per_image', weighting=weighting, **kwargs)
    net = RecordingNet()
    torch.manual_seed(4)
    loss = per_item(net, images, tn_noise=eps, sigma_tn=levels)
    torch.manual_seed(4)
    sigma, noisy = per_item.sample_sigma_split(n, 'cpu', levels.reshape(n, 1, 1, 1))
    assert torch.equal(sigma, net.calls[0]['sigma'])
    for value in (0.2, 2.0):
        items = levels == value
        glob = cls(sigma_tn=value, weighting=weighting, **kwargs)
        glob_net = RecordingNet()
        torch.manual_seed(4)
        expected = glob(glob_net, images, tn_noise=eps)
        torch.manual_seed(4)
        _, glob_noisy = glob.sample_sigma_split(n, 'cpu')
        # The regime is the item's own: clean below its sigma_tn, noisy above, and both happen for both values.
        assert torch.equal(noisy[items], glob_noisy[items]) and torch.equal(noisy[items], sigma[items] >= value)
        assert 0 < int(noisy[items].sum()) < int(items.sum())
        # What the network sees, the x_tn mapping and the weight, hence the loss: those of the global loss, bit for bit.
        assert torch.equal(net.calls[0]['x'][items], glob_net.calls[0]['x'][items])
        assert torch.equal(loss[items], expected[items])
        D, x = torch.randn_like(images), net.calls[0]['x']
        mapped = x_tn_prediction(D, x, sigma, levels.reshape(n, 1, 1, 1))
        assert torch.equal(mapped[items], x_tn_prediction(D, x, sigma, value)[items])


@pytest.mark.parametrize('cls, kwargs', FAMILIES)
@pytest.mark.parametrize('split', ['edm', 'uniform'])
@pytest.mark.parametrize('value', [0.5, 0.123456789])
def test_constant_per_item_sigma_tn_is_the_global_number_bit_for_bit(cls, kwargs, split, value):
    images = torch.rand([16, 3, 8, 8]) * 2 - 1
    eps = torch.randn_like(images)
    results = []
    for loss_fn, extra in [(cls(sigma_tn=value, split=split, weighting='denoiser', **kwargs), {}),
                           (cls(sigma_tn='per_image', split=split, weighting='denoiser', **kwargs),
                            dict(sigma_tn=torch.full([16], value, dtype=torch.float64)))]:
        net = RecordingNet()
        torch.manual_seed(9)
        loss = loss_fn(net, images, tn_noise=eps, augment_pipe=edm_augment_pipe(), **extra)
        results.append((loss, net.calls[0]['x'], net.calls[0]['sigma'], torch.rand([4])))
    assert all(torch.equal(a, b) for a, b in zip(*results)) # Same values, and the same random draws after them.


@pytest.mark.parametrize('cls, kwargs, log_dist', [
    (AmbientEDMLoss, dict(), scipy.stats.norm(loc=-1.2, scale=1.2)),
    (AmbientVELoss, dict(), scipy.stats.uniform(loc=math.log(0.02), scale=math.log(100 / 0.02))),
])
def test_uniform_split_truncates_at_each_items_own_sigma_tn(cls, kwargs, log_dist):
    n = 20_000
    levels = alternating(n).reshape(n, 1, 1, 1)
    loss_fn = cls(sigma_tn='per_image', split='uniform', **kwargs)
    torch.manual_seed(0)
    sigma, noisy = loss_fn.sample_sigma_split(n, 'cpu', levels)
    for value in (0.2, 2.0):
        items = levels == value
        s, up = sigma[items], noisy[items]
        # A fair coin per item, then sigma from the family's distribution restricted to that side of the item's value.
        assert up.float().mean().item() == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / (n // 2)))
        assert bool((s[up] >= value).all()) and bool((s[~up] < value).all())
        cut = log_dist.cdf(math.log(value))
        assert scipy.stats.kstest(s[up].log().double().numpy(), lambda v: (log_dist.cdf(v) - cut) / (1 - cut)).pvalue > 0.01
        assert scipy.stats.kstest(s[~up].log().double().numpy(), lambda v: log_dist.cdf(v) / cut).pvalue > 0.01


def test_per_item_sigma_tn_is_required_checked_and_pickled():
    x0 = torch.zeros([2, 3, 8, 8])
    eps = torch.randn_like(x0)
    per_item = AmbientEDMLoss(sigma_tn='per_image')
    with pytest.raises(ValueError, match='needs each item'):
        per_item(RecordingNet(), x0, tn_noise=eps)
    with pytest.raises(ValueError, match='3 values for 2 items'):
        per_item(RecordingNet(), x0, tn_noise=eps, sigma_tn=torch.ones([3], dtype=torch.float64))
    with pytest.raises(ValueError, match='tn_noise'):
        per_item(RecordingNet(), x0, sigma_tn=torch.ones([2], dtype=torch.float64))
    # A loss with one number refuses per-item values rather than silently preferring one of the two.
    for sigma_tn in (0.5, 0.0):
        with pytest.raises(ValueError, match='per-item sigma_tn needs'):
            AmbientEDMLoss(sigma_tn=sigma_tn)(RecordingNet(), x0, tn_noise=eps, sigma_tn=torch.ones([2], dtype=torch.float64))
    # The values a run may use: finite, > 0, and for the uniform split with noise levels on both sides.
    for bad in (0.0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match='finite numbers > 0'):
            per_item.check_sigma_tn(torch.tensor([0.5, bad], dtype=torch.float64))
    AmbientVELoss(sigma_tn='per_image', split='uniform').check_sigma_tn(torch.tensor([0.03, 99.0], dtype=torch.float64))
    with pytest.raises(ValueError, match='both sides of sigma_tn=0.01'):
        AmbientVELoss(sigma_tn='per_image', split='uniform').check_sigma_tn(torch.tensor([0.5, 0.01], dtype=torch.float64))
    for bad in ('0.5', 'per-image', None):
        with pytest.raises(ValueError):
            AmbientEDMLoss(sigma_tn=bad)
    clone = pickle.loads(pickle.dumps(AmbientVPLoss(sigma_tn='per_image', split='uniform')))
    assert clone.sigma_tn == 'per_image' and clone.per_image and clone.split == 'uniform'
