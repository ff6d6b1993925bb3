"""Ambient Diffusion losses: EDM's VP/VE/EDM losses that see only a fixed noisy copy above sigma_tn.

sigma_tn is one number for all images, or PER_IMAGE: then each call passes every item's own sigma_tn (the dataset's
per-item field), and everything that depends on sigma_tn (the split, the noisy input, the x_tn mapping, the weight)
uses the item's value."""

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
PER_IMAGE = 'per_image'  # sigma_tn value of a loss whose noise levels come per item, with each call


def check_ambient_options(sigma_tn, split, weighting, aug_order):
    """Raise ValueError for an impossible combination of ambient options."""
    if not isinstance(sigma_tn, str) or sigma_tn != PER_IMAGE:
        try:
            value = None if isinstance(sigma_tn, str) else float(sigma_tn)
        except (TypeError, ValueError):
            value = None
        if value is None or not np.isfinite(value) or value < 0:
            raise ValueError(f'sigma_tn must be a finite number >= 0 or {PER_IMAGE!r}, got {sigma_tn!r}')
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


def squared(sigma_tn, dtype):
    """sigma_tn^2 for arithmetic with `dtype` tensors: a number as is, a (float64) tensor squared in float64, then cast."""
    # Python squares a number in double precision and torch rounds the result once to the tensor's dtype; squaring
    # the float64 per-item values before the cast rounds the same way, so a per-item value gives the same bits as
    # that number would.
    if isinstance(sigma_tn, torch.Tensor):
        return (sigma_tn.to(torch.float64) ** 2).to(dtype)
    return sigma_tn ** 2


def x_tn_prediction(D, x, sigma, sigma_tn):
    """Map a clean prediction D at noise sigma >= sigma_tn (a number or per-item tensor) to the implied x_tn prediction."""
    # x = x_tn + sqrt(sigma^2 - sigma_tn^2) n, so E[x_tn | x] interpolates between E[x0 | x] and x.
    # reciprocal() * sigma_tn^2 is how torch evaluates number / tensor, so numbers and tensors round alike.
    ratio = (sigma ** 2).reciprocal() * squared(sigma_tn, sigma.dtype)
    return (1 - ratio) * D + ratio * x


class AmbientLossBase:
    """Shared ambient mechanics; subclasses supply EDM's sigma draw, weight and the sigma quantile."""

    def _init_ambient(self, sigma_tn, split, weighting, aug_order):
        check_ambient_options(sigma_tn, split, weighting, aug_order)
        self.per_image = sigma_tn == PER_IMAGE
        self.sigma_tn = PER_IMAGE if self.per_image else float(sigma_tn)
        self.split = split
        self.weighting = weighting
        self.aug_order = aug_order
        # Per-image values are checked where they are known (check_sigma_tn; ambient.method.config does it for train.py).
        if split == 'uniform' and not self.per_image:
            self.check_sigma_tn(torch.tensor([self.sigma_tn], dtype=torch.float64))

    def check_sigma_tn(self, sigma_tn):
        """Raise ValueError unless every value is finite and > 0 and, with split='uniform', has noise levels on both sides."""
        sigma_tn = torch.as_tensor(sigma_tn, dtype=torch.float64).flatten()
        bad = ~(torch.isfinite(sigma_tn) & (sigma_tn > 0)) if self.per_image else torch.zeros_like(sigma_tn, dtype=torch.bool)
        if bad.any():
            raise ValueError(f'per-item sigma_tn must be finite numbers > 0, got {float(sigma_tn[bad][0]):g}')
        if self.split == 'uniform':
            p = self.p_clean(sigma_tn)
            bad = ~((p > 0) & (p < 1))
            if bad.any():
                raise ValueError(f"split='uniform' needs noise levels on both sides of sigma_tn={float(sigma_tn[bad][0]):g}")

    def p_clean(self, sigma_tn=None):
        """P(sigma < sigma_tn) under the family's sigma distribution, a float64 tensor like sigma_tn (default: the global one)."""
        raise NotImplementedError

    def _p_clean_arg(self, sigma_tn):
        """sigma_tn as a float64 tensor (None: the global value)."""
        return torch.as_tensor(self.sigma_tn if sigma_tn is None else sigma_tn, dtype=torch.float64)

    def sigma_quantile(self, p, upper):
        """Sigma at probability p (float64 tensor) of the family's distribution; upper: p is P(sigma >= .)."""
        raise NotImplementedError

    def item_sigma_tn(self, n, device, sigma_tn=None):
        """Each item's sigma_tn as float64 [n, 1, 1, 1]: the per-item values of a PER_IMAGE loss, else the global number."""
        if not self.per_image:
            if sigma_tn is not None:
                raise ValueError(f'this loss has sigma_tn={self.sigma_tn:g} for every item; per-item sigma_tn needs '
                                 f'sigma_tn={PER_IMAGE!r}')
            # The global number goes through the per-item arithmetic too: one path, so a file mapping every image
            # to it trains bit for bit like it.
            return torch.full([n, 1, 1, 1], self.sigma_tn, dtype=torch.float64, device=device)
        if sigma_tn is None:
            raise ValueError(f'a loss with sigma_tn={PER_IMAGE!r} needs each item\'s sigma_tn: build the dataset '
                             'with ambient.method.dataset.NoisyCopyDataset(sigma_tn_per_image=...)')
        sigma_tn = torch.as_tensor(sigma_tn, device=device)
        if sigma_tn.numel() != n:
            raise ValueError(f'sigma_tn has {sigma_tn.numel()} values for {n} items')
        # float64 keeps the file's values exactly; each use rounds them to its tensors' dtype.
        return sigma_tn.to(torch.float64).reshape([n, 1, 1, 1])

    def sample_sigma_split(self, n, device, sigma_tn=None):
        """Draw n noise levels [n, 1, 1, 1] and the regime mask (True: noisy, sigma >= the item's sigma_tn, float64 [n, 1, 1, 1])."""
        if sigma_tn is None:
            sigma_tn = None if self.sigma_tn == 0 else self.item_sigma_tn(n, device)
        if self.split == 'edm':
            # One draw, exactly EDM's: the regime follows sigma, so the marginal of sigma is EDM's.
            sigma = self.sample_sigma(n, device)
            # Compared in sigma's dtype, as torch compares a tensor with a number.
            noisy = (sigma >= sigma_tn.to(sigma.dtype)) if sigma_tn is not None else torch.zeros_like(sigma, dtype=torch.bool)
            return sigma, noisy
        # Algorithm 1: a fair coin picks the regime, sigma comes from the distribution truncated to it, here to the
        # item's own side of its own sigma_tn.
        noisy = torch.rand([n, 1, 1, 1], device=device) < 0.5
        # torch.rand returns multiples of 2^-24 including 0; shifting to the midpoints keeps u in the open (0, 1),
        # since u = 0 would put EDM's clean draw at the normal quantile of 0, i.e. sigma = 0 (an infinite weight).
        u = torch.rand([n, 1, 1, 1], device=device).to(torch.float64) + 2 ** -25
        p_clean = self.p_clean(sigma_tn)
        # In the noisy regime work with upper-tail probabilities, which keep their precision near 1.
        p = torch.where(noisy, (1 - u) * (1 - p_clean), u * p_clean)
        sigma = torch.where(noisy, self.sigma_quantile(p, upper=True), self.sigma_quantile(p, upper=False))
        return sigma.to(torch.float32), noisy

    def ambient_weight(self, sigma, noisy, sigma_tn=None):
        """Per-item weight: the family's lambda(sigma), times the x_tn-to-D factor with weighting='denoiser'."""
        weight = self.weight(sigma)
        if self.weighting == 'target' or self.sigma_tn == 0:
            return weight
        if sigma_tn is None:
            sigma_tn = self.item_sigma_tn(sigma.shape[0], sigma.device)
        # The x_tn-prediction error is (1 - sigma_tn^2/sigma^2) times D's error; undo that factor. It diverges
        # at sigma = sigma_tn; the floor keeps a float tie finite (where the error itself is ~0).
        gap = torch.maximum(sigma ** 2 - squared(sigma_tn, sigma.dtype), torch.finfo(sigma.dtype).eps * sigma ** 2)
        return torch.where(noisy, weight * (sigma ** 2 / gap) ** 2, weight)

    def __call__(self, net, images, labels=None, augment_pipe=None, tn_noise=None, sigma_tn=None):
        """Unreduced per-pixel loss for one batch; tn_noise, sigma_tn: each item's fixed unit noise eps and (PER_IMAGE) noise level."""
        if self.sigma_tn != 0 and tn_noise is None:
            raise ValueError('the ambient loss needs tn_noise: wrap the dataset in ambient.method.dataset.NoisyCopyDataset')
        if tn_noise is not None and tn_noise.shape != images.shape:
            raise ValueError(f'tn_noise has shape {list(tn_noise.shape)}, images {list(images.shape)}')
        if self.sigma_tn == 0 and sigma_tn is not None:
            raise ValueError(f'this loss has sigma_tn=0 for every item; per-item sigma_tn needs sigma_tn={PER_IMAGE!r}')
        tn = None if self.sigma_tn == 0 else self.item_sigma_tn(images.shape[0], images.device, sigma_tn)
        # Random draws in EDM's order (sigma, augmentation, diffusion noise): sigma_tn = 0 is EDM exactly.
        sigma, noisy = self.sample_sigma_split(images.shape[0], images.device, tn)
        # The regimes' item indices, taken now: on CUDA nonzero() waits for the device, which has little queued yet.
        regimes = [noisy.flatten().logical_not().nonzero().flatten(), noisy.flatten().nonzero().flatten()]
        if tn is None:
            y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
            y_tn = y
        else:
            noise = tn_noise.to(images.dtype) * tn.to(images.dtype)
            y, y_tn, augment_labels = augment_pair(images, noise, augment_pipe, self.aug_order)
        n = torch.randn_like(y)
        if tn is None:
            x = y + n * sigma
        else:
            extra = (sigma ** 2 - squared(tn, sigma.dtype)).clamp(min=0).sqrt()
            x = torch.where(noisy, y_tn + extra * n, y + n * sigma)
        D = net(x, sigma, labels, augment_labels=augment_labels)
        # One forward pass; per item the target is x0 (clean regime) or x_tn (noisy regime).
        pred = D if tn is None else torch.where(noisy, x_tn_prediction(D, x, sigma, tn), D)
        target = torch.where(noisy, y_tn, y)
        loss = self.ambient_weight(sigma, noisy, tn) * ((pred - target) ** 2)
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

    def p_clean(self, sigma_tn=None):
        """P(sigma < sigma_tn) = Phi((ln sigma_tn - P_mean) / P_std), float64 (sigma_tn = 0 gives 0)."""
        z = (self._p_clean_arg(sigma_tn).log() - self.P_mean) / self.P_std
        return torch.special.ndtr(z)

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

    def p_clean(self, sigma_tn=None):
        """P(t < t(sigma_tn)) for t uniform in [epsilon_t, 1], float64."""
        frac = (self.sigma_inv(self._p_clean_arg(sigma_tn)) - self.epsilon_t) / (1 - self.epsilon_t)
        return frac.clamp(0.0, 1.0)

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

    def p_clean(self, sigma_tn=None):
        """P(sigma < sigma_tn) for log-uniform sigma, float64."""
        sigma_tn = self._p_clean_arg(sigma_tn)
        frac = (sigma_tn / self.sigma_min).log() / np.log(self.sigma_max / self.sigma_min)
        return torch.where(sigma_tn <= self.sigma_min, 0.0, frac.clamp(max=1.0))

    def sigma_quantile(self, p, upper):
        """sigma_min (sigma_max / sigma_min)^p (with 1 - p when upper)."""
        frac = 1 - p if upper else p
        return self.sigma_min * ((self.sigma_max / self.sigma_min) ** frac)
