"""Fixed-noise dataset wrapper: each raw image carries one noise draw eps, a pure function of (noise_seed, raw index),
and optionally its own noise level sigma_tn, read from a file {image file name: sigma_tn}."""

import csv
import hashlib
import io
import json
import os

import numpy as np
import torch

import dnnlib
from ambient.method.loss import PER_IMAGE # sigma_tn of runs whose noise levels come per image, in the loss and here


def fixed_noise(noise_seed, raw_idx, shape):
    """Standard normal float32 noise of `shape` for raw image raw_idx; touches no global RNG."""
    # SeedSequence hashes the pair into independent streams, so neighbouring indices or seeds do not
    # produce overlapping noise, and every process that asks gets the same bytes.
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(noise_seed), int(raw_idx)])))
    return rng.standard_normal(size=tuple(shape), dtype=np.float32)


def _few(names, count=3):
    """'a, b, c' of the first `count` names (sorted), for error messages."""
    names = sorted(names)
    return ', '.join(names[:count]) + (', ...' if len(names) > count else '')


def _parse_json(text, label):
    """{name: value} of a JSON object; duplicate names are refused."""
    def pairs(items):
        seen = {}
        for key, value in items:
            if key in seen:
                raise dnnlib.util.UserError(f'{label} names {key} twice')
            seen[key] = value
        return seen
    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except ValueError as err:
        raise dnnlib.util.UserError(f'{label} is not valid JSON: {err}') from None
    if not isinstance(data, dict):
        raise dnnlib.util.UserError(f'{label} must hold one JSON object {{"file name": sigma_tn, ...}}, not a {type(data).__name__}')
    mapping = {}
    for name, value in data.items():
        # bool is an int to Python, but true/false is no noise level.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise dnnlib.util.UserError(f'{label}: the sigma_tn of {name} is not a number: {json.dumps(value)}')
        mapping[name] = float(value)
    return mapping


def _parse_csv(text, label):
    """{name: value} of a CSV file with the header file,sigma_tn; duplicate names are refused."""
    rows = csv.reader(io.StringIO(text))
    header = [cell.strip() for cell in next(rows, [])]
    if header != ['file', 'sigma_tn']:
        raise dnnlib.util.UserError(f'{label}: a CSV file must start with the header file,sigma_tn, not {",".join(header)}')
    mapping = {}
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue # Blank lines, e.g. a trailing one.
        if len(row) != 2:
            raise dnnlib.util.UserError(f'{label} line {rows.line_num}: expected 2 columns (file,sigma_tn), got {len(row)}')
        name, value = row[0].strip(), row[1].strip()
        try:
            number = float(value)
        except ValueError:
            raise dnnlib.util.UserError(f'{label} line {rows.line_num}: the sigma_tn of {name} is not a number: {value!r}') from None
        if name in mapping:
            raise dnnlib.util.UserError(f'{label} names {name} twice')
        mapping[name] = number
    return mapping


def read_sigma_tn_file(path, what='sigma_tn_per_image'):
    """({image file name: sigma_tn}, sha256 of the file's bytes) of a JSON object or a CSV file with header file,sigma_tn."""
    # Errors are one-line UserErrors starting with `what` (train.py passes its option name). The format follows the
    # extension (.json, .csv), else the content (a JSON object starts with '{').
    label = f'{what}: {path}'
    if not os.path.isfile(path):
        raise dnnlib.util.UserError(f'{what}: no such file: {path}')
    try:
        with open(path, 'rb') as f:
            data = f.read()
        text = data.decode('utf-8-sig') # A spreadsheet's CSV may start with a byte-order mark.
    except (OSError, UnicodeDecodeError) as err:
        raise dnnlib.util.UserError(f'{label}: cannot read it: {err}') from None
    ext = os.path.splitext(path)[1].lower()
    is_json = ext == '.json' or (ext != '.csv' and text.lstrip().startswith('{'))
    mapping = _parse_json(text, label) if is_json else _parse_csv(text, label)
    if not mapping:
        raise dnnlib.util.UserError(f'{label} holds no sigma_tn values')
    # Folder datasets name their files with '/' on every system.
    normalized = {name.replace('\\', '/'): value for name, value in mapping.items()}
    if len(normalized) != len(mapping):
        raise dnnlib.util.UserError(f'{label} names an image twice (once with \\, once with /)')
    return normalized, hashlib.sha256(data).hexdigest()


def check_sigma_tn_values(mapping, what='sigma_tn_per_image', path=''):
    """Raise UserError naming a few images whose sigma_tn is not a finite number > 0."""
    bad = {name: value for name, value in mapping.items() if not (np.isfinite(value) and value > 0)}
    if bad:
        examples = ', '.join(f'{name}={bad[name]:g}' for name in sorted(bad)[:3])
        raise dnnlib.util.UserError(f'{what}: {path}: sigma_tn must be a finite number > 0; {len(bad)} image(s) are not, '
                                    f'e.g. {examples}')


def sigma_tn_record(path, what='sigma_tn_per_image'):
    """(record, {image file name: sigma_tn}) of a per-image file; the record (path, sha256, size/min/median/max) is what runs store."""
    mapping, sha256 = read_sigma_tn_file(path, what)
    check_sigma_tn_values(mapping, what, path)
    values = np.array(list(mapping.values()), dtype=np.float64)
    record = dict(path=str(path), sha256=sha256, size=int(values.size), min=float(values.min()),
                  median=float(np.median(values)), max=float(values.max()))
    return record, mapping


def sigma_tn_by_raw_index(mapping, dataset, what='sigma_tn_per_image', path=''):
    """float64 sigma_tn of each raw image of `dataset` (NaN where unused); UserError when the mapping misses or adds images."""
    # The file names are the dataset's own (get_fname: dataset.json's names in a zip, relative paths in a folder). A
    # max_size subset needs values for its images only; a name must still be an image of the source.
    get_fname = getattr(dataset, 'get_fname', None)
    if get_fname is None:
        raise dnnlib.util.UserError(f'{what} needs a dataset that names its images (get_fname), not {type(dataset).__name__}')
    num_raw = dataset._raw_shape[0] # pylint: disable=protected-access # All images of the source, used or not.
    fnames = [get_fname(raw_idx) for raw_idx in range(num_raw)]
    unknown = set(mapping) - set(fnames)
    if unknown:
        raise dnnlib.util.UserError(f'{what}: {path} names {len(unknown)} image(s) the data set lacks, e.g. {_few(unknown)}')
    by_raw = np.array([mapping.get(name, np.nan) for name in fnames], dtype=np.float64)
    used = np.unique(np.asarray([dataset.get_raw_index(i) for i in range(len(dataset))], dtype=np.int64))
    missing = [fnames[raw_idx] for raw_idx in used if np.isnan(by_raw[raw_idx])]
    if missing:
        raise dnnlib.util.UserError(f'{what}: {path} has no sigma_tn for {len(missing)} image(s) of the data set, '
                                    f'e.g. {_few(missing)}')
    return by_raw


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
    """Items are (image, label, dict(tn_noise=eps)) with eps fixed per raw image; with per-image noise levels,
    (image, label, dict(tn_noise=eps, sigma_tn=s)) with s the image's float64 sigma_tn.

    The noisy copy the method trains on is x_tn = x0 + sigma_tn * eps with x0 in [-1, 1]; the loss forms it
    from eps so that it can augment x0 and x_tn with one draw. An x-flipped item carries the flipped eps (and its
    image's sigma_tn).
    """

    def __init__(self, dataset=None, sigma_tn=None, noise_seed=0, sigma_tn_per_image=None, **kwargs):
        # sigma_tn: noise level of the fixed noisy copy (in [-1, 1] image units); noise_seed: one seed = one noisy copy.
        # sigma_tn_per_image: instead of one sigma_tn, a file {image file name: sigma_tn} (JSON object or CSV
        # file,sigma_tn), as its path or as the record sigma_tn_record() makes (whose sha256, when given, the file must
        # still have); sigma_tn is then None or PER_IMAGE.
        if sigma_tn_per_image is not None:
            if sigma_tn not in (None, PER_IMAGE):
                raise dnnlib.util.UserError(f'give sigma_tn or sigma_tn_per_image, not both (sigma_tn={sigma_tn})')
        elif sigma_tn is None or isinstance(sigma_tn, str) or not np.isfinite(sigma_tn) or sigma_tn <= 0:
            raise dnnlib.util.UserError(f'sigma_tn must be a positive number, got {sigma_tn}')
        check_seed(noise_seed, 'noise_seed')
        super().__init__(dataset, **kwargs)
        self.noise_seed = int(noise_seed)
        self._sigma_tn_by_raw = None
        if sigma_tn_per_image is None:
            self.sigma_tn = float(sigma_tn)
        else:
            self.sigma_tn = PER_IMAGE
            self._sigma_tn_by_raw = self._load_per_image(sigma_tn_per_image)

    def _load_per_image(self, source):
        """float64 sigma_tn of every raw image (NaN for images the dataset does not use), from a path or a record."""
        record = dict(path=source) if isinstance(source, (str, os.PathLike)) else dict(source)
        path = os.fspath(record.get('path', ''))
        mapping, sha256 = read_sigma_tn_file(path)
        if record.get('sha256') not in (None, sha256):
            raise dnnlib.util.UserError(f'sigma_tn_per_image: {path} has changed since the run recorded it '
                                        f'(sha256 {sha256[:12]}..., recorded {record["sha256"][:12]}...)')
        check_sigma_tn_values(mapping, path=path)
        return sigma_tn_by_raw_index(mapping, self._inner, path=path)

    @property
    def per_image(self):
        """Whether each image has its own sigma_tn."""
        return self._sigma_tn_by_raw is not None

    def item_sigma_tn(self, idx):
        """sigma_tn of item idx: its image's value (per-image runs) or the global one."""
        if self._sigma_tn_by_raw is None:
            return self.sigma_tn
        return float(self._sigma_tn_by_raw[self._inner.get_raw_index(idx)])

    def extras(self, idx):
        """dict(tn_noise=eps) of item idx, plus sigma_tn (float64) with per-image noise levels."""
        if self._sigma_tn_by_raw is None:
            return dict(tn_noise=self.tn_noise(idx))
        # float64, so the loss gets the file's value exactly (and rounds it where it uses it, as it does a number).
        return dict(tn_noise=self.tn_noise(idx), sigma_tn=np.float64(self.item_sigma_tn(idx)))

    def tn_noise(self, idx):
        """Unit noise eps of item idx (flipped with the image when the item is an x-flipped copy)."""
        details = self._inner.get_details(idx)
        eps = fixed_noise(self.noise_seed, details.raw_idx, self._inner.image_shape)
        return np.ascontiguousarray(eps[:, :, ::-1]) if details.xflip else eps

    def noisy_image(self, idx):
        """x_tn = x0 + sigma_tn * eps of item idx (its own sigma_tn with per-image levels), float32 CHW in the [-1, 1] scale."""
        image = self._inner[idx][0]
        return (image.astype(np.float32) / 127.5 - 1) + np.float32(self.item_sigma_tn(idx)) * self.tn_noise(idx)


