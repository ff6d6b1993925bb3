"""The paper's Table 2 baselines (persistent classes): the masking baseline and the noisy-only baseline.

- MaskedPrecond + MaskingEDMLoss: Ambient Diffusion with random inpainting (Daras et al., NeurIPS 2023). Every
  training image carries ONE fixed mask A; training erases more pixels (A~ = B A) and regresses the network's
  clean prediction from A~ x_t onto A x0 where A keeps pixels.
- NoisyOnlyEDMLoss: training on noisy data only (Daras et al. 2024, consistent diffusion meets Tweedie):
  ambient score matching on the fixed copy x_tn above sigma_tn, a consistency loss below it.

These classes are pickled with their module source and may be re-executed inside NVIDIA's EDM checkout, so
this module depends on nothing but numpy, torch, torch_utils.persistence and torch_utils.training_stats.report.
"""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import training_stats

STAT_BELOW = 'Loss/ambient/below_sigma_tn'
STAT_ABOVE = 'Loss/ambient/above_sigma_tn'
STAT_FRACTION_ABOVE = 'Loss/ambient/fraction_above'
STAT_MASK_KEPT = 'Loss/masking/kept_fraction'


def _edm_sigma(n, device, P_mean, P_std):
    """EDM's draw: ln sigma ~ N(P_mean, P_std^2), [n, 1, 1, 1], one torch.randn call."""
    return (torch.randn([n, 1, 1, 1], device=device) * P_std + P_mean).exp()


def _edm_weight(sigma, sigma_data):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


#----------------------------------------------------------------------------
# Masking (random inpainting) baseline.

@persistence.persistent_class
class MaskedPrecond(torch.nn.Module):
    """A preconditioner that also takes an inpainting mask: D(mask * x, sigma, mask).

    Wraps an EDM preconditioner built with img_channels + 1 channels (attached as `inner` after
    construction, see ambient.baselines_config.build_masked_precond). The input is mask * x with the mask as
    one extra channel; the inner U-Net sees the 0/1 mask itself (the wrapper undoes the preconditioner's c_in on
    that channel); the first img_channels outputs are the clean prediction, the extra output channel is unused.

    Without a mask (EDM's samplers, generate.py) the prediction is the average over `sample_masks` masks with the
    training corruption's total erasure probability 1 - (1 - mask_p)(1 - mask_delta), drawn from a private
    generator seeded with `sample_mask_seed` (the same masks at every call): sample_masks = 1 is the fixed-mask
    sampler of Daras et al. 2023, more masks approximate their expectation over masks. No global RNG is used.
    """

    safetensors_twin = False  # The .safetensors loader only builds training.networks classes.

    def __init__(self, img_resolution=32, img_channels=3, label_dim=0, mask_p=0.2, mask_delta=0.1,
                 sample_masks=1, sample_mask_seed=0):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.mask_p = float(mask_p)
        self.mask_delta = float(mask_delta)
        self.sample_masks = int(sample_masks)
        self.sample_mask_seed = int(sample_mask_seed)
        self.inner = None

    def attach(self, inner):
        """Set the inner preconditioner (img_channels + 1 channels in and out); returns self."""
        if inner.img_channels != self.img_channels + 1 or inner.img_resolution != self.img_resolution:
            raise ValueError('the inner network must have img_channels + 1 channels and the same resolution')
        self.inner = inner
        return self

    @property
    def sigma_min(self):
        return self.inner.sigma_min

    @property
    def sigma_max(self):
        return self.inner.sigma_max

    @property
    def use_fp16(self):
        return self.inner.use_fp16

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def c_in(self, sigma):
        """The inner preconditioner's input scale (EDM: 1/sqrt(sigma_data^2 + sigma^2); VP: 1/sqrt(1 + sigma^2); VE: 1)."""
        if hasattr(self.inner, 'sigma_data'):
            return 1 / (self.inner.sigma_data ** 2 + sigma ** 2).sqrt()
        if hasattr(self.inner, 'beta_d'):
            return 1 / (sigma ** 2 + 1).sqrt()
        return torch.ones_like(sigma)

    def sampling_erasure(self):
        """Total erasure probability of the training input mask A~ = B A."""
        return 1 - (1 - self.mask_p) * (1 - self.mask_delta)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, mask=None, **model_kwargs):
        if mask is None:
            return self._average_over_masks(x, sigma, class_labels, force_fp32, **model_kwargs)
        x = x.to(torch.float32)
        mask = mask.to(torch.float32).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        sigma_b = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma_b = sigma_b.expand(x.shape[0], 1, 1, 1)
        # The inner preconditioner multiplies every channel by c_in(sigma): dividing the mask channel by it first
        # hands the U-Net the 0/1 mask at every noise level.
        mask_channel = mask / self.c_in(sigma_b)
        out = self.inner(torch.cat([x * mask, mask_channel], dim=1), sigma, class_labels, force_fp32=force_fp32,
                         **model_kwargs)
        return out[:, :self.img_channels]

    def _average_over_masks(self, x, sigma, class_labels, force_fp32, **model_kwargs):
        """Clean prediction without a given mask: the mean over sample_masks fixed random masks."""
        gen = torch.Generator(device='cpu').manual_seed(self.sample_mask_seed)
        keep = 1 - self.sampling_erasure()
        total = None
        for _ in range(max(self.sample_masks, 1)):
            mask = (torch.rand([x.shape[0], 1, x.shape[2], x.shape[3]], generator=gen) < keep).to(x.device)
            D = self.forward(x, sigma, class_labels, force_fp32, mask=mask.to(torch.float32), **model_kwargs)
            total = D if total is None else total + D
        return total / max(self.sample_masks, 1)


@persistence.persistent_class
class MaskingEDMLoss:
    """Ambient Diffusion's masking loss with EDM's sigma distribution and weight.

    mask: each item's fixed mask A [N, 1, H, W] (1 = pixel kept). The clean image is read only as A x0 (the
    first operation); the network gets A~ (x_t) with A~ = B A, B keeping each pixel with probability
    1 - delta, and its prediction is regressed onto A x0 where A keeps pixels: lambda(sigma) A (D - x0)^2.
    """

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, mask_delta=0.1):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.mask_delta = float(mask_delta)

    def __call__(self, net, images, labels=None, augment_pipe=None, mask=None):
        if mask is None:
            raise ValueError('the masking loss needs mask: wrap the dataset in ambient.baselines.config.FixedMaskDataset')
        mask = mask.to(images.dtype)
        y = images * mask  # A x0: every later step sees only this.
        sigma = _edm_sigma(images.shape[0], images.device, self.P_mean, self.P_std)
        augment_labels = None
        if augment_pipe is not None:
            # One draw for the image and its mask (copied to every channel); only exact pixel copies are allowed
            # (ambient.baselines_config restricts the pipe), so the mask stays 0/1.
            both, augment_labels = augment_pipe(torch.cat([y, mask.expand_as(y)], dim=1))
            y, mask = both[:, :y.shape[1]], both[:, y.shape[1]:y.shape[1] + 1].round()
        further = (torch.rand(mask.shape, device=mask.device) >= self.mask_delta).to(mask.dtype)
        mask_tilde = mask * further
        n = torch.randn_like(y)
        D = net(y + n * sigma, sigma, labels, augment_labels=augment_labels, mask=mask_tilde)
        loss = _edm_weight(sigma, self.sigma_data) * mask * ((D - y) ** 2)
        training_stats.report(STAT_MASK_KEPT, mask_tilde.detach().flatten(1).mean(dim=1))
        return loss


#----------------------------------------------------------------------------
# Noisy-only baseline.

@persistence.persistent_class
class NoisyOnlyEDMLoss:
    """Training from the fixed noisy copies x_tn = x0 + sigma_tn eps alone, at every noise level.

    The clean image is read only to form x_tn (the first operation); augmentation acts on x_tn.
    - sigma >= sigma_tn: ambient score matching, as AmbientEDMLoss: the input x_tn + sqrt(sigma^2 - sigma_tn^2) n,
      the prediction (1 - sigma_tn^2/sigma^2) D + sigma_tn^2/sigma^2 x regressed onto x_tn.
    - sigma < sigma_tn: a consistency loss (Daras et al. 2023/2024: E[D(x_sigma, sigma) | x_tn] = D(x_tn, sigma_tn)).
      x_sigma is drawn from one stochastic reverse step of the model from x_tn: the Gaussian posterior
      q(x_sigma | x_tn, x0 = T), T = stopgrad D(x_tn, sigma_tn):
      x_sigma = r x_tn + (1 - r) T + sigma sqrt(1 - r) z with r = sigma^2 / sigma_tn^2.
      Two independent draws x1, x2 give the unbiased estimate (D(x1) - T)(D(x2) - T) of ||E[D(x_sigma)] - T||^2,
      whose gradient is that of the consistency loss (a single draw would add the variance of D and blur it),
      weighted by consistency_weight * lambda(sigma). Per-pixel values of this term can be negative.
    """

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, sigma_tn=0.5, consistency_weight=1.0):
        if not np.isfinite(sigma_tn) or sigma_tn <= 0:
            raise ValueError(f'sigma_tn must be a finite number > 0, got {sigma_tn}')
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.sigma_tn = float(sigma_tn)
        self.consistency_weight = float(consistency_weight)

    def __call__(self, net, images, labels=None, augment_pipe=None, tn_noise=None):
        if tn_noise is None:
            raise ValueError('the noisy-only loss needs tn_noise: wrap the dataset in ambient.method.dataset.NoisyCopyDataset')
        x_tn = images + self.sigma_tn * tn_noise.to(images.dtype)  # The only use of the clean images.
        del images
        N = x_tn.shape[0]
        sigma = _edm_sigma(N, x_tn.device, self.P_mean, self.P_std)
        y_tn, augment_labels = augment_pipe(x_tn) if augment_pipe is not None else (x_tn, None)
        noisy = sigma >= self.sigma_tn
        n, z1, z2 = torch.randn_like(y_tn), torch.randn_like(y_tn), torch.randn_like(y_tn)
        tn = torch.full_like(sigma, self.sigma_tn)
        with torch.no_grad():
            T = net(y_tn, tn, labels, augment_labels=augment_labels).to(torch.float32)
        r = (sigma ** 2 / self.sigma_tn ** 2).clamp(max=1)
        mean_lo = r * y_tn + (1 - r) * T
        spread = sigma * (1 - r).sqrt()
        x_hi = y_tn + (sigma ** 2 - self.sigma_tn ** 2).clamp(min=0).sqrt() * n
        x1 = torch.where(noisy, x_hi, mean_lo + spread * z1)
        x2 = mean_lo + spread * z2
        # One forward pass over both draws (x2 only matters for the items below sigma_tn).
        cat = lambda a: None if a is None else torch.cat([a, a])
        D = net(torch.cat([x1, x2]), torch.cat([sigma, sigma]), cat(labels), augment_labels=cat(augment_labels))
        D1, D2 = D[:N], D[N:]
        ratio = self.sigma_tn ** 2 / sigma ** 2
        pred_tn = (1 - ratio) * D1 + ratio * x1
        weight = _edm_weight(sigma, self.sigma_data)
        loss_hi = weight * (pred_tn - y_tn) ** 2
        loss_lo = self.consistency_weight * weight * (D1 - T) * (D2 - T)
        loss = torch.where(noisy, loss_hi, loss_lo)
        with torch.no_grad():
            per_item = loss.detach().flatten(1).mean(dim=1)
            flat = noisy.flatten()
            training_stats.report(STAT_BELOW, per_item[~flat])
            training_stats.report(STAT_ABOVE, per_item[flat])
            training_stats.report(STAT_FRACTION_ABOVE, flat.to(torch.float32))
        return loss
