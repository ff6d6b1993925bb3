"""Source image collections for dataset_tool.py: image folders and zips, the CIFAR-10 tarball, MNIST idx files, digits."""

import gzip
import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import PIL.Image

import dnnlib

UserError = dnnlib.util.UserError

# Errors that mean "this file is not what it claims to be" when decoding sources.
_READ_ERRORS = (OSError, EOFError, SyntaxError, ValueError, TypeError, KeyError, IndexError,
                zipfile.BadZipFile, tarfile.TarError, pickle.UnpicklingError)

#----------------------------------------------------------------------------
# Sources. Each is an EasyDict(description, num_images, labels, load, describe): labels is a
# list (one JSON value per image) or None, load(i) returns image i as uint8 HW or HWC, and
# describe(i) names image i in error messages.

def _is_image_name(name):
    return os.path.splitext(str(name))[1].lower() in PIL.Image.EXTENSION

def _decode_image(f, name):
    """Decode one image file into a uint8 HW or HWC array; palette and bilevel images are expanded."""
    try:
        with PIL.Image.open(f) as img:
            if img.mode == 'P':
                img = img.convert('RGB')
            elif img.mode == '1':
                img = img.convert('L')
            image = np.array(img)
    except PIL.UnidentifiedImageError:
        raise UserError(f'Cannot read image {name}: not a recognised image format') from None
    except _READ_ERRORS as err:
        raise UserError(f'Cannot read image {name}: {err}') from None
    if image.dtype != np.uint8:
        raise UserError(f'Image {name} is not 8-bit ({image.dtype}); convert it to 8-bit RGB or grayscale')
    return image

def _labels_from_json(data, image_names, where):
    """Per-image labels from a parsed dataset.json, or None when it holds none."""
    try:
        entries = data['labels']
        if entries is None:
            return None
        table = {str(name): value for name, value in entries}
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f'Malformed dataset.json in {where}: {err!r}') from None
    if not table:
        return None
    missing = sorted(set(table) - set(image_names))
    if missing:
        raise UserError(f'dataset.json in {where} labels {len(missing)} missing image(s), e.g. {missing[0]}')
    unlabeled = [name for name in image_names if name not in table]
    if unlabeled:
        raise UserError(f'dataset.json in {where} has no label for {len(unlabeled)} image(s), e.g. {unlabeled[0]}')
    return [table[name] for name in image_names]

def _labels_from_folders(image_names):
    """EDM's fallback: class index from the sorted top-level folder names, if there are several."""
    tops = [name.split('/')[0] if '/' in name else '' for name in image_names]
    classes = {top: idx for idx, top in enumerate(sorted(set(tops)))}
    return [classes[top] for top in tops] if len(classes) > 1 else None

def open_image_folder(path):
    """All images below a folder, in EDM's order, labelled by dataset.json or top-level folders."""
    files = [f for f in _sorted_files(path) if _is_image_name(f) and os.path.isfile(f)]
    names = [os.path.relpath(f, path).replace('\\', '/') for f in files]
    if not names:
        raise UserError(f'No images found in {path}')
    labels = None
    meta = os.path.join(path, 'dataset.json')
    if os.path.isfile(meta):
        try:
            with open(meta, 'r') as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise UserError(f'Cannot read {meta}: {err}') from None
        labels = _labels_from_json(data, names, path)
    if labels is None:
        labels = _labels_from_folders(names)

    def load(i):
        with open(files[i], 'rb') as f:
            return _decode_image(f, files[i])
    return dnnlib.EasyDict(description=f'folder:{path}', num_images=len(names), labels=labels, load=load,
                           describe=files.__getitem__)

def _sorted_files(path):
    """Files below path sorted as EDM sorts pathlib paths (by path components)."""
    found = [os.path.join(root, f) for root, _dirs, fnames in os.walk(path) for f in fnames]
    return sorted(found, key=lambda f: os.path.relpath(f, path).split(os.sep))

def open_image_zip(path):
    """All images in a zip, sorted by member name, labelled by its root dataset.json."""
    try:
        with zipfile.ZipFile(path) as z:
            members = z.namelist()
            names = sorted(m for m in members if _is_image_name(m))
            data = json.loads(z.read('dataset.json')) if 'dataset.json' in members else None
    except _READ_ERRORS as err:
        raise UserError(f'Cannot read zip {path}: {err}') from None
    if not names:
        raise UserError(f'No images found in {path}')
    labels = _labels_from_json(data, names, path) if data is not None else None
    handle = {}

    def load(i):
        if 'zip' not in handle:
            handle['zip'] = zipfile.ZipFile(path)
        try:
            with handle['zip'].open(names[i]) as f:
                return _decode_image(io.BytesIO(f.read()), f'{names[i]} in {path}')
        except _READ_ERRORS as err:
            raise UserError(f'Cannot read {names[i]} in {path}: {err}') from None
    return dnnlib.EasyDict(description=f'zip:{path}', num_images=len(names), labels=labels, load=load,
                           describe=lambda i: f'{names[i]} in {path}')

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: builds plain containers and numpy arrays, refuses any other global."""

    _ALLOWED = {(module, name) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                for name in ('_reconstruct', 'scalar')} | {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'unexpected object {module}.{name} in the pickle')
        return super().find_class(module, name)

def open_cifar10(path):
    """CIFAR-10's python tarball: the training batches data_batch_1..5, as EDM reads them."""
    images, labels = [], []
    try:
        with tarfile.open(path, 'r:gz') as tar:
            for batch in range(1, 6):
                with tar.extractfile(tar.getmember(f'cifar-10-batches-py/data_batch_{batch}')) as f:
                    data = _ArrayUnpickler(f, encoding='latin1').load()
                batch_images = np.asarray(data['data'])
                if batch_images.dtype != np.uint8 or batch_images.ndim != 2 or batch_images.shape[1] != 3 * 32 * 32 \
                        or len(data['labels']) != batch_images.shape[0]:
                    raise ValueError(f'data_batch_{batch} is not [N, 3072] uint8 with N labels')
                images.append(batch_images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels += [int(x) for x in data['labels']]
    except _READ_ERRORS as err:
        raise UserError(f'Cannot read CIFAR-10 tarball {path}: {err}') from None
    images = np.concatenate(images)
    if images.shape[0] == 0:
        raise UserError(f'No images found in {path}')
    return _array_source(f'cifar10:{path}', images, labels)

def _array_source(description, images, labels):
    """A source held in memory as one uint8 array."""
    return dnnlib.EasyDict(description=description, num_images=len(images), labels=labels, load=images.__getitem__,
                           describe=lambda i: f'#{i} of {description}')

def _read_idx(path, magic, ndim):
    """Contents of a gzipped MNIST idx file with the given magic number."""
    try:
        with gzip.open(path, 'rb') as f:
            raw = f.read()
    except _READ_ERRORS as err:
        raise UserError(f'Cannot read {path}: {err}') from None
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], 'big') != magic:
        raise UserError(f'{path} is not an MNIST idx file (bad header)')
    shape = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], 'big') for k in range(ndim)]
    if len(raw) != header + int(np.prod(shape)):
        raise UserError(f'{path} is truncated or corrupt: header says {shape}, data has {len(raw) - header} bytes')
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)

def open_mnist(images_gz):
    """MNIST's train-images-idx3-ubyte.gz with its labels file beside it, padded 28->32 as EDM does."""
    labels_gz = os.path.join(os.path.dirname(images_gz), 'train-labels-idx1-ubyte.gz')
    if not os.path.isfile(labels_gz):
        raise UserError(f'MNIST labels not found: {labels_gz}')
    images = _read_idx(images_gz, 2051, 3)
    labels = _read_idx(labels_gz, 2049, 1)
    if len(labels) != len(images):
        raise UserError(f'{images_gz} has {len(images)} images but {labels_gz} has {len(labels)} labels')
    if len(images) == 0:
        raise UserError(f'No images found in {images_gz}')
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)], mode='constant', constant_values=0)
    return _array_source(f'mnist:{images_gz}', images, [int(x) for x in labels])

def open_digits():
    """scikit-learn's bundled 8x8 handwritten digits (1797 real images), 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return _array_source('digits:sklearn.datasets.load_digits', images, [int(x) for x in digits.target])

def open_source(source):
    """Open --source by its form: 'digits', a folder (images or MNIST), a zip, a CIFAR-10 tarball or an MNIST file."""
    if source == 'digits':
        return open_digits()
    if os.path.isdir(source):
        mnist = os.path.join(source, 'train-images-idx3-ubyte.gz')
        return open_mnist(mnist) if os.path.isfile(mnist) else open_image_folder(source)
    if os.path.isfile(source):
        base = os.path.basename(source).lower()
        if base == 'train-images-idx3-ubyte.gz':
            return open_mnist(source)
        if base.endswith('.tar.gz') or base.endswith('.tgz'):
            return open_cifar10(source)
        if base.endswith('.zip'):
            return open_image_zip(source)
        raise UserError(f'Unknown source type: {source} (expected a folder, .zip, cifar-10-python.tar.gz, '
                        'train-images-idx3-ubyte.gz or "digits")')
    raise UserError(f'Missing input file or directory: {source}')

#----------------------------------------------------------------------------
