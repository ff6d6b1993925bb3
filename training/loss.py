"""Denoising score-matching losses of EDM (VP, VE and EDM noise-level schedules and weights)."""

import torch
from torch_utils import persistence

# These classes are pickled with their module source and may be re-executed inside NVIDIA's EDM
# checkout, so this module depends on nothing but torch and torch_utils.persistence.


def denoising_loss(net, images, labels, augment_pipe, sigma, weight):
    """Weighted per-pixel L2 error of `net` denoising (optionally augmented) `images` at noise `sigma`."""
    # Augmenting after sigma is drawn and before the noise is drawn keeps EDM's order of random draws.
    if augment_pipe is not None:
        y, augment_labels = augment_pipe(images)
    else:
        y, augment_labels = images, None
    n = torch.randn_like(y) * sigma
    D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
    return weight * ((D_yn - y) ** 2)


class _DenoisingLoss:
    """Shared __call__: subclasses define sample_sigma(n, device) and weight(sigma)."""

    def __call__(self, net, images, labels=None, augment_pipe=None):
        """Unreduced per-pixel loss for one batch."""
        sigma = self.sample_sigma(images.shape[0], images.device)
        return denoising_loss(net, images, labels, augment_pipe, sigma, self.weight(sigma))


@persistence.persistent_class
class VPLoss(_DenoisingLoss):
    """Variance-preserving loss (Song et al. 2021): t uniform in [epsilon_t, 1], weight 1/sigma^2."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def sigma(self, t):
        """Noise level of the VP process at time t."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sample_sigma(self, n, device):
        """Draw n noise levels, shaped [n, 1, 1, 1], with one torch.rand call."""
        rnd_uniform = torch.rand([n, 1, 1, 1], device=device)
        return self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))

    def weight(self, sigma):
        """Loss weight lambda(sigma) = 1 / sigma^2."""
        return 1 / sigma ** 2


@persistence.persistent_class
class VELoss(_DenoisingLoss):
    """Variance-exploding loss (Song et al. 2021): sigma log-uniform in [sigma_min, sigma_max], weight 1/sigma^2."""

    def __init__(self, sigma_min=0.02, sigma_max=100):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sample_sigma(self, n, device):
        """Draw n noise levels, shaped [n, 1, 1, 1], with one torch.rand call."""
        rnd_uniform = torch.rand([n, 1, 1, 1], device=device)
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)

    def weight(self, sigma):
        """Loss weight lambda(sigma) = 1 / sigma^2."""
        return 1 / sigma ** 2


@persistence.persistent_class
class EDMLoss(_DenoisingLoss):
    """EDM loss (Karras et al. 2022): ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def sample_sigma(self, n, device):
        """Draw n noise levels, shaped [n, 1, 1, 1], with one torch.randn call."""
        rnd_normal = torch.randn([n, 1, 1, 1], device=device)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        """Loss weight lambda(sigma) = 1 / c_out(sigma)^2, which gives the network target unit variance."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
