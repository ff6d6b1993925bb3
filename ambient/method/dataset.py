"""Fixed-noise dataset wrapper: each raw image carries one noise draw eps, a pure function of (noise_seed, raw index)."""

import numpy as np
import torch

import dnnlib


def fixed_noise(noise_seed, raw_idx, shape):
    """Standard normal float32 noise of `shape` for raw image raw_idx; touches no global RNG."""
    # SeedSequence hashes the pair into independent streams, so neighbouring indices or seeds do not
    # produce overlapping noise, and every process that asks gets the same bytes.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(noise_seed), int(raw_idx)])))
    return rng.standard_normal(size=tuple(shape), dtype=np.float32)


def check_seed(seed, name):
    """Refuse a seed that is not a non-negative integer, in one line naming the option."""
    if int(seed) != seed or seed < 0:
        raise dnnlib.util.UserError(f'{name} must be a non-negative integer, got {seed}')


class WrappedDataset(torch.utils.data.Dataset):
    """Base of the datasets that wrap a training.dataset.Dataset and add per-item fields for the loss.

    Subclasses return the fields from `extras(idx)`; items are (image, label, extras), the trainer's plugin
    contract (docs/architecture.md). Flat kwargs keep train.py's c.dataset_kwargs.path / use_labels /
    resolution / max_size where EDM has them.
    """

    def __init__(self,
        dataset             = None,     # Inner dataset instance or kwargs dict (with class_name); None: built from the rest.
        inner_class_name    = 'training.dataset.ImageFolderDataset', # Inner class when `dataset` is None.
        **inner_kwargs,                 # The inner dataset's own kwargs (path, use_labels, xflip, max_size, ...).
    ):
        if isinstance(dataset, torch.utils.data.Dataset):
            if inner_kwargs:
                raise TypeError(f'unexpected arguments for an existing dataset: {sorted(inner_kwargs)}')
            self._inner = dataset
        elif dataset is not None:
            self._inner = dnnlib.util.construct_class_by_name(**dict(dataset, **inner_kwargs))
        else:
            self._inner = dnnlib.util.construct_class_by_name(class_name=inner_class_name, **inner_kwargs)

    def extras(self, idx):
        """The per-item fields of item idx (a dict of arrays)."""
        raise NotImplementedError

    def __getitem__(self, idx):
        image, label = self._inner[idx][:2]
        return image, label, self.extras(idx)

    def __getattr__(self, name):
        # Forward the Dataset API (resolution, label_dim, get_label, ...). Private names are not forwarded,
        # which also keeps unpickling in DataLoader workers from recursing before _inner exists.
        if name.startswith('_'):
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self):
        """The wrapped dataset."""
        return self._inner

    def __len__(self):
        return len(self._inner)

    def close(self):
        """Release the inner dataset's files."""
        self._inner.close()


class NoisyCopyDataset(WrappedDataset):
    """Items are (image, label, dict(tn_noise=eps)) with eps fixed per raw image.

    The noisy copy the method trains on is x_tn = x0 + sigma_tn * eps with x0 in [-1, 1]; the loss forms it
    from eps so that it can augment x0 and x_tn with one draw. An x-flipped item carries the flipped eps.
    """

    def __init__(self, dataset=None, sigma_tn=None, noise_seed=0, **kwargs):
        # sigma_tn: noise level of the fixed noisy copy (in [-1, 1] image units); noise_seed: one seed = one noisy copy.
        if sigma_tn is None or not np.isfinite(sigma_tn) or sigma_tn <= 0:
            raise dnnlib.util.UserError(f'sigma_tn must be a positive number, got {sigma_tn}')
        check_seed(noise_seed, 'noise_seed')
        super().__init__(dataset, **kwargs)
        self.sigma_tn = float(sigma_tn)
        self.noise_seed = int(noise_seed)

    def extras(self, idx):
        """dict(tn_noise=eps) of item idx."""
        return dict(tn_noise=self.tn_noise(idx))

    def tn_noise(self, idx):
        """Unit noise eps of item idx (flipped with the image when the item is an x-flipped copy)."""
        details = self._inner.get_details(idx)
        eps = fixed_noise(self.noise_seed, details.raw_idx, self._inner.image_shape)
        return np.ascontiguousarray(eps[:, :, ::-1]) if details.xflip else eps

    def noisy_image(self, idx):
        """x_tn = x0 + sigma_tn * eps of item idx, float32 CHW in the [-1, 1] scale."""
        image = self._inner[idx][0]
        return (image.astype(np.float32) / 127.5 - 1) + self.sigma_tn * self.tn_noise(idx)


