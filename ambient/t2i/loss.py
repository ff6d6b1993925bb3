"""The ambient loss for discrete variance-preserving schedules (a diffusers scheduler's `alphas_cumprod`).

Notation (paper, Appendix B): x_t = alpha_t z0 + sigma_t n with alpha_t = sqrt(alphas_cumprod[t]) and
sigma_t = sqrt(1 - alphas_cumprod[t]). Every training latent z0 has ONE fixed noisy copy
x_tn = alpha_tn z0 + sigma_tn eps (t_n = `ambient_timestep`, eps a pure function of the image).

- t < t_n: diffusers' usual loss on the clean latent (targets: noise, velocity or z0).
- t >= t_n: the network sees only x_t = (alpha_t / alpha_tn) x_tn + sigma_{t|tn} n, with
  sigma_{t|tn}^2 = sigma_t^2 - alpha_t^2 sigma_tn^2 / alpha_tn^2 (same law as alpha_t z0 + sigma_t n). Its
  prediction is turned into a clean estimate x0_hat, then into the implied E[x_tn | x_t] (Lemma B.1),
  c1 x0_hat + c2 x_t with c1 = alpha_tn sigma_{t|tn}^2 / sigma_t^2 and c2 = alpha_t sigma_tn^2 / (sigma_t^2 alpha_tn),
  which is regressed onto x_tn.

Weighting (per item, like `ambient.loss`'s `weighting`):
- 'x_tn' (default): k_t^2 ||E_hat[x_tn | x_t] - x_tn||^2, where k_t is the factor that turns a clean-estimate
  error into a prediction error (epsilon: alpha_t/sigma_t, v_prediction: 1/sigma_t, sample: 1). The standard
  loss's weight, applied to the x_tn regression; it is 0 at t = t_n, where x_t = x_tn says nothing new.
- 'prediction': ||pred - target||^2 with the Lemma B.2 target (the prediction-space target implied by x_tn).
  Equals the 'x_tn' loss divided by c1^2, so it diverges as t -> t_n; items at t = t_n get weight 0.

Both have the same minimiser, E[pred | x_t] of clean data. With ambient_timestep = 0 the loss is exactly
diffusers' standard one. Only torch is imported here.
"""

import torch

PREDICTION_TYPES = ('epsilon', 'v_prediction', 'sample')
WEIGHTINGS = ('x_tn', 'prediction')


def check_options(prediction_type, ambient_timestep, num_train_timesteps, weighting='x_tn'):
    """Raise ValueError for an unknown prediction type / weighting or t_n outside [0, num_train_timesteps)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f'prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}')
    if weighting not in WEIGHTINGS:
        raise ValueError(f'weighting must be one of {WEIGHTINGS}, got {weighting!r}')
    if int(ambient_timestep) != ambient_timestep or not 0 <= ambient_timestep < num_train_timesteps:
        raise ValueError(f'ambient_timestep must be an integer in [0, {num_train_timesteps - 1}], got {ambient_timestep}')


def alpha_sigma(alphas_cumprod, timesteps, like):
    """(alpha_t, sigma_t) shaped [B, 1, ..., 1] like `like`, computed as diffusers' add_noise does."""
    acp = alphas_cumprod.to(device=like.device, dtype=like.dtype)
    timesteps = timesteps.to(like.device)
    alpha = (acp[timesteps] ** 0.5).flatten()
    sigma = ((1 - acp[timesteps]) ** 0.5).flatten()
    shape = [-1] + [1] * (like.ndim - 1)
    return alpha.reshape(shape), sigma.reshape(shape)


def noisy_copy(latents, tn_noise, alphas_cumprod, ambient_timestep):
    """x_tn = alpha_tn z0 + sigma_tn eps: the fixed noisy copy of each latent."""
    t = torch.full([latents.shape[0]], int(ambient_timestep), dtype=torch.long, device=latents.device)
    alpha_tn, sigma_tn = alpha_sigma(alphas_cumprod, t, latents)
    return alpha_tn * latents + sigma_tn * tn_noise.to(latents)


def standard_target(latents, noise, alpha, sigma, prediction_type):
    """diffusers' regression target: the noise, the velocity alpha n - sigma z0, or z0."""
    if prediction_type == 'epsilon':
        return noise
    if prediction_type == 'v_prediction':
        return alpha * noise - sigma * latents
    return latents


def to_x0(pred, x_t, alpha, sigma, prediction_type):
    """Clean estimate from a model prediction at x_t."""
    if prediction_type == 'epsilon':
        return (x_t - sigma * pred) / alpha
    if prediction_type == 'v_prediction':
        return alpha * x_t - sigma * pred
    return pred


def to_epsilon(pred, x_t, alpha, sigma, prediction_type):
    """Noise estimate from a model prediction at x_t (used by the Wen et al. magnitude)."""
    if prediction_type == 'epsilon':
        return pred
    if prediction_type == 'v_prediction':
        return alpha * pred + sigma * x_t
    return (x_t - alpha * pred) / sigma


def from_x0(x0, x_t, alpha, sigma, prediction_type):
    """The prediction that corresponds to the clean value x0 at x_t (inverse of to_x0)."""
    if prediction_type == 'epsilon':
        return (x_t - alpha * x0) / sigma
    if prediction_type == 'v_prediction':
        return (alpha * x_t - x0) / sigma
    return x0


def error_scale(alpha, sigma, prediction_type):
    """k_t: |prediction error| = k_t |clean-estimate error| at fixed x_t."""
    if prediction_type == 'epsilon':
        return alpha / sigma
    if prediction_type == 'v_prediction':
        return 1 / sigma
    return torch.ones_like(alpha)


class AmbientBatch:
    """The network input of one batch and everything the loss needs to score the prediction."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def prepare(latents, tn_noise, timesteps, noise, alphas_cumprod, ambient_timestep=0):
    """Network inputs x_t for clean latents z0 [B, C, H, W], their fixed unit noise eps, timesteps [B] and noise n.

    Items with t >= t_n (and t_n > 0) are built from x_tn alone. With t_n = 0 x_t is exactly diffusers'
    `scheduler.add_noise(latents, noise, timesteps)`.
    """
    alpha, sigma = alpha_sigma(alphas_cumprod, timesteps, latents)
    x_clean = alpha * latents + sigma * noise
    t_n = int(ambient_timestep)
    if t_n == 0:
        noisy = torch.zeros(alpha.shape, dtype=torch.bool, device=latents.device)
        return AmbientBatch(x_t=x_clean, noisy=noisy, latents=latents, noise=noise, alpha=alpha, sigma=sigma,
                            t_n=0, x_tn=None)
    if tn_noise is None:
        raise ValueError('ambient_timestep > 0 needs tn_noise (the fixed per-image noise)')
    t_tn = torch.full_like(timesteps, t_n)
    alpha_tn, sigma_tn = alpha_sigma(alphas_cumprod, t_tn, latents)
    x_tn = alpha_tn * latents + sigma_tn * tn_noise.to(latents)
    noisy = (timesteps.to(latents.device) >= t_n).reshape(alpha.shape)
    # sigma_{t|tn}^2 = sigma_t^2 - (alpha_t sigma_tn / alpha_tn)^2 >= 0 for t >= t_n (alphas_cumprod decreases).
    sigma_t_tn = (sigma ** 2 - (alpha * sigma_tn / alpha_tn) ** 2).clamp(min=0).sqrt()
    x_noisy = (alpha / alpha_tn) * x_tn + sigma_t_tn * noise
    x_t = torch.where(noisy, x_noisy, x_clean)
    return AmbientBatch(x_t=x_t, noisy=noisy, latents=latents, noise=noise, alpha=alpha, sigma=sigma, t_n=t_n,
                        x_tn=x_tn, alpha_tn=alpha_tn, sigma_tn=sigma_tn, sigma_t_tn=sigma_t_tn)


def lemma_b1_coefficients(batch):
    """(c1, c2) of E[x_tn | x_t] = c1 E[z0 | x_t] + c2 x_t (Lemma B.1), per item."""
    c1 = batch.alpha_tn * batch.sigma_t_tn ** 2 / batch.sigma ** 2
    c2 = batch.alpha * batch.sigma_tn ** 2 / (batch.sigma ** 2 * batch.alpha_tn)
    return c1, c2


def lemma_b2_target(batch, prediction_type):
    """The prediction-space target implied by x_tn (Lemma B.2 for v_prediction); NaN/inf where t = t_n."""
    c1, c2 = lemma_b1_coefficients(batch)
    x0_target = (batch.x_tn - c2 * batch.x_t) / c1
    return from_x0(x0_target, batch.x_t, batch.alpha, batch.sigma, prediction_type)


def per_item_loss(pred, batch, prediction_type, weighting='x_tn'):
    """Per-item mean squared error [B]: the standard loss for clean items, the ambient one for noisy items.

    Computed in float32 (like diffusers' `F.mse_loss(pred.float(), target.float())`); the batch mean of the
    result with t_n = 0 is exactly that loss.
    """
    pred = pred.float()
    alpha, sigma = batch.alpha.float(), batch.sigma.float()
    target = standard_target(batch.latents.float(), batch.noise.float(), alpha, sigma, prediction_type)
    sq = (pred - target) ** 2
    if batch.t_n > 0:
        x_t = batch.x_t.float()
        c1, c2 = lemma_b1_coefficients(AmbientBatch(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in batch.__dict__.items()}))
        x_tn_hat = c1 * to_x0(pred, x_t, alpha, sigma, prediction_type) + c2 * x_t
        scale = error_scale(alpha, sigma, prediction_type)
        if weighting == 'prediction':
            # (k_t / c1)^2 ||x_tn_hat - x_tn||^2 = ||pred - Lemma B.2 target||^2; zero weight where c1 = 0 (t = t_n).
            safe = torch.where(c1 > 0, c1, torch.ones_like(c1))
            scale = torch.where(c1 > 0, scale / safe, torch.zeros_like(scale))
        sq_noisy = (scale * (x_tn_hat - batch.x_tn.float())) ** 2
        sq = torch.where(batch.noisy, sq_noisy, sq)
    return sq.flatten(1).mean(dim=1)


def ambient_loss(pred, batch, prediction_type, weighting='x_tn', keep=None):
    """Scalar loss: the mean of per_item_loss over the kept items (`keep` a bool [B] mask; None keeps all)."""
    per_item = per_item_loss(pred, batch, prediction_type, weighting)
    if keep is None:
        return per_item.mean()
    keep = keep.to(per_item.device)
    # Mean over the kept items; with none kept the loss is 0 but stays attached to the graph (DDP needs a backward).
    return (per_item * keep).sum() / keep.sum().clamp(min=1)
