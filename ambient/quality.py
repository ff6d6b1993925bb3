"""Offline sample quality: Fréchet distance in the feature space of a small classifier trained on held-out real images.

The classifier is trained by this project, on the images of the source data set that are NOT in the
diffusion model's training subset, and the distance is reported as `FD_<source>` (e.g. `FD_digits`): it is
not FID and is not comparable with published FID numbers. FID and FD_DINOv2 are added where their
detector weights are available locally (or downloads are allowed), otherwise a note says why they were
skipped.
"""

import hashlib
import io
import json
import os
import zipfile

import click
import numpy as np
import PIL.Image
import scipy.linalg
import torch

import dnnlib

CLASSIFIER_VERSION = 1 # Bump when the architecture or training changes, so cached weights are not reused.
DEFAULT_CLASSIFIER = dict(feature_dim=32, epochs=30, batch=64, lr=2e-3, seed=0)

#----------------------------------------------------------------------------
# Images and held-out sets.

def load_images(path, with_labels=False):
    """uint8 NCHW images of a folder or zip (sorted by name, as EDM); with_labels also returns int64 labels or None."""
    from training.dataset import ImageFolderDataset # pylint: disable=import-outside-toplevel
    ds = ImageFolderDataset(os.fspath(path), use_labels=with_labels)
    try:
        images = np.stack([ds[i][0] for i in range(len(ds))])
        if not with_labels:
            return images
        labels = ds._get_raw_labels() if ds.has_labels else None # pylint: disable=protected-access
        if labels is not None and labels.dtype != np.int64:
            raise dnnlib.util.UserError(f'{path}: the quality classifier needs class labels, found label vectors')
        return images, labels
    finally:
        ds.close()


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


def _source_indices(path, count):
    """Source index of every image of a data set, from its dataset.json (default: position in the folder)."""
    meta = read_dataset_json(path)
    indices = meta.get('source_indices')
    if indices is None:
        return np.arange(count, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.shape != (count,):
        raise dnnlib.util.UserError(f'{path}: dataset.json lists {indices.size} source_indices for {count} images')
    return indices


def heldout_split(train_path, full_path):
    """Images and labels of the full data set whose source index is not in the training subset.

    Both sets must come from the same source and conversion (dataset_tool.py with the same resolution):
    the training images are checked to be pixel-identical to the full set's images of the same index.
    """
    full_images, full_labels = load_images(full_path, with_labels=True)
    if full_labels is None:
        raise dnnlib.util.UserError(f'{full_path} has no class labels in dataset.json; the quality classifier needs them')
    train_images = load_images(train_path)
    full_idx = _source_indices(full_path, len(full_images))
    train_idx = _source_indices(train_path, len(train_images))
    if 'source_indices' not in read_dataset_json(train_path):
        raise dnnlib.util.UserError(f'{train_path}: dataset.json has no "source_indices"; make it with dataset_tool.py --subset')
    position = {int(s): i for i, s in enumerate(full_idx)}
    missing = [int(s) for s in train_idx if int(s) not in position]
    if missing:
        raise dnnlib.util.UserError(f'{train_path} uses source image {missing[0]}, which {full_path} does not hold')
    same = full_images[[position[int(s)] for s in train_idx]]
    if same.shape != train_images.shape or not np.array_equal(same, train_images):
        raise dnnlib.util.UserError(f'{train_path} and {full_path} differ on the same source images; '
                                    'convert both with the same dataset_tool.py options')
    keep = ~np.isin(full_idx, train_idx)
    return full_images[keep], full_labels[keep]


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
# The feature network.

class FeatureClassifier(torch.nn.Module):
    """Small CNN: three 3x3 conv layers, global average pool, a feature layer and a linear classifier."""

    def __init__(self, in_channels, num_classes, feature_dim=32):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 32, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1, stride=2), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.feature = torch.nn.Linear(64, feature_dim)
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def features(self, x):
        """Penultimate-layer activations (before the non-linearity) of [-1, 1] float images."""
        return self.feature(self.body(x))

    def forward(self, x):
        return self.head(torch.nn.functional.silu(self.features(x)))


def _to_float(images):
    return torch.as_tensor(np.asarray(images)).to(torch.float32) / 127.5 - 1


def _cache_key(images, labels, config):
    h = hashlib.sha256()
    h.update(json.dumps(dict(config, version=CLASSIFIER_VERSION, shape=list(images.shape)), sort_keys=True).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def _device():
    return torch.device('cuda') if torch.cuda.is_available() else torch.device('cpu')


def _fit(images, labels, num_classes, feature_dim, epochs, batch, lr, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(images.shape[1], num_classes, feature_dim).to(_device())
    x = _to_float(images).to(_device())
    y = torch.as_tensor(labels, dtype=torch.int64, device=_device())
    order_rng = np.random.RandomState(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _epoch in range(epochs):
        perm = torch.as_tensor(order_rng.permutation(len(x)), device=x.device)
        for start in range(0, len(x), batch):
            idx = perm[start : start + batch]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.cpu().eval().requires_grad_(False)


def train_classifier(images, labels, cache_dir=None, verbose=False, **config):
    """The feature classifier for these real images, trained (seeded) or loaded from cache_dir when cached there."""
    config = dict(DEFAULT_CLASSIFIER, **config)
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels) or len(images) < 2:
        raise dnnlib.util.UserError(f'Need labelled uint8 NCHW images to train the quality classifier, got {images.shape}')
    num_classes = int(labels.max()) + 1
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f'fd-classifier-{_cache_key(images, labels, config)}.pt')
        if os.path.isfile(path):
            net = FeatureClassifier(images.shape[1], num_classes, config['feature_dim'])
            net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
            return net.eval().requires_grad_(False)
    if verbose:
        print(f'Training the quality classifier on {len(images)} held-out images...')
    net = _fit(images, labels, num_classes, **config)
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        dnnlib.util.atomic_write_bytes(path, buf.getvalue())
    return net


@torch.no_grad()
def classifier_features(net, images, batch=512):
    """Penultimate-layer features [N, D] (float64 numpy) of uint8 NCHW images."""
    x = _to_float(images)
    return torch.cat([net.features(x[i : i + batch]) for i in range(0, len(x), batch)]).double().numpy()


@torch.no_grad()
def classifier_accuracy(net, images, labels):
    """Fraction of images the classifier labels correctly."""
    pred = torch.cat([net(_to_float(images[i : i + 512])).argmax(1) for i in range(0, len(images), 512)])
    return float((pred.numpy() == np.asarray(labels)).mean())

#----------------------------------------------------------------------------
# Fréchet distance.

def feature_stats(features):
    """Mean and covariance (unbiased) of [N, D] features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise dnnlib.util.UserError(f'Need at least 2 feature vectors for a Fréchet distance, got {features.shape}')
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        # Few samples give singular covariances; a tiny ridge keeps the square root defined.
        eps = 1e-6 * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def classifier_fd(net, images, real_images):
    """Fréchet distance between images and real_images in the classifier's feature space."""
    return frechet_distance(*feature_stats(classifier_features(net, images)),
                            *feature_stats(classifier_features(net, real_images)))

#----------------------------------------------------------------------------
# Optional detector-based metrics.

METRIC_NAMES = {'fid': 'FID', 'fd_dinov2': 'FD_DINOv2'}


def _weights_cached(metric):
    """Whether fid.py's detector for `metric` is on disk already, so that computing it needs no internet."""
    import fid # pylint: disable=import-outside-toplevel
    from training import detectors # pylint: disable=import-outside-toplevel
    name, opts = fid.METRICS[metric]
    if name == 'inception':
        url_md5 = hashlib.md5(detectors.INCEPTION_URL.encode('utf-8')).hexdigest()
        cache = dnnlib.util.make_cache_dir_path('downloads')
        return os.path.isdir(cache) and any(f.startswith(url_md5 + '_') for f in os.listdir(cache))
    hub = torch.hub.get_dir()
    weights = os.path.join(hub, 'checkpoints', f'{opts.get("arch", "dinov2_vitg14")}_pretrain.pth')
    return os.path.isdir(os.path.join(hub, 'facebookresearch_dinov2_main')) and os.path.isfile(weights)


def detector_fds(images, real_images, allow_download=False, device='cpu'):
    """FID and FD_DINOv2 (fid.py's detectors) between images and real_images where possible: ({name: value}, [notes])."""
    import fid # pylint: disable=import-outside-toplevel
    values, notes = {}, []
    for metric, label in METRIC_NAMES.items():
        if not allow_download and not _weights_cached(metric):
            notes.append(f'{label} skipped: its detector weights are not cached on this machine and downloads are off '
                         '(they come from the internet).')
            continue
        try:
            det = fid.load_metric_detector(metric, device=device)
            feats = []
            for x in (images, real_images):
                t = torch.as_tensor(np.asarray(x))
                feats.append(torch.cat([det(t[i : i + 64]).cpu() for i in range(0, len(t), 64)]).double().numpy())
            values[label] = frechet_distance(*feature_stats(feats[0]), *feature_stats(feats[1]))
        except dnnlib.util.UserError as err:
            notes.append(f'{label} skipped: {err.message}')
    return values, notes

#----------------------------------------------------------------------------

def evaluate(images, real_images, real_labels, name, cache_dir=None, detectors=False, allow_download=False):
    """All quality metrics of generated images against held-out real ones, as a JSON-ready dict."""
    net = train_classifier(real_images, real_labels, cache_dir=cache_dir)
    result = {f'FD_{name}': classifier_fd(net, images, real_images), 'num_images': int(len(images)),
              'num_real': int(len(real_images)), 'notes': []}
    if detectors:
        values, notes = detector_fds(images, real_images, allow_download=allow_download)
        result.update(values)
        result['notes'] += notes
    return result


@click.command()
@click.option('--images', help='Generated images (folder or zip)', metavar='PATH', type=str, required=True)
@click.option('--data', help='Training subset (zip with source_indices)', metavar='ZIP', type=str, required=True)
@click.option('--full', help='The whole source data set, same conversion', metavar='ZIP', type=str, required=True)
@click.option('--name', help='Source name for the metric, FD_<name>', metavar='STR', type=str, default='digits', show_default=True)
@click.option('--cache', 'cache_dir', help='Where trained classifiers are cached', metavar='DIR', type=str, default=None)
@click.option('--detectors/--no-detectors', help='Also FID / FD_DINOv2 where their weights are available', default=False, show_default=True)
@click.option('--download', 'allow_download', help='Allow downloading detector weights', is_flag=True)
@click.option('--dest', help='Write the metrics here as JSON (else print)', metavar='JSON', type=str, default=None)
def main(images, data, full, name, cache_dir, detectors, allow_download, dest):
    """Offline quality of generated images: FD in a classifier trained on the held-out real images.

    \b
    python -m ambient.quality --images=out --data=train.zip --full=full.zip --dest=quality.json
    """
    real_images, real_labels = heldout_split(data, full)
    result = evaluate(load_images(images), real_images, real_labels, name, cache_dir=cache_dir,
                      detectors=detectors, allow_download=allow_download)
    text = json.dumps(result, indent=2)
    if dest:
        dnnlib.util.atomic_write_bytes(dest, (text + '\n').encode())
    else:
        print(text)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
