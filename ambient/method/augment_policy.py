"""Ambient-safe augmentation: keep only augmentations that leave the fixed copy's white noise white.

EDM's default `--augment` pipe (xflip, yflip, scale, rotate_frac, aniso, translate_frac) resamples about 40% of the
items through wavelet up/down-sampling and bilinear interpolation, which low-passes the fixed noise riding on x_tn
(median variance about 0.63 sigma_tn^2, correlated neighbours): the ambient target is then biased on those items.
`restrict(c, mode)` rewrites train.py's augment_kwargs for the runs that train on fixed noisy copies:

- 'safe' (default): the resampling ops (scale, rotate_frac, aniso, translate_frac) and the colour ops that rescale
  the noise (contrast, saturation) are switched off; fractional translation is replaced by integer translation
  (translate_int, same maximum shift as EDM's translate_frac_std); flips, quarter turns, brightness, lumaflip and
  hue stay. The network's augment_dim follows the new label count.
- 'edm': EDM's pipe unchanged (biased, for comparison with the authors' runs).
"""

import dnnlib

MODES = ('safe', 'edm')
RESAMPLING = ('scale', 'rotate_frac', 'aniso', 'translate_frac')
NOISE_SCALING = ('contrast', 'saturation')
BLIT_ONLY_DROP = ('brightness', 'lumaflip', 'hue')  # colour ops: fine for noise, wrong for a 0/1 mask


def label_dim(augment_kwargs):
    """Number of augmentation labels the pipe produces (the network's augment_dim)."""
    import torch # pylint: disable=import-outside-toplevel
    pipe = dnnlib.util.construct_class_by_name(**augment_kwargs)
    with torch.random.fork_rng():
        return int(pipe(torch.zeros([1, 3, 8, 8]))[1].shape[1])


def restrict(c, mode='safe', blit_only=False):
    """Rewrite c.augment_kwargs (if any) and c.network_kwargs.augment_dim for `mode`; returns the mode used.

    blit_only also drops the colour ops (for the masking baseline, whose mask rides through the same pipe).
    """
    mode = mode or 'safe'
    if mode not in MODES:
        raise dnnlib.util.UserError(f'--ambient_augment must be one of {", ".join(MODES)}, got {mode}')
    kwargs = c.get('augment_kwargs')
    if kwargs is None or mode == 'edm':
        return mode
    kwargs = dnnlib.EasyDict(kwargs)
    if any(float(kwargs.get(op, 0)) > 0 for op in ('translate_frac',)):
        kwargs.translate_int = max(float(kwargs.get('translate_int', 0)), float(kwargs.translate_frac))
        kwargs.translate_int_max = float(kwargs.get('translate_frac_std', 0.125))
    for op in RESAMPLING + NOISE_SCALING + (BLIT_ONLY_DROP if blit_only else ()):
        kwargs.pop(op, None)
    c.augment_kwargs = kwargs
    if c.network_kwargs.get('augment_dim'):
        c.network_kwargs.augment_dim = label_dim(kwargs)
    return mode
