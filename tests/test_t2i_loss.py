"""ambient.t2i.loss: exactly diffusers' loss at t_n = 0; from noisy latents only, the clean posterior mean."""

import pytest
import torch
import torch.nn.functional as F

from ambient.t2i import loss as t2i_loss

PREDICTION_TYPES = t2i_loss.PREDICTION_TYPES


def _scaled_linear(num=1000, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion's schedule: betas linear in sqrt space, float32 like diffusers."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


@pytest.mark.parametrize('prediction_type', PREDICTION_TYPES)
def test_tn0_is_diffusers_standard_loss(prediction_type):
    diffusers = pytest.importorskip('diffusers')
    scheduler = diffusers.DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
                                        prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn([6, 4, 8, 8], generator=g)
    noise = torch.randn([6, 4, 8, 8], generator=g)
    pred = torch.randn([6, 4, 8, 8], generator=g)
    timesteps = torch.randint(0, 1000, [6], generator=g)
    batch = t2i_loss.prepare(latents, None, timesteps, noise, scheduler.alphas_cumprod, ambient_timestep=0)
    assert torch.equal(batch.x_t, scheduler.add_noise(latents, noise, timesteps))
    if prediction_type == 'epsilon':
        target = noise
    elif prediction_type == 'v_prediction':
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    ours = t2i_loss.standard_target(latents, noise, batch.alpha, batch.sigma, prediction_type)
    assert torch.equal(ours, target)
    expected = F.mse_loss(pred.float(), target.float(), reduction='mean')
    got = t2i_loss.ambient_loss(pred, batch, prediction_type)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    # Same for both weightings, and independent of tn_noise when t_n = 0.
    batch2 = t2i_loss.prepare(latents, torch.randn_like(latents), timesteps, noise, scheduler.alphas_cumprod, 0)
    torch.testing.assert_close(t2i_loss.ambient_loss(pred, batch2, prediction_type, 'prediction'), expected, rtol=1e-6, atol=0)


def test_noisy_regime_sees_only_x_tn():
    acp = _scaled_linear()
    g = torch.Generator().manual_seed(1)
    z0, eps, n = (torch.randn([8, 4, 4, 4], generator=g) for _ in range(3))
    pred = torch.randn([8, 4, 4, 4], generator=g)
    t_n = 50
    timesteps = torch.tensor([0, 10, 49, 50, 51, 200, 600, 999])
    a = t2i_loss.prepare(z0, eps, timesteps, n, acp, t_n)
    # Another (z0', eps') with the same noisy copy x_tn.
    alpha_tn, sigma_tn = acp[t_n] ** 0.5, (1 - acp[t_n]) ** 0.5
    z0b = torch.randn([8, 4, 4, 4], generator=g)
    epsb = (a.x_tn - alpha_tn * z0b) / sigma_tn
    b = t2i_loss.prepare(z0b, epsb, timesteps, n, acp, t_n)
    noisy = (timesteps >= t_n)
    assert torch.equal(a.noisy.flatten(), noisy)
    torch.testing.assert_close(a.x_t[noisy], b.x_t[noisy], rtol=0, atol=1e-5)
    for weighting in t2i_loss.WEIGHTINGS:
        for prediction_type in PREDICTION_TYPES:
            la = t2i_loss.per_item_loss(pred, a, prediction_type, weighting)
            lb = t2i_loss.per_item_loss(pred, b, prediction_type, weighting)
            torch.testing.assert_close(la[noisy], lb[noisy], rtol=1e-4, atol=1e-5)
            if prediction_type != 'epsilon': # The clean regime's target depends on z0 (epsilon's is the noise).
                assert not torch.allclose(la[~noisy], lb[~noisy])
            assert torch.isfinite(la).all()
    assert not torch.allclose(a.x_t[~noisy], b.x_t[~noisy])
    # At t = t_n exactly, x_t is the noisy copy itself.
    torch.testing.assert_close(a.x_t[3], a.x_tn[3], rtol=0, atol=1e-6)


def test_lemma_b2_v_target_and_weightings_agree():
    acp = _scaled_linear()
    g = torch.Generator().manual_seed(2)
    z0, eps, n = (torch.randn([5, 4, 4, 4], generator=g) for _ in range(3))
    pred = torch.randn([5, 4, 4, 4], generator=g)
    t_n = 100
    timesteps = torch.tensor([101, 150, 400, 800, 999])
    batch = t2i_loss.prepare(z0, eps, timesteps, n, acp, t_n)
    # The paper's formula: alpha_t z - sigma_t (x_tn - c2 x_t) / c1, with z the noise implied by (x_t, x0 target).
    c1, c2 = t2i_loss.lemma_b1_coefficients(batch)
    x0_target = (batch.x_tn - c2 * batch.x_t) / c1
    z = (batch.x_t - batch.alpha * x0_target) / batch.sigma
    paper = batch.alpha * z - batch.sigma * x0_target
    torch.testing.assert_close(t2i_loss.lemma_b2_target(batch, 'v_prediction'), paper, rtol=1e-4, atol=1e-4)
    for prediction_type in PREDICTION_TYPES:
        target = t2i_loss.lemma_b2_target(batch, prediction_type)
        direct = ((pred - target) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(t2i_loss.per_item_loss(pred, batch, prediction_type, 'prediction'), direct, rtol=1e-3, atol=1e-4)
        ratio = t2i_loss.per_item_loss(pred, batch, prediction_type, 'x_tn') / direct
        torch.testing.assert_close(ratio, c1.flatten() ** 2, rtol=1e-3, atol=0)


@pytest.mark.parametrize('prediction_type', PREDICTION_TYPES)
@pytest.mark.parametrize('weighting', t2i_loss.WEIGHTINGS)
def test_gaussian_minimiser_is_clean_posterior_mean(prediction_type, weighting):
    """Fit pred = a x_t + b per dimension to the loss fed only x_tn; its clean estimate is E[z0 | x_t] of clean data."""
    acp = _scaled_linear().double()
    g = torch.Generator().manual_seed(3)
    N, t_n, t = 100_000, 50, 300
    mu = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    std = torch.tensor([1.0, 0.3, 2.0], dtype=torch.float64)
    z0 = (mu + std * torch.randn([N, 3], generator=g, dtype=torch.float64))
    eps, n = torch.randn([N, 3], generator=g, dtype=torch.float64), torch.randn([N, 3], generator=g, dtype=torch.float64)
    batch = t2i_loss.prepare(z0, eps, torch.full([N], t), n, acp, t_n)
    assert batch.noisy.all()

    def loss(params):
        pred = params[0] * batch.x_t + params[1]
        return t2i_loss.per_item_loss(pred.double(), batch, prediction_type, weighting).mean()

    # per_item_loss computes in float32; the loss is quadratic in params, so one Newton step from 0 is exact.
    params = torch.zeros([2, 3], dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(loss, params).flatten()
    hess = torch.autograd.functional.hessian(loss, params).reshape(6, 6)
    fitted = params.flatten() - torch.linalg.solve(hess, grad)
    a, b = fitted.reshape(2, 3)
    alpha, sigma = acp[t] ** 0.5, (1 - acp[t]) ** 0.5
    # Clean estimate implied by pred = a x + b: linear in x; compare its coefficients with the posterior's.
    x = torch.stack([torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)])
    x0 = t2i_loss.to_x0(a * x + b, x, alpha, sigma, prediction_type)
    slope, offset = x0[1] - x0[0], x0[0]
    gain = alpha * std ** 2 / (alpha ** 2 * std ** 2 + sigma ** 2)
    torch.testing.assert_close(slope, gain, rtol=0.03, atol=0.01)
    torch.testing.assert_close(offset, mu - gain * alpha * mu, rtol=0.03, atol=0.02)
