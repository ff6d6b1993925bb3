"""train.py hooks for the Table 2 baselines (--loss=masking, --loss=noisy_only), the fixed-mask dataset and the masked network builder."""

import math

import numpy as np

import dnnlib
from ambient.method import augment_policy
from ambient.method.dataset import WrappedDataset, check_seed

EDM_PRECOND = 'training.networks.EDMPrecond'
# Recorded dotted names (older runs' flat names resolve to the same objects: ambient/__init__.py, baselines/__init__.py).
MASK_DATASET = 'ambient.baselines.config.FixedMaskDataset'
NOISY_DATASET = 'ambient.method.dataset.NoisyCopyDataset'
MASKED_NET = 'ambient.baselines.config.build_masked_precond'
AMBIENT_OPTIONS = ('sigma_tn', 'ambient_split', 'noise_seed', 'ambient_aug_order')
MASKING_OPTIONS = ('mask_p', 'mask_delta', 'mask_seed', 'mask_samples')

#----------------------------------------------------------------------------
# The fixed masks.

def fixed_mask(mask_seed, raw_idx, resolution, p):
    """Inpainting mask A [1, H, W] float32 (1 = kept, 0 = erased with probability p) of raw image raw_idx.

    A pure function of (mask_seed, raw_idx) (numpy SeedSequence -> private PCG64), like ambient.method.dataset.fixed_noise:
    the same bytes in every process, epoch, worker and after a resume; one pixel mask shared by the colour channels.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(mask_seed), int(raw_idx), 0x6d61736b])))
    return (rng.random(size=(1, int(resolution), int(resolution))) >= p).astype(np.float32)


class FixedMaskDataset(WrappedDataset):
    """Items are (image, label, dict(mask=A)) with A fixed per raw image.

    The image itself is passed whole (uint8, as the trainer expects); the loss multiplies it by A before anything
    else. An x-flipped item carries the flipped mask.
    """

    def __init__(self, dataset=None, mask_p=None, mask_seed=0, **kwargs):
        if mask_p is None or not np.isfinite(mask_p) or not 0 <= mask_p < 1:
            raise dnnlib.util.UserError(f'mask_p must be a probability in [0, 1), got {mask_p}')
        check_seed(mask_seed, 'mask_seed')
        super().__init__(dataset, **kwargs)
        self.mask_p = float(mask_p)
        self.mask_seed = int(mask_seed)

    def extras(self, idx):
        """dict(mask=A) of item idx."""
        return dict(mask=self.mask(idx))

    def mask(self, idx):
        """Mask A of item idx (flipped with the image for x-flipped items)."""
        details = self._inner.get_details(idx)
        A = fixed_mask(self.mask_seed, details.raw_idx, self._inner.resolution, self.mask_p)
        return np.ascontiguousarray(A[:, :, ::-1]) if details.xflip else A

#----------------------------------------------------------------------------
# The masked network.

def build_masked_precond(img_resolution, img_channels, label_dim=0, mask_p=0.2, mask_delta=0.1, sample_masks=1,
                         sample_mask_seed=0, inner_class_name=EDM_PRECOND, **inner_kwargs):
    """MaskedPrecond around an inner preconditioner with img_channels + 1 inputs (and outputs); EDM's class untouched."""
    from ambient.baselines.loss import MaskedPrecond # pylint: disable=import-outside-toplevel
    inner = dnnlib.util.construct_class_by_name(class_name=inner_class_name, img_resolution=img_resolution,
                                                img_channels=img_channels + 1, label_dim=label_dim, **inner_kwargs)
    net = MaskedPrecond(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, mask_p=mask_p,
                        mask_delta=mask_delta, sample_masks=sample_masks, sample_mask_seed=sample_mask_seed)
    return net.attach(inner)

#----------------------------------------------------------------------------
# train.py hooks.

def _refuse(opts, names, family):
    for name in names:
        if opts.get(name) is not None:
            raise dnnlib.util.UserError(f'--{name} does not apply to --loss={family}')


def _inner_dataset(c):
    return {k: v for k, v in c.dataset_kwargs.items() if k != 'class_name'}, c.dataset_kwargs.class_name


def _loss_params(c):
    return {k: v for k, v in c.loss_kwargs.items() if k != 'class_name'}


def configure_masking(c, opts):
    """--loss=masking --mask_p=P --mask_delta=D [--mask_seed=S] [--mask_samples=K]: returns the run tag."""
    if c.network_kwargs.get('class_name') != EDM_PRECOND:
        raise dnnlib.util.UserError('--loss=masking supports --precond=edm only')
    _refuse(opts, AMBIENT_OPTIONS + ('ambient_augment',), 'masking')
    p = opts.get('mask_p')
    if p is None:
        raise dnnlib.util.UserError('--loss=masking requires --mask_p')
    delta = opts.get('mask_delta')
    delta = 0.1 if delta is None else float(delta)
    for name, value in (('mask_p', p), ('mask_delta', delta)):
        if math.isnan(value) or not 0 <= value < 1:
            raise dnnlib.util.UserError(f'--{name} must be a probability in [0, 1), got {value:g}')
    seed = opts.get('mask_seed')
    seed = 0 if seed is None else int(seed)
    samples = opts.get('mask_samples')
    samples = 1 if samples is None else int(samples)
    if samples < 1:
        raise dnnlib.util.UserError(f'--mask_samples must be >= 1, got {samples}')
    inner_net = {k: v for k, v in c.network_kwargs.items() if k != 'class_name'}
    c.network_kwargs = dnnlib.EasyDict(class_name=MASKED_NET, inner_class_name=EDM_PRECOND, **inner_net, mask_p=float(p),
                                       mask_delta=delta, sample_masks=samples, sample_mask_seed=seed)
    c.loss_kwargs = dnnlib.EasyDict(class_name='ambient.baselines.loss.MaskingEDMLoss', **_loss_params(c), mask_delta=delta)
    inner, inner_class = _inner_dataset(c)
    c.dataset_kwargs = dnnlib.EasyDict(class_name=MASK_DATASET, inner_class_name=inner_class, **inner,
                                       mask_p=float(p), mask_seed=seed)
    # The mask rides through the augmentation pipe with the image: only exact pixel copies keep it 0/1.
    augment_policy.restrict(c, 'safe', blit_only=True)
    return f'masking-p{float(p):g}-d{delta:g}'


def configure_noisy_only(c, opts):
    """--loss=noisy_only --sigma_tn=S [--noise_seed=N] [--ambient_augment=safe|edm]: returns the run tag."""
    if c.network_kwargs.get('class_name') != EDM_PRECOND:
        raise dnnlib.util.UserError('--loss=noisy_only supports --precond=edm only')
    _refuse(opts, MASKING_OPTIONS + ('ambient_split', 'ambient_aug_order'), 'noisy_only')
    sigma_tn = opts.get('sigma_tn')
    if sigma_tn is None:
        raise dnnlib.util.UserError('--loss=noisy_only requires --sigma_tn')
    sigma_tn = float(sigma_tn)
    if math.isnan(sigma_tn) or not 0 < sigma_tn < 80:
        raise dnnlib.util.UserError(f'--sigma_tn must be in (0, 80) for --loss=noisy_only, got {sigma_tn:g}')
    seed = opts.get('noise_seed')
    seed = 0 if seed is None else int(seed)
    c.loss_kwargs = dnnlib.EasyDict(class_name='ambient.baselines.loss.NoisyOnlyEDMLoss', **_loss_params(c), sigma_tn=sigma_tn)
    inner, inner_class = _inner_dataset(c)
    c.dataset_kwargs = dnnlib.EasyDict(class_name=NOISY_DATASET, inner_class_name=inner_class, **inner,
                                       sigma_tn=sigma_tn, noise_seed=seed)
    mode = augment_policy.restrict(c, opts.get('ambient_augment'))
    return f'noisy_only-tn{sigma_tn:g}' + ('-augedm' if mode == 'edm' else '')
