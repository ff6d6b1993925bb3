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

import numpy as np
import torch

import dnnlib
from training import metrics

CLASSIFIER_VERSION = 1 # Bump when the architecture or training changes, so cached weights are not reused.
DEFAULT_CLASSIFIER = dict(feature_dim=32, epochs=30, batch=64, lr=2e-3, seed=0)

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
# Fréchet distance in the classifier's features.

def classifier_fd(net, images, real_images):
    """Fréchet distance between images and real_images in the classifier's feature space."""
    return metrics.frechet_distance(*metrics.feature_stats(classifier_features(net, images)),
                                    *metrics.feature_stats(classifier_features(net, real_images)))

#----------------------------------------------------------------------------
# Optional detector-based metrics.

METRIC_NAMES = {'fid': 'FID', 'fd_dinov2': 'FD_DINOv2'}


def detector_fds(images, real_images, allow_download=False, device='cpu'):
    """FID and FD_DINOv2 (fid.py's detectors) between images and real_images where possible: ({name: value}, [notes])."""
    values, notes = {}, []
    for metric, label in METRIC_NAMES.items():
        if not allow_download and not metrics.metric_weights_cached(metric):
            notes.append(f'{label} skipped: its detector weights are not cached on this machine and downloads are off '
                         '(they come from the internet).')
            continue
        try:
            det = metrics.load_metric_detector(metric, device=device)
            stats = []
            for x in (images, real_images):
                t = torch.as_tensor(np.asarray(x))
                dim = det.feature_dim or int(np.prod(t.shape[1:]))
                stats.append(metrics.stats_from_batches(t.split(64), det, dim, device=device))
            values[label] = metrics.frechet_distance(*stats[0], *stats[1])
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
