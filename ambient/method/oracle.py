"""Closed-form optimal denoisers of a finite training set: EDM's (memorizing) and the ambient one (Lemma 4.1)."""

import numpy as np
import torch

from ambient.method.dataset import fixed_noise


def posterior_mean(x, points, variance, chunk=1024):
    """E[p | x] for p uniform over `points` [N, ...] and x = p + sqrt(variance) n, in float64.

    x: [B, ...] tensor; variance: scalar or [B] (per row). Log-weights -||x - p_i||^2 / (2 variance)
    go through a log-sum-exp, so even tiny variances give a clean one-hot answer.
    """
    flat_x = x.reshape(x.shape[0], -1).to(torch.float64)
    flat_p = points.reshape(points.shape[0], -1).to(device=flat_x.device, dtype=torch.float64)
    variance = torch.as_tensor(variance, dtype=torch.float64, device=flat_x.device).reshape(-1, 1)
    p_sq = flat_p.square().sum(dim=1)
    out = []
    for start in range(0, flat_x.shape[0], chunk):
        xs = flat_x[start:start + chunk]
        var = variance if variance.shape[0] == 1 else variance[start:start + chunk]
        dist = (xs.square().sum(dim=1, keepdim=True) - 2 * xs @ flat_p.T + p_sq).clamp(min=0)
        weights = torch.softmax(-dist / (2 * var), dim=1)
        out.append(weights @ flat_p)
    return torch.cat(out).reshape(x.shape)


class _Oracle:
    """The attributes and calling convention of an EDM preconditioned network (for training.sampler)."""

    sigma_min = 0
    sigma_max = float('inf')
    label_dim = 0

    def __init__(self, images):
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f'training images must be a non-empty [N, C, H, W] batch, got shape {list(images.shape)}')
        self.images = images.to(torch.float64)
        self.img_channels = images.shape[1]
        self.img_resolution = images.shape[2]

    def round_sigma(self, sigma):
        """Noise levels are continuous: returned unchanged, as a tensor."""
        return torch.as_tensor(sigma)

    def _sigma_rows(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma

    def __call__(self, x, sigma, class_labels=None, **kwargs):
        """D(x; sigma) in x's dtype; class_labels and augment_labels are ignored (unconditional)."""
        del class_labels, kwargs
        return self.denoise(x, self._sigma_rows(x, sigma)).to(x.dtype)


class EDMOracle(_Oracle):
    """The minimiser of the EDM loss on a finite set: a softmax-weighted average of the training images."""

    def denoise(self, x, sigma):
        """E[x0 | x] at per-row noise levels sigma [B]."""
        return posterior_mean(x, self.images.to(x.device), sigma ** 2)


class AmbientOracle(_Oracle):
    """The minimiser of the ambient loss: clean optimum below sigma_tn, the S_tn-only optimum above it."""

    def __init__(self, images, noisy_images, sigma_tn):
        super().__init__(images)
        noisy_images = torch.as_tensor(noisy_images)
        if noisy_images.shape != self.images.shape:
            raise ValueError(f'noisy images {list(noisy_images.shape)} do not match clean {list(self.images.shape)}')
        if not np.isfinite(sigma_tn) or sigma_tn <= 0:
            raise ValueError(f'sigma_tn must be positive, got {sigma_tn}')
        self.noisy_images = noisy_images.to(torch.float64)
        self.sigma_tn = float(sigma_tn)

    def noisy_posterior(self, x, sigma):
        """E[x_tn | x] where x = x_tn + sqrt(sigma^2 - sigma_tn^2) n around the noisy points (sigma > sigma_tn)."""
        return posterior_mean(x, self.noisy_images.to(x.device), sigma ** 2 - self.sigma_tn ** 2)

    def denoise(self, x, sigma):
        """Clean optimum for sigma < sigma_tn; (sigma^2 E[x_tn|x] - sigma_tn^2 x) / (sigma^2 - sigma_tn^2) above."""
        x64 = x.to(torch.float64)
        out = torch.empty_like(x64)
        low = sigma < self.sigma_tn
        if low.any():
            out[low] = posterior_mean(x64[low], self.images.to(x.device), sigma[low] ** 2)
        high = ~low
        if high.any():
            s2 = sigma[high].reshape(-1, *[1] * (x.ndim - 1)) ** 2
            # At sigma = sigma_tn exactly the optimum is undefined (the data are points); a NaN says so.
            gap = s2 - self.sigma_tn ** 2
            e_tn = self.noisy_posterior(x64[high], sigma[high])
            out[high] = (s2 * e_tn - self.sigma_tn ** 2 * x64[high]) / torch.where(gap > 0, gap, torch.nan)
        return out


def noisy_copy(images, sigma_tn, noise_seed, raw_indices):
    """x_tn = x0 + sigma_tn * eps with the fixed eps of ambient.dataset (same noise as training)."""
    images = torch.as_tensor(images, dtype=torch.float64)
    eps = np.stack([fixed_noise(noise_seed, i, images.shape[1:]) for i in raw_indices])
    return images + sigma_tn * torch.from_numpy(eps).to(torch.float64)


class ShiftedTime:
    """A denoiser seen in the time s = sqrt(sigma^2 - sigma_tn^2), so EDM's samplers integrate its ODE down to sigma_tn.

    Heun steps in sigma are unstable just above sigma_tn, where the ambient optimum's ODE behaves like
    EDM's near s = 0; in the time s the same ODE is EDM's and the usual rho-spaced steps resolve it. The
    sampler's final state (its D at the smallest s) is then the state at sigma_tn.
    """

    sigma_min = 0

    def __init__(self, net, sigma_tn):
        self.net = net
        self.sigma_tn = float(sigma_tn)
        self.sigma_max = float(np.sqrt(max(net.sigma_max ** 2 - self.sigma_tn ** 2, 0)))
        self.img_channels, self.img_resolution, self.label_dim = net.img_channels, net.img_resolution, net.label_dim

    def round_sigma(self, sigma):
        """Shifted times are continuous: returned unchanged, as a tensor."""
        return torch.as_tensor(sigma)

    def __call__(self, x, s, class_labels=None, **kwargs):
        """The denoiser whose EDM ODE in s, dx/ds = (x - D')/s, equals the net's ODE in sigma."""
        s = torch.as_tensor(s, dtype=torch.float64, device=x.device).reshape(-1, *[1] * (x.ndim - 1))
        sigma_sq = s ** 2 + self.sigma_tn ** 2
        D = self.net(x, sigma_sq.sqrt().reshape(-1), class_labels, **kwargs).to(torch.float64)
        return (x - (s ** 2 / sigma_sq) * (x - D)).to(x.dtype)
