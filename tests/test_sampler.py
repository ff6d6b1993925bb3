"""Tests of training/sampler.py: EDM golden vectors, per-seed determinism, closed-form denoisers."""

import itertools

import numpy as np
import pytest
import torch

from training import sampler

#----------------------------------------------------------------------------

class ConstantDenoiser:
    """Exact denoiser of a one-image dataset: D(x, sigma) = that image, for every x and sigma."""

    sigma_min, sigma_max, label_dim = 0, float('inf'), 0

    def __init__(self, image):
        self.image = image
        self.img_channels, self.img_resolution = image.shape[0], image.shape[-1]

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        return self.image.to(x.dtype).expand_as(x)


class GaussianDenoiser(ConstantDenoiser):
    """Exact denoiser of N(0, sd^2 I) data: D(x, sigma) = x sd^2 / (sd^2 + sigma^2)."""

    def __init__(self, channels=1, resolution=4, sd=0.5):
        super().__init__(torch.zeros([channels, resolution, resolution]))
        self.sd = sd

    def __call__(self, x, sigma, class_labels=None):
        return x * (self.sd ** 2 / (self.sd ** 2 + sigma ** 2))


class ReplayNet:
    """Returns the denoiser outputs EDM recorded, in order, and records what the sampler passed in."""

    sigma_min, sigma_max, label_dim, img_channels, img_resolution = 0, float('inf'), 0, 3, 16

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def __call__(self, x, sigma, class_labels=None):
        self.calls.append((x.clone(), torch.as_tensor(sigma).clone()))
        return self.outputs[len(self.calls) - 1]

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def golden(golden_dir):
    return torch.load(golden_dir / 'sampler_edm_heun.pt', weights_only=True)


def _golden_kwargs(g):
    return {k: g[k] for k in ('num_steps', 'sigma_min', 'sigma_max', 'rho', 'S_churn', 'S_min', 'S_max', 'S_noise')}


def test_time_steps_match_golden_exactly(golden):
    net = ReplayNet(None)
    t_steps = sampler.edm_time_steps(net, golden['num_steps'], golden['sigma_min'], golden['sigma_max'], golden['rho'])
    assert t_steps.dtype == torch.float64
    assert torch.equal(t_steps, golden['t_steps'])


def test_latents_from_per_seed_cpu_generators_match_golden(golden):
    rnd = sampler.StackedRandomGenerator('cpu', golden['seeds'])
    latents = rnd.randn([len(golden['seeds'])] + list(golden['latents'].shape[1:]))
    assert latents.dtype == torch.float32
    assert torch.equal(latents, golden['latents'])


def test_sampler_replays_golden_calls(golden):
    net = ReplayNet(golden['call_denoised'])
    rnd = sampler.StackedRandomGenerator('cpu', golden['seeds'])
    images = sampler.edm_sampler(net, golden['latents'], randn_like=rnd.randn_like, **_golden_kwargs(golden))
    assert len(net.calls) == len(golden['call_denoised']) == 2 * golden['num_steps'] - 1
    xs = torch.stack([x for x, _ in net.calls])
    sigmas = torch.stack([s for _, s in net.calls])
    assert xs.dtype == torch.float64 and sigmas.dtype == torch.float64 and sigmas.ndim == 1
    torch.testing.assert_close(sigmas, golden['call_sigma'], rtol=0, atol=1e-12)
    torch.testing.assert_close(xs, golden['call_x'], rtol=0, atol=1e-9)
    assert images.dtype == torch.float64
    torch.testing.assert_close(images, golden['images'], rtol=0, atol=1e-9)
    assert torch.equal(sampler.images_to_uint8(images), golden['images_uint8'])


def test_sampler_with_golden_network(golden, golden_dir):
    networks = pytest.importorskip('training.networks')
    d = torch.load(golden_dir / golden['network_file'], weights_only=True)
    net = getattr(networks, d['class_name'])(**d['kwargs']).eval().requires_grad_(False)
    net.load_state_dict(d['state_dict'])
    images = sampler.generate_images(net, golden['seeds'], batch_size=4, **_golden_kwargs(golden))
    diff = (images.int() - golden['images_uint8'].int()).abs()
    assert diff.max() <= 1 and (diff > 0).sum() <= 8
    # The float result too, through the public pieces.
    rnd = sampler.StackedRandomGenerator('cpu', golden['seeds'])
    with torch.no_grad():
        x = sampler.edm_sampler(net, rnd.randn(list(golden['latents'].shape)), randn_like=rnd.randn_like, **_golden_kwargs(golden))
    torch.testing.assert_close(x, golden['images'], rtol=0, atol=1e-5)

#----------------------------------------------------------------------------

def test_stacked_generator_rows_depend_only_on_their_seed():
    a = sampler.StackedRandomGenerator('cpu', [5, 9, 11])
    b = sampler.StackedRandomGenerator('cpu', [11, 5])
    xa = [a.randn([3, 2, 2]), a.randn_like(torch.zeros([3, 2, 2], dtype=torch.float64)), a.randint(7, size=[3])]
    xb = [b.randn([2, 2, 2]), b.randn_like(torch.zeros([2, 2, 2], dtype=torch.float64)), b.randint(7, size=[2])]
    for ra, rb in zip(xa, xb):
        assert torch.equal(ra[[2, 0]], rb)
    assert xa[1].dtype == torch.float64
    with pytest.raises(ValueError):
        a.randn([2, 4])


def test_edm_sampler_returns_the_single_training_image():
    image = torch.linspace(-1, 1, 2 * 4 * 4, dtype=torch.float64).reshape(2, 4, 4)
    net = ConstantDenoiser(image)
    latents = torch.randn([3, 2, 4, 4], generator=torch.Generator().manual_seed(0))
    for kwargs in [dict(num_steps=5), dict(num_steps=7, S_churn=40, S_min=0.05, S_max=50)]:
        out = sampler.edm_sampler(net, latents, **kwargs)
        torch.testing.assert_close(out, image.expand_as(out), rtol=0, atol=1e-12)
    out = sampler.ablation_sampler(net, latents, num_steps=5, solver='euler')
    torch.testing.assert_close(out, image.expand_as(out), rtol=0, atol=1e-12)


def test_ablation_defaults_equal_edm_sampler():
    net = GaussianDenoiser()
    latents = torch.randn([2, 1, 4, 4], generator=torch.Generator().manual_seed(1))
    for kwargs in [dict(num_steps=6), dict(num_steps=6, S_churn=30, S_min=0.1, S_max=10)]:
        outs = []
        for fn in (sampler.edm_sampler, sampler.ablation_sampler):
            rnd = sampler.StackedRandomGenerator('cpu', [3, 4])
            outs.append(fn(net, latents, randn_like=rnd.randn_like, **kwargs))
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('solver,disc,schedule,scaling', list(itertools.product(['euler', 'heun'], ['vp', 've', 'iddpm', 'edm'], ['vp', 've', 'linear'], ['vp', 'none'])))
def test_ablation_sampler_variants_converge_with_their_order(solver, disc, schedule, scaling):
    # For N(0, sd^2) data the probability-flow ODE is linear: x(0) = x(T) sd / sqrt(sd^2 + sigma_max^2).
    # Every variant must converge to it: Euler at first order, Heun at second order (x4 steps: /4, /16).
    net = GaussianDenoiser(sd=0.5)
    latents = torch.randn([4, 1, 4, 4], generator=torch.Generator().manual_seed(2))
    sigma_max = {'vp': sampler._vp_sigma(19.1, 0.1)(1), 've': 100, 'iddpm': 81, 'edm': 80}[disc]
    if disc == 'iddpm':
        sigma_max = float(sampler._iddpm_sigmas(1000, 0.001, 0.008, 'cpu').clip(max=81).max())
    expected = latents.double() * sigma_max * 0.5 / np.sqrt(0.25 + sigma_max ** 2)
    errors = []
    for num_steps in (16, 64):
        out = sampler.ablation_sampler(net, latents, num_steps=num_steps, solver=solver, discretization=disc, schedule=schedule, scaling=scaling)
        errors.append((out - expected).abs().max().item())
    assert np.isfinite(errors).all()
    assert errors[1] < errors[0] / (2.5 if solver == 'euler' else 8)


def test_generate_images_is_batch_independent_with_churn_and_labels(make_tiny_cond_net):
    net = make_tiny_cond_net()
    kwargs = dict(num_steps=4, S_churn=20, S_min=0.01, S_max=100)
    full = sampler.generate_images(net, range(8), batch_size=8, **kwargs)
    split = sampler.generate_images(net, range(8), batch_size=3, **kwargs)
    assert full.shape == (8, 8, 8, 1) and full.dtype == torch.uint8
    assert torch.equal(full, split)
    assert len({bytes(im.numpy()) for im in full}) == 8
    # A fixed class changes the images but keeps them per-seed.
    fixed = sampler.generate_images(net, [6, 2], class_idx=1, batch_size=2, **kwargs)
    assert torch.equal(fixed, sampler.generate_images(net, [2, 6], class_idx=1, batch_size=1, **kwargs)[[1, 0]])
    with pytest.raises(ValueError):
        sampler.generate_images(net, [0], class_idx=3)

#----------------------------------------------------------------------------
# The fast sampling paths of generate.py (--bf16, --compile).

def test_denoiser_without_options_is_the_network_and_exposes_its_attributes(make_tiny_cond_net):
    net = make_tiny_cond_net()
    plain = sampler.Denoiser(net)
    assert plain.sigma_min == net.sigma_min and plain.label_dim == net.label_dim and plain.img_resolution == 8
    assert torch.equal(plain.round_sigma(torch.tensor(0.5)), net.round_sigma(torch.tensor(0.5)))
    assert torch.equal(sampler.generate_images(plain, range(4), num_steps=4), sampler.generate_images(net, range(4), num_steps=4))


def test_bf16_denoiser_runs_in_bfloat16_and_stays_close(make_tiny_cond_net):
    net = make_tiny_cond_net()
    x = torch.randn([4, 1, 8, 8], generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    sigma = torch.tensor(2.0, dtype=torch.float64)
    with torch.no_grad():
        exact, fast = net(x, sigma), sampler.Denoiser(net, bf16=True)(x, sigma)
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact) # The convolutions ran in bfloat16.
    assert (fast - exact).abs().max() < 0.05 * exact.abs().max()
    images = sampler.generate_images(net, range(8), num_steps=8).numpy().astype(int)
    bf16 = sampler.generate_images(sampler.Denoiser(net, bf16=True), range(8), num_steps=8).numpy().astype(int)
    assert np.abs(images - bf16).mean() < 2 # uint8 levels; docs/performance.md states the measured difference.


def test_channels_last_denoiser_changes_rounding_only(make_tiny_cond_net):
    net = make_tiny_cond_net()
    x = torch.randn([4, 1, 8, 8], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        exact, nhwc = net(x, torch.tensor(1.5)), sampler.Denoiser(net, channels_last=True)(x, torch.tensor(1.5))
    assert nhwc.is_contiguous() and (nhwc - exact).abs().max() < 1e-5
    images = sampler.generate_images(net, range(4), num_steps=4).numpy().astype(int)
    cl = sampler.generate_images(sampler.Denoiser(net, channels_last=True), range(4), num_steps=4).numpy().astype(int)
    assert np.abs(images - cl).max() <= 1


@pytest.mark.slow # torch.compile: ~35 s with a cold inductor cache.
def test_compiled_denoiser_matches_the_network_up_to_rounding(make_tiny_cond_net):
    net = make_tiny_cond_net()
    images = sampler.generate_images(net, range(4), num_steps=3).numpy().astype(int)
    compiled = sampler.generate_images(sampler.Denoiser(net, compile=True), range(4), num_steps=3).numpy().astype(int)
    assert np.abs(images - compiled).max() <= 1

#----------------------------------------------------------------------------
