"""The sigma_tn rule: noise whose norm is a multiple of the data's median nearest-neighbour distance.

The fixed noisy copy x_tn = x0 + sigma_tn * eps has a noise norm of about sigma_tn * sqrt(d) (d = C*H*W, images in
[-1, 1]). With m the median distance from a training image to its nearest other training image
(ambient/metrics/distance_scale.py), the rule recommends sigma_tn = RULE['recommended'] * m / sqrt(d), within
[RULE['lo'], RULE['hi']] * m / sqrt(d): noise a little larger than the gap between neighbouring images, so a noisy
copy no longer tells which training image it came from, without drowning the image. Input: the dict of
`distance_scale.measure` (this room only reads it).
"""

import math

import numpy as np

import dnnlib

# Noise norm (sigma_tn * sqrt(d)) as a multiple of the median nearest-neighbour distance, calibrated on our own
# measurements (docs/advise.md): the best sigma_tn was 1.48x on 100 digits (8x8, sigma_tn 0.5) and 1.10x on 100
# CIFAR-10 images at 16x16 (sigma_tn 0.45); 'recommended' is about their geometric mean. The range holds every
# measured frontier point that kept quality within reach: 0.3 on digits (0.89x) to 0.6 on CIFAR (1.46x), and
# digits' 1.0 (2.96x), which stopped copying at a clear quality cost, lies outside it.
RULE = dict(lo=0.75, recommended=1.25, hi=2.5)

PER_IMAGE_RULES = ('nn',)

#----------------------------------------------------------------------------

def round_sig(x, digits=2):
    """x rounded to `digits` significant digits (0 stays 0)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def fmt(x, digits=2):
    """x with `digits` significant digits, trailing zeros kept and no exponent ('0.51', '2.70', '1.0', '1230')."""
    x = round_sig(x, digits)
    if x == 0 or not math.isfinite(x):
        return f'{x:g}'
    return f'{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}'


def _check_scale(scale):
    """The fields of a distance scale that the rule reads, validated: (median_nn, d, N)."""
    if not isinstance(scale, dict):
        raise dnnlib.util.UserError(f'Expected a distance scale dict (distance_scale.measure), got {type(scale).__name__}')
    missing = [k for k in ('median_nn', 'd', 'N') if k not in scale]
    if missing:
        raise dnnlib.util.UserError(f'The distance scale lacks {", ".join(missing)} (compute it with distance_scale.measure)')
    median, d, n = scale['median_nn'], scale['d'], scale['N']
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise dnnlib.util.UserError(f'The dimension d must be a positive integer, got {d!r}')
    if not isinstance(median, (int, float, np.number)) or not math.isfinite(median) or median < 0:
        raise dnnlib.util.UserError(f'The median nearest-neighbour distance must be finite and >= 0, got {median!r}')
    if median == 0:
        raise dnnlib.util.UserError('At least half of the training images have an exact duplicate (median distance to '
                                    'the nearest other image is 0): no noise level can tell them apart; '
                                    'remove the duplicates first')
    return float(median), int(d), int(n)


def recommend(scale):
    """sigma_tn from a distance scale: dict(recommended, range=[lo, hi], median_nn, dim, explanation, ...).

    `recommended` and `range` are rounded to two significant digits (the values to pass to train.py --sigma_tn);
    `unrounded` holds them before rounding, `per_sqrt_d` is median_nn / sqrt(d) and `rule` the constants used.
    """
    median, d, n = _check_scale(scale)
    unit = median / math.sqrt(d)
    exact = {k: c * unit for k, c in RULE.items()}
    rec, lo, hi = (round_sig(exact[k]) for k in ('recommended', 'lo', 'hi'))
    norm = rec * math.sqrt(d)
    explanation = (f'The median distance to the nearest other training image is {fmt(median, 3)} (d={d}, i.e. '
                   f'{fmt(unit)} per sqrt(d)); sigma_tn = {fmt(rec)} gives noisy copies whose noise norm '
                   f'(sigma_tn*sqrt(d) = {fmt(norm, 3)}) is {fmt(norm / median)}x that distance, so a copy no longer '
                   f'tells which training image it came from; the range spans {RULE["lo"]:g}x to {RULE["hi"]:g}x '
                   f'(sigma_tn {fmt(lo)} to {fmt(hi)}).')
    return dict(recommended=rec, range=[lo, hi], median_nn=median, dim=d, num_images=n, per_sqrt_d=unit,
                noise_norm=norm, unrounded=dict(recommended=exact['recommended'], range=[exact['lo'], exact['hi']]),
                rule=dict(RULE), explanation=explanation)


def group_sizes(scale):
    """Size of each image's near-duplicate group (1 for an image in none), int64 [N]."""
    _, _, n = _check_scale(scale)
    sizes = np.ones(n, dtype=np.int64)
    for group in scale.get('near_duplicate_groups') or []:
        members = np.asarray(group, dtype=np.int64)
        if members.size and (members.min() < 0 or members.max() >= n):
            raise dnnlib.util.UserError(f'A near-duplicate group names image {int(members.max())}, but there are only {n} images')
        sizes[members] = len(members)
    return sizes


def per_image(scale, names, rule='nn'):
    """Per-image sigma_tn: {file name: sigma_tn}, names[i] the file name of image i of the scale.

    rule 'nn': sigma_tn_i = RULE['recommended'] * nn_i / sqrt(d) * (1 + log(g_i)), nn_i the image's distance to its
    nearest other image (the median distance for a member of a near-duplicate group, whose nearest image is its own
    copy) and g_i the size of its near-duplicate group (1 when none), clipped to the recommended
    range [lo, hi] of the median (`recommend(scale)['range']`). Values are rounded to 4 significant digits.
    """
    if rule not in PER_IMAGE_RULES:
        raise dnnlib.util.UserError(f'Unknown per-image rule {rule!r}; choose {"|".join(PER_IMAGE_RULES)}')
    _, d, n = _check_scale(scale)
    names = [str(x) for x in names]
    if len(names) != n:
        raise dnnlib.util.UserError(f'Give one file name per image: {len(names)} names for {n} images')
    if len(set(names)) != n:
        raise dnnlib.util.UserError('File names must be unique (the per-image sigma_tn is keyed by them)')
    nearest = np.asarray(scale.get('nearest'), dtype=np.float64)
    if nearest.shape != (n,) or not np.all(np.isfinite(nearest)) or np.any(nearest < 0):
        raise dnnlib.util.UserError(f'The distance scale needs {n} finite non-negative nearest distances, got shape {list(nearest.shape)}')
    lo, hi = recommend(scale)['range']
    sizes = group_sizes(scale)
    # A near-duplicate's nearest image is its own copy: that distance says nothing about how far the group stands
    # from the rest, so a group member starts from the median distance, and the group's size raises it.
    distance = np.where(sizes > 1, float(scale['median_nn']), nearest)
    sigma = RULE['recommended'] * distance / math.sqrt(d) * (1 + np.log(sizes))
    sigma = np.clip(sigma, lo, hi)
    return {name: round_sig(s, 4) for name, s in zip(names, sigma.tolist())}

#----------------------------------------------------------------------------
