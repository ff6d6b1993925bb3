"""train.py hook for --loss=ambient: validates the options and rewrites the loss and dataset kwargs."""

import math

import torch

import dnnlib
from ambient.method import augment_policy
from ambient.method.dataset import sigma_tn_by_raw_index, sigma_tn_record
from ambient.method.loss import AUG_ORDERS, PER_IMAGE, SPLITS

# Native loss of each preconditioner (as train.py builds it) -> its ambient twin and the largest sigma the
# preconditioner is meant for (EDM's samplers stop at 80 for EDMPrecond; VE at sigma_max=100; VP at sigma(1)).
# Runs record these dotted names (training_options.json, training states). Runs from before the rooms recorded
# the flat names (ambient.loss...); those resolve to the same classes (ambient/__init__.py), and the resume check
# compares class names by what they resolve to.
_PRECONDS = {
    'training.networks.EDMPrecond': ('ambient.method.loss.AmbientEDMLoss', 80.0),
    'training.networks.VEPrecond': ('ambient.method.loss.AmbientVELoss', 100.0),
    'training.networks.VPPrecond': ('ambient.method.loss.AmbientVPLoss', math.sqrt(math.expm1(0.5 * 19.9 + 0.1))),
}
DATASET_CLASS = 'ambient.method.dataset.NoisyCopyDataset'


def _sigma_max(network_kwargs, default):
    """The preconditioner's sigma_max, honouring explicit VE/EDM sigma_max or VP beta overrides."""
    if network_kwargs.get('class_name') == 'training.networks.VPPrecond':
        beta_d, beta_min = network_kwargs.get('beta_d', 19.9), network_kwargs.get('beta_min', 0.1)
        return math.sqrt(math.expm1(0.5 * beta_d + beta_min))
    return min(float(network_kwargs.get('sigma_max', default)), default)


def _per_image(path, sigma_max):
    """(record, mapping) of --sigma_tn_per_image, every value checked to be finite, > 0 and below sigma_max."""
    record, mapping = sigma_tn_record(path, what='--sigma_tn_per_image')
    too_high = sorted(name for name, value in mapping.items() if value >= sigma_max)
    if too_high:
        examples = ', '.join(f'{name}={mapping[name]:g}' for name in too_high[:3])
        raise dnnlib.util.UserError(f'--sigma_tn_per_image: {path}: sigma_tn must be below the preconditioner\'s '
                                    f'sigma_max={sigma_max:g}; {len(too_high)} image(s) are not, e.g. {examples}')
    return record, mapping


def _check_covers_dataset(mapping, path, inner_class_name, inner_kwargs):
    """Open the data set once, so that a file that misses or adds images fails now, before the run directory exists."""
    dataset = dnnlib.util.construct_class_by_name(class_name=inner_class_name, **inner_kwargs)
    try:
        sigma_tn_by_raw_index(mapping, dataset, what='--sigma_tn_per_image', path=path)
    finally:
        dataset.close()


def configure(c, opts):
    """Turn the default config c into an ambient run (opts: sigma_tn or sigma_tn_per_image, ambient_split, noise_seed,
    ambient_aug_order, ambient_augment); returns the run tag."""
    precond = c.network_kwargs.get('class_name')
    if precond not in _PRECONDS:
        raise dnnlib.util.UserError(f'--loss=ambient supports the edm, ve and vp preconditioners, not {precond}')
    loss_class, default_max = _PRECONDS[precond]
    sigma_max = _sigma_max(c.network_kwargs, default_max)

    for name in ('mask_p', 'mask_delta', 'mask_seed', 'mask_samples'):
        if opts.get(name) is not None:
            raise dnnlib.util.UserError(f'--{name} does not apply to --loss=ambient')
    sigma_tn = opts.get('sigma_tn')
    per_image_path = opts.get('sigma_tn_per_image')
    if sigma_tn is not None and per_image_path is not None:
        raise dnnlib.util.UserError('give --sigma_tn or --sigma_tn_per_image, not both')
    record = mapping = None
    if per_image_path is not None:
        record, mapping = _per_image(per_image_path, sigma_max)
        sigma_tn = PER_IMAGE
    elif sigma_tn is None:
        raise dnnlib.util.UserError('--loss=ambient requires --sigma_tn (or --sigma_tn_per_image)')
    else:
        sigma_tn = float(sigma_tn)
        if math.isnan(sigma_tn) or sigma_tn <= 0:
            raise dnnlib.util.UserError(f'--sigma_tn must be a number > 0, got {sigma_tn:g}')
        if sigma_tn >= sigma_max:
            raise dnnlib.util.UserError(f'--sigma_tn={sigma_tn:g} must be below the preconditioner\'s sigma_max={sigma_max:g}')
    split = opts.get('ambient_split') or 'edm'
    if split not in SPLITS:
        raise dnnlib.util.UserError(f'--ambient_split must be one of {", ".join(SPLITS)}, got {split}')
    aug_order = opts.get('ambient_aug_order') or 'noisy'
    if aug_order not in AUG_ORDERS:
        raise dnnlib.util.UserError(f'--ambient_aug_order must be one of {", ".join(AUG_ORDERS)}, got {aug_order}')
    noise_seed = opts.get('noise_seed')
    noise_seed = 0 if noise_seed is None else noise_seed
    if int(noise_seed) != noise_seed or noise_seed < 0:
        raise dnnlib.util.UserError(f'--noise_seed must be a non-negative integer, got {noise_seed}')

    # Keep the family's own parameters (e.g. P_mean) if train.py set any; only the class changes.
    loss_kwargs = {k: v for k, v in c.loss_kwargs.items() if k != 'class_name'}
    c.loss_kwargs = dnnlib.EasyDict(class_name=loss_class, **loss_kwargs, sigma_tn=sigma_tn, split=split, aug_order=aug_order)
    # The inner kwargs stay flat beside the wrapper's own, so path, use_labels, resolution and max_size keep
    # their EDM places for train.py, generate.py and the resume comparison.
    inner = {k: v for k, v in c.dataset_kwargs.items() if k != 'class_name'}
    c.dataset_kwargs = dnnlib.EasyDict(class_name=DATASET_CLASS, inner_class_name=c.dataset_kwargs.class_name,
                                       **inner, sigma_tn=sigma_tn, noise_seed=int(noise_seed))
    if record is not None:
        # The record (path, sha256 of the content, size/min/median/max of the values) is part of the dataset kwargs, so
        # it lands in training_options.json and every snapshot, and --resume with another file is refused.
        c.dataset_kwargs.sigma_tn_per_image = record
    try:
        # The loss checks what depends on its family (e.g. the uniform split needs mass below sigma_tn).
        loss_fn = dnnlib.util.construct_class_by_name(**c.loss_kwargs)
    except ValueError as err:
        raise dnnlib.util.UserError(f'--loss=ambient: {err}') from None
    if mapping is not None:
        try:
            loss_fn.check_sigma_tn(torch.tensor(sorted(mapping.values()), dtype=torch.float64)) # Each image's value, likewise.
        except ValueError as err:
            raise dnnlib.util.UserError(f'--sigma_tn_per_image: {per_image_path}: {err}') from None
    if record is not None:
        _check_covers_dataset(mapping, per_image_path, c.dataset_kwargs.inner_class_name, inner)
    tag = f'ambient-tn{"per-image" if record is not None else sigma_tn}-{split}'
    if aug_order != 'noisy':
        tag += f'-{aug_order}'
    # Noise-preserving augmentations only, unless --ambient_augment=edm (docs/ambient.md, 'Augmentation without leaks').
    if augment_policy.restrict(c, opts.get('ambient_augment')) == 'edm' and c.get('augment_kwargs') is not None:
        tag += '-augedm'
    return tag
