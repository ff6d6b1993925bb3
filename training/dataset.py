"""Image datasets read from a folder or zip written by dataset_tool.py (EDM's format and semantics)."""

import io
import json
import os
import zipfile

import numpy as np
import PIL.Image
import torch

import dnnlib

#----------------------------------------------------------------------------

class Dataset(torch.utils.data.Dataset):
    """Base dataset: EDM's seeded max_size subset, x-flip doubling, optional one-hot labels."""

    def __init__(self,
        name,               # Dataset name, e.g. the file name without extension.
        raw_shape,          # Shape of all raw images, NCHW.
        max_size    = None, # Keep at most this many raw images (seeded random subset), before xflip.
        use_labels  = False,# Return the labels? False = zero-length labels.
        xflip       = False,# Append a mirrored copy of every kept image, after max_size.
        random_seed = 0,    # Seed of the max_size subset.
        cache       = False,# Keep decoded images in memory.
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = {}
        self._raw_labels = None
        self._label_shape = None

        raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and raw_idx.size > max_size:
            # The exact draw EDM makes, so that a given max_size/seed selects the same images.
            np.random.RandomState(random_seed % (1 << 31)).shuffle(raw_idx)
            raw_idx = np.sort(raw_idx[:max_size])
        flips = np.zeros(raw_idx.size, dtype=np.uint8)
        if xflip:
            raw_idx = np.tile(raw_idx, 2)
            flips = np.concatenate([flips, np.ones_like(flips)])
        self._raw_idx = raw_idx
        self._xflip = flips

    # Hooks for subclasses.

    def _load_raw_image(self, raw_idx):
        """Decode raw image raw_idx as a uint8 CHW array."""
        raise NotImplementedError

    def _load_raw_labels(self):
        """All raw labels: int64 [N] class indices, float32 [N, D] vectors, or None."""
        raise NotImplementedError

    def _raw_name(self, raw_idx):
        """Human-readable name of raw image raw_idx, for error messages."""
        return f'image {raw_idx}'

    def close(self):
        """Release open files."""

    # Labels.

    def _get_raw_labels(self):
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            if labels.shape[0] != self._raw_shape[0]:
                raise dnnlib.util.UserError(f'{self._name}: {labels.shape[0]} labels for {self._raw_shape[0]} images')
            if labels.dtype == np.int64 and (labels.ndim != 1 or np.any(labels < 0)):
                raise dnnlib.util.UserError(f'{self._name}: class labels must be non-negative integers')
            if labels.dtype not in (np.int64, np.float32):
                raise dnnlib.util.UserError(f'{self._name}: labels must be integers or float vectors')
            self._raw_labels = labels
        return self._raw_labels

    def get_label(self, idx):
        """Label of item idx: float32 one-hot for class labels, the raw vector otherwise."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx):
        """EasyDict(raw_idx, xflip, raw_label) describing item idx."""
        raw_idx = int(self._raw_idx[idx])
        return dnnlib.EasyDict(raw_idx=raw_idx, xflip=bool(self._xflip[idx]),
                               raw_label=self._get_raw_labels()[raw_idx].copy())

    def get_raw_index(self, idx):
        """Index of item idx's image in the source, stable under max_size and xflip."""
        return int(self._raw_idx[idx])

    # Items.

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if list(image.shape) != self.image_shape or image.dtype != np.uint8:
                raise dnnlib.util.UserError(f'{self._raw_name(raw_idx)} is {image.dtype} of shape (CHW) {list(image.shape)}, '
                                            f'but the dataset is uint8 of shape {self.image_shape}; convert it with dataset_tool.py')
            if self._cache:
                self._cached_images[raw_idx] = image
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    # Pickling for DataLoader workers: labels are reloaded on demand.

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # Properties.

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3 and self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            labels = self._get_raw_labels()
            if labels.dtype == np.int64:
                self._label_shape = [int(np.max(labels)) + 1]
            else:
                self._label_shape = list(labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

#----------------------------------------------------------------------------

def _file_ext(fname):
    return os.path.splitext(fname)[1].lower()

class ImageFolderDataset(Dataset):
    """Images found recursively in a folder or zip, labels from its root dataset.json."""

    def __init__(self,
        path,               # Folder or .zip file.
        resolution  = None, # Require this resolution; None = take the images' own.
        use_pyspng  = True, # Accepted so that EDM's dataset_kwargs construct; images are always decoded with Pillow.
        **super_kwargs,     # Arguments of Dataset.
    ):
        del use_pyspng
        self._path = path
        self._zipfile = None
        self._zipfile_pid = None

        if not os.path.exists(path):
            raise dnnlib.util.UserError(f'Dataset not found: {path}')
        if os.path.isdir(path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=path).replace('\\', '/')
                                for root, _dirs, files in os.walk(path) for fname in files}
        elif _file_ext(path) == '.zip':
            self._type = 'zip'
            self._all_fnames = set(self._get_zipfile().namelist())
        else:
            raise dnnlib.util.UserError(f'Dataset must be a folder or a .zip file: {path}')

        PIL.Image.init()
        self._image_fnames = sorted(f for f in self._all_fnames if _file_ext(f) in PIL.Image.EXTENSION)
        if not self._image_fnames:
            raise dnnlib.util.UserError(f'No image files found in {path}')

        name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise dnnlib.util.UserError(f'{path} holds {raw_shape[3]}x{raw_shape[2]} images, not the requested {resolution}x{resolution}')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)
        if self._use_labels:
            self._get_raw_labels() # Report label errors now rather than in a worker.

    def validate(self, decode=False):
        """Check every image up front: zip members' CRCs, then each image's size and channels from its header, or with
        `decode` (the trainer's --cache=1, which decodes every image anyway) the whole decoded image. UserError naming
        the first bad one: raised here, before any output exists, rather than later inside a DataLoader worker."""
        if self._type == 'zip':
            try:
                bad = self._get_zipfile().testzip()
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
                raise dnnlib.util.UserError(f'Cannot read zip {self._path}: {err}') from None
            if bad is not None:
                raise dnnlib.util.UserError(f'{bad} in {self._path} is corrupt (CRC check failed); rebuild the zip')
        for raw_idx in np.unique(self._raw_idx):
            if decode:
                image = self._load_raw_image(raw_idx)
                if list(image.shape) != self.image_shape or image.dtype != np.uint8:
                    raise dnnlib.util.UserError(f'{self._raw_name(raw_idx)} is {image.dtype} of shape (CHW) {list(image.shape)}, '
                                                f'but the first image is uint8 of shape {self.image_shape}; all images must '
                                                'match (convert them with dataset_tool.py --resolution)')
                continue
            try:
                with self._open_file(self._image_fnames[raw_idx]) as f, PIL.Image.open(f) as img:
                    width, height = img.size
                    channels = 1 if img.mode in ('P', '1') else len(img.getbands())
            except PIL.UnidentifiedImageError:
                raise dnnlib.util.UserError(f'Cannot read image {self._raw_name(raw_idx)}: not a recognised image format') from None
            except (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise dnnlib.util.UserError(f'Cannot read image {self._raw_name(raw_idx)}: {err}') from None
            if [channels, height, width] != self.image_shape:
                raise dnnlib.util.UserError(f'{self._raw_name(raw_idx)} is {width}x{height} with {channels} channel(s), but the '
                                            f'first image is {self.image_shape[2]}x{self.image_shape[1]} with {self.image_shape[0]}; '
                                            'all images must match (convert them with dataset_tool.py --resolution)')

    def _get_zipfile(self):
        # One handle per process: a handle inherited through fork shares its file offset.
        if self._zipfile is None or self._zipfile_pid != os.getpid():
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except (zipfile.BadZipFile, OSError) as err:
                raise dnnlib.util.UserError(f'Cannot open zip {self._path}: {err}') from None
            self._zipfile_pid = os.getpid()
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        return self._get_zipfile().open(fname, 'r')

    def _raw_name(self, raw_idx):
        return f'{self._image_fnames[raw_idx]} in {self._path}'

    def get_fname(self, raw_idx):
        """File name (inside the folder or zip) of the image with this raw index."""
        return self._image_fnames[raw_idx]

    def close(self):
        try:
            if self._zipfile is not None and self._zipfile_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None, _zipfile_pid=None)

    def _load_raw_image(self, raw_idx):
        try:
            with self._open_file(self._image_fnames[raw_idx]) as f, PIL.Image.open(f) as img:
                image = np.array(img)
        except PIL.UnidentifiedImageError:
            raise dnnlib.util.UserError(f'Cannot read image {self._raw_name(raw_idx)}: not a recognised image format') from None
        except (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise dnnlib.util.UserError(f'Cannot read image {self._raw_name(raw_idx)}: {err}') from None
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        return image.transpose(2, 0, 1)

    def _load_raw_labels(self):
        if 'dataset.json' not in self._all_fnames:
            return None
        try:
            with self._open_file('dataset.json') as f:
                entries = json.load(f)['labels']
            if entries is None:
                return None
            labels = {str(name): value for name, value in entries}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            raise dnnlib.util.UserError(f'Malformed dataset.json in {self._path}: {err!r}') from None
        missing = sorted(set(labels) - set(self._image_fnames))
        if missing:
            raise dnnlib.util.UserError(f'dataset.json in {self._path} labels {len(missing)} missing image(s), e.g. {missing[0]}')
        unlabeled = [f for f in self._image_fnames if f not in labels]
        if unlabeled:
            raise dnnlib.util.UserError(f'dataset.json in {self._path} has no label for {len(unlabeled)} image(s), e.g. {unlabeled[0]}')
        try:
            labels = np.array([labels[f] for f in self._image_fnames])
        except ValueError as err:
            raise dnnlib.util.UserError(f'Malformed labels in dataset.json in {self._path}: {err}') from None
        if labels.ndim not in (1, 2) or labels.dtype.kind not in 'iuf' or (labels.ndim == 1 and labels.dtype.kind == 'f'):
            raise dnnlib.util.UserError(f'Labels in dataset.json in {self._path} must be class integers or equal-length number lists')
        return labels.astype(np.int64 if labels.ndim == 1 else np.float32)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Whole data sets in memory (evaluation, metrics, held-out splits).

def read_dataset_json(path):
    """The dataset.json dict of a folder or zip ({} when absent)."""
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            name = os.path.join(path, 'dataset.json')
            if not os.path.isfile(name):
                return {}
            with open(name, 'rb') as f:
                return json.load(f)
        with zipfile.ZipFile(path) as z:
            if 'dataset.json' not in z.namelist():
                return {}
            return json.loads(z.read('dataset.json'))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise dnnlib.util.UserError(f'Cannot read dataset.json of {path}: {err}') from None


def load_images(path, max_size=None, use_labels=False):
    """All images of a folder or zip as uint8 NCHW numpy, in dataset order, and an EasyDict describing them.

    The EasyDict holds `names` (file names), `raw_indices` (int64) and `labels` (the raw labels of
    dataset.json, int64 classes or float vectors, or None). max_size keeps EDM's seeded random subset
    (random_seed 0).
    """
    dataset = ImageFolderDataset(os.fspath(path), use_labels=use_labels, xflip=False, max_size=max_size)
    try:
        images = np.stack([dataset[i][0] for i in range(len(dataset))])
        raw = np.asarray([dataset.get_raw_index(i) for i in range(len(dataset))], dtype=np.int64)
        labels = dataset._get_raw_labels()[raw] if use_labels and dataset.has_labels else None # pylint: disable=protected-access
        return images, dnnlib.EasyDict(names=[dataset.get_fname(r) for r in raw], raw_indices=raw, labels=labels)
    finally:
        dataset.close()


def write_image_zip(images, labels, dest):
    """Write uint8 NCHW images (and optional class labels) as an EDM dataset zip, atomically."""
    buf = io.BytesIO()
    names = [f'img{i:08d}.png' for i in range(len(images))]
    with zipfile.ZipFile(buf, 'w', compression=zipfile.ZIP_STORED) as z:
        for name, image in zip(names, images):
            hwc = image.transpose(1, 2, 0)
            png = io.BytesIO()
            PIL.Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(png, format='png', compress_level=0)
            z.writestr(name, png.getvalue())
        meta = dict(labels=None if labels is None else [[n, int(l)] for n, l in zip(names, labels)])
        z.writestr('dataset.json', json.dumps(meta))
    dnnlib.util.atomic_write_bytes(dest, buf.getvalue())

#----------------------------------------------------------------------------
