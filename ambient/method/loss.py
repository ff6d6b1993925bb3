"""Ambient Diffusion losses: EDM's VP/VE/EDM losses that see only a fixed noisy copy above sigma_tn."""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import training_stats

# These classes are pickled with their module source and may be re-executed inside NVIDIA's EDM
# checkout, so this module depends on nothing but numpy, torch, torch_utils.persistence and
# torch_utils.training_stats.report (EDM's torch_utils has both, with the same API).

# Statistics reported per batch item, once per loss call, by every rank (each name every call, possibly
# empty, as EDM's training_stats expects): the mean loss of the items in each regime, and the fraction of
# items in the noisy one (sigma >= sigma_tn). Reporting reads the loss but changes no value and no RNG draw.
STAT_BELOW = 'Loss/ambient/below_sigma_tn'
STAT_ABOVE = 'Loss/ambient/above_sigma_tn'
STAT_FRACTION_ABOVE = 'Loss/ambient/fraction_above'

SPLITS = ('edm', 'uniform')
WEIGHTINGS = ('target', 'denoiser')
AUG_ORDERS = ('noisy', 'clean-then-noise')


def check_ambient_options(sigma_tn, split, weighting, aug_order):
    """Raise ValueError for an impossible combination of ambient options."""
    if not np.isfinite(sigma_tn) or sigma_tn < 0:
        raise ValueError(f'sigma_tn must be a finite number >= 0, got {sigma_tn}')
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if weighting not in WEIGHTINGS:
        raise ValueError(f'weighting must be one of {WEIGHTINGS}, got {weighting!r}')
    if aug_order not in AUG_ORDERS:
        raise ValueError(f'aug_order must be one of {AUG_ORDERS}, got {aug_order!r}')
    if split == 'uniform' and sigma_tn == 0:
        raise ValueError("split='uniform' needs sigma_tn > 0: no noise level lies below 0")


def augment_pair(images, noise, augment_pipe, aug_order='noisy'):
    """(clean, noisy, augment_labels): `images` and `images + noise` under one augmentation draw per item.

    aug_order='noisy' augments the noisy image itself, aug(x0 + noise), so the network never sees an
    augmented clean image paired with fresh noise. 'clean-then-noise' is the authors' order,
    aug(x0) + noise, kept only to reproduce their numbers.
    """
    if augment_pipe is None:
        return images, images + noise, None
    if aug_order == 'clean-then-noise':
        clean, augment_labels = augment_pipe(images)
        return clean, clean + noise, augment_labels
    # Stacking along channels gives both tensors the same per-item draw (AugmentPipe treats channels alike).
    both, augment_labels = augment_pipe(torch.cat([images, images + noise], dim=1))
    clean, noisy = both.split(images.shape[1], dim=1)
    return clean, noisy, augment_labels


def x_tn_prediction(D, x, sigma, sigma_tn):
    """Map a clean prediction D at noise sigma >= sigma_tn to the implied prediction of x_tn."""
    # x = x_tn + sqrt(sigma^2 - sigma_tn^2) n, so E[x_tn | x] interpolates between E[x0 | x] and x.
    ratio = sigma_tn ** 2 / sigma ** 2
    return (1 - ratio) * D + ratio * x


class AmbientLossBase:
    """Shared ambient mechanics; subclasses supply EDM's sigma draw, weight and the sigma quantile."""

    def _init_ambient(self, sigma_tn, split, weighting, aug_order):
        check_ambient_options(sigma_tn, split, weighting, aug_order)
        self.sigma_tn = float(sigma_tn)
        self.split = split
        self.weighting = weighting
        self.aug_order = aug_order
        if split == 'uniform' and not 0 < self.p_clean() < 1:
            raise ValueError(f"split='uniform' needs noise levels on both sides of sigma_tn={sigma_tn:g}")

    def p_clean(self):
        """P(sigma < sigma_tn) under the family's sigma distribution."""
        raise NotImplementedError

    def sigma_quantile(self, p, upper):
        """Sigma at probability p (float64 tensor) of the family's distribution; upper: p is P(sigma >= .)."""
        raise NotImplementedError

    def sample_sigma_split(self, n, device):
        """Draw n noise levels [n, 1, 1, 1] and the per-item regime mask (True: noisy, sigma >= sigma_tn)."""
        if self.split == 'edm':
            # One draw, exactly EDM's: the regime follows sigma, so the marginal of sigma is EDM's.
            sigma = self.sample_sigma(n, device)
            noisy = (sigma >= self.sigma_tn) if self.sigma_tn > 0 else torch.zeros_like(sigma, dtype=torch.bool)
            return sigma, noisy
        # Algorithm 1: a fair coin picks the regime, sigma comes from the distribution truncated to it.
        noisy = torch.rand([n, 1, 1, 1], device=device) < 0.5
        # torch.rand returns multiples of 2^-24 including 0; shifting to the midpoints keeps u in the open (0, 1),
        # since u = 0 would put EDM's clean draw at the normal quantile of 0, i.e. sigma = 0 (an infinite weight).
        u = torch.rand([n, 1, 1, 1], device=device).to(torch.float64) + 2 ** -25
        p_clean = self.p_clean()
        # In the noisy regime work with upper-tail probabilities, which keep their precision near 1.
        p = torch.where(noisy, (1 - u) * (1 - p_clean), u * p_clean)
        sigma = torch.where(noisy, self.sigma_quantile(p, upper=True), self.sigma_quantile(p, upper=False))
        return sigma.to(torch.float32), noisy

    def ambient_weight(self, sigma, noisy):
        """Per-item weight: the family's lambda(sigma), times the x_tn-to-D factor with weighting='denoiser'."""
        weight = self.weight(sigma)
        if self.weighting == 'target' or self.sigma_tn == 0:
            return weight
        # The x_tn-prediction error is (1 - sigma_tn^2/sigma^2) times D's error; undo that factor. It diverges
        # at sigma = sigma_tn; the floor keeps a float tie finite (where the error itself is ~0).
        gap = torch.maximum(sigma ** 2 - self.sigma_tn ** 2, torch.finfo(sigma.dtype).eps * sigma ** 2)
        return torch.where(noisy, weight * (sigma ** 2 / gap) ** 2, weight)

    def __call__(self, net, images, labels=None, augment_pipe=None, tn_noise=None):
        """Unreduced per-pixel loss for one batch; tn_noise is each item's fixed unit noise eps."""
        if self.sigma_tn > 0 and tn_noise is None:
            raise ValueError('the ambient loss needs tn_noise: wrap the dataset in ambient.method.dataset.NoisyCopyDataset')
        if tn_noise is not None and tn_noise.shape != images.shape:
            raise ValueError(f'tn_noise has shape {list(tn_noise.shape)}, images {list(images.shape)}')
        # Random draws in EDM's order (sigma, augmentation, diffusion noise): sigma_tn = 0 is EDM exactly.
        sigma, noisy = self.sample_sigma_split(images.shape[0], images.device)
        # The regimes' item indices, taken now: on CUDA nonzero() waits for the device, which has little queued yet.
        regimes = [noisy.flatten().logical_not().nonzero().flatten(), noisy.flatten().nonzero().flatten()]
        if self.sigma_tn == 0:
            y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
            y_tn = y
        else:
            noise = tn_noise.to(images.dtype) * self.sigma_tn
            y, y_tn, augment_labels = augment_pair(images, noise, augment_pipe, self.aug_order)
        n = torch.randn_like(y)
        extra = (sigma ** 2 - self.sigma_tn ** 2).clamp(min=0).sqrt()
        x = torch.where(noisy, y_tn + extra * n, y + n * sigma)
        D = net(x, sigma, labels, augment_labels=augment_labels)
        # One forward pass; per item the target is x0 (clean regime) or x_tn (noisy regime).
        pred = torch.where(noisy, x_tn_prediction(D, x, sigma, self.sigma_tn), D)
        target = torch.where(noisy, y_tn, y)
        loss = self.ambient_weight(sigma, noisy) * ((pred - target) ** 2)
        report_regimes(loss, noisy, regimes)
        return loss


def report_regimes(loss, noisy, regimes):
    """Report each regime's per-item mean loss and the noisy fraction to training_stats (values unchanged)."""
    with torch.no_grad():
        per_item = loss.detach().flatten(1).mean(dim=1)
        training_stats.report(STAT_BELOW, per_item.index_select(0, regimes[0]))
        training_stats.report(STAT_ABOVE, per_item.index_select(0, regimes[1]))
        training_stats.report(STAT_FRACTION_ABOVE, noisy.detach().flatten().to(torch.float32))


@persistence.persistent_class
class AmbientEDMLoss(AmbientLossBase):
    """EDM loss (ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2)/(sigma sigma_data)^2) with ambient noise."""

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, sigma_tn=0.0, split='edm', weighting='target', aug_order='noisy'):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self._init_ambient(sigma_tn, split, weighting, aug_order)

    def sample_sigma(self, n, device):
        """EDM's draw: n noise levels [n, 1, 1, 1] from one torch.randn call."""
        rnd_normal = torch.randn([n, 1, 1, 1], device=device)
        return (rnd_normal * self.P_std + self.P_mean).exp()

    def weight(self, sigma):
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def p_clean(self):
        """P(sigma < sigma_tn) = Phi((ln sigma_tn - P_mean) / P_std)."""
        if self.sigma_tn == 0:
            return 0.0
        z = (np.log(self.sigma_tn) - self.P_mean) / self.P_std
        return float(torch.special.ndtr(torch.tensor(z, dtype=torch.float64)))

    def sigma_quantile(self, p, upper):
        """exp(P_mean + P_std z) with z the normal quantile of p (or of 1 - p when upper)."""
        z = -torch.special.ndtri(p) if upper else torch.special.ndtri(p)
        return (z * self.P_std + self.P_mean).exp()


@persistence.persistent_class
class AmbientVPLoss(AmbientLossBase):
    """VP loss (t uniform in [epsilon_t, 1], weight 1/sigma^2) with ambient noise."""

    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, sigma_tn=0.0, split='edm', weighting='target', aug_order='noisy'):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t
        self._init_ambient(sigma_tn, split, weighting, aug_order)

    def sigma(self, t):
        """Noise level of the VP process at time t."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """Time t at which the VP process reaches noise level sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def sample_sigma(self, n, device):
        """EDM's draw: n noise levels [n, 1, 1, 1] from one torch.rand call."""
        rnd_uniform = torch.rand([n, 1, 1, 1], device=device)
        return self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))

    def weight(self, sigma):
        """lambda(sigma) = 1 / sigma^2."""
        return 1 / sigma ** 2

    def p_clean(self):
        """P(t < t(sigma_tn)) for t uniform in [epsilon_t, 1]."""
        frac = (float(self.sigma_inv(self.sigma_tn)) - self.epsilon_t) / (1 - self.epsilon_t)
        return min(max(frac, 0.0), 1.0)

    def sigma_quantile(self, p, upper):
        """sigma(t) at the p-quantile of t (the upper one when upper)."""
        frac = 1 - p if upper else p
        return self.sigma(self.epsilon_t + frac * (1 - self.epsilon_t))


@persistence.persistent_class
class AmbientVELoss(AmbientLossBase):
    """VE loss (sigma log-uniform in [sigma_min, sigma_max], weight 1/sigma^2) with ambient noise."""

    def __init__(self, sigma_min=0.02, sigma_max=100, sigma_tn=0.0, split='edm', weighting='target', aug_order='noisy'):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._init_ambient(sigma_tn, split, weighting, aug_order)

    def sample_sigma(self, n, device):
        """EDM's draw: n noise levels [n, 1, 1, 1] from one torch.rand call."""
        rnd_uniform = torch.rand([n, 1, 1, 1], device=device)
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)

    def weight(self, sigma):
        """lambda(sigma) = 1 / sigma^2."""
        return 1 / sigma ** 2

    def p_clean(self):
        """P(sigma < sigma_tn) for log-uniform sigma."""
        if self.sigma_tn <= self.sigma_min:
            return 0.0
        frac = np.log(self.sigma_tn / self.sigma_min) / np.log(self.sigma_max / self.sigma_min)
        return float(min(frac, 1.0))

    def sigma_quantile(self, p, upper):
        """sigma_min (sigma_max / sigma_min)^p (with 1 - p when upper)."""
        frac = 1 - p if upper else p
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** frac)
