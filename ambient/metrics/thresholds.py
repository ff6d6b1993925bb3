"""The paper's per-data-set memorization thresholds (top-1 DINOv2 cosine similarity), chosen by name or inferred.

Shah et al. 2025, Table 1: CIFAR-10 and (tiny) ImageNet 0.9 / 0.925 / 0.95; FFHQ 0.85 / 0.875 / 0.9. 'all' is the
union the project reported before (0.85 ... 0.95), used for data sets the paper did not evaluate (e.g. digits).
"""

import os

import dnnlib

PRESETS = {
    'cifar10': (0.9, 0.925, 0.95),
    'imagenet': (0.9, 0.925, 0.95),
    'ffhq': (0.85, 0.875, 0.9),
    'all': (0.85, 0.875, 0.9, 0.925, 0.95),
}
CHOICES = ('auto',) + tuple(PRESETS)


def infer_preset(name):
    """'cifar10' / 'imagenet' / 'ffhq' from a data set name or path (e.g. datasets/cifar10-32x32-300.zip), else None."""
    if not name:
        return None
    # The file name first, then the folders above it (e.g. downloads/ffhq/images1024x1024), nearest first.
    parts = os.path.normpath(str(name)).lower().split(os.sep)
    for base in reversed(parts[-3:]):
        if 'ffhq' in base:
            return 'ffhq'
        if 'cifar' in base:
            return 'cifar10'
        if 'imagenet' in base or base.startswith('tin-') or base.startswith('tiny'):
            return 'imagenet'
    return None


def resolve(preset=None, names=()):
    """(preset name, thresholds): an explicit preset, else the first name that identifies a data set, else 'all'."""
    preset = preset or 'auto'
    if preset not in CHOICES:
        raise dnnlib.util.UserError(f'--thresholds-preset must be one of {", ".join(CHOICES)}, got {preset!r}')
    if preset == 'auto':
        preset = next((p for p in (infer_preset(n) for n in names) if p), 'all')
    return preset, PRESETS[preset]
