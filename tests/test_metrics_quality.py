"""Tests of ambient/metrics/quality.py: the held-out split, the Fréchet distance and the classifier's FD on real digits."""

import json
import os
import zipfile

import numpy as np
import pytest
import scipy.ndimage

import dnnlib
from ambient.metrics import heldout, quality
from training import dataset, metrics

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def digits():
    """scikit-learn's real 8x8 digits as uint8 N1HW images (0..16 scaled to 0..255) and labels."""
    sklearn_datasets = pytest.importorskip('sklearn.datasets')
    d = sklearn_datasets.load_digits()
    images = np.clip(np.rint(d.images * (255 / 16)), 0, 255).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


@pytest.fixture(scope='module')
def classifier(digits, tmp_path_factory):
    images, labels = digits
    return quality.train_classifier(images, labels, cache_dir=str(tmp_path_factory.mktemp('cache')))

#----------------------------------------------------------------------------

def test_frechet_distance_of_gaussians_matches_closed_form():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(3), rng.randn(3)
    # Commuting (diagonal) covariances: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    fd = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert fd == pytest.approx(np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum(), rel=1e-9)
    assert metrics.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-9)


def test_fd_separates_real_digits_from_degraded_ones(digits, classifier):
    images, labels = digits
    assert quality.classifier_accuracy(classifier, images, labels) > 0.9
    rng = np.random.RandomState(1)
    perm = rng.permutation(len(images))
    half_a, half_b = images[perm[: len(images) // 2]], images[perm[len(images) // 2 :]]
    same = quality.classifier_fd(classifier, half_a, half_b)
    noise = rng.randint(0, 256, size=half_a.shape).astype(np.uint8)
    blurred = np.stack([scipy.ndimage.gaussian_filter(x.astype(np.float64), sigma=(0, 1, 1)) for x in half_a])
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    flat = half_a.reshape(len(half_a), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]).reshape(half_a.shape)
    for name, bad in [('noise', noise), ('blurred', blurred), ('shuffled', shuffled)]:
        fd = quality.classifier_fd(classifier, bad, half_b)
        assert fd > 10 * same, f'{name}: FD {fd:.3f} vs real halves {same:.3f}'


def test_classifier_is_seeded_and_cached(digits, tmp_path):
    images, labels = digits[0][:300], digits[1][:300]
    cfg = dict(epochs=2)
    a = quality.train_classifier(images, labels, cache_dir=str(tmp_path), **cfg)
    cached = os.listdir(tmp_path)
    assert len(cached) == 1 and cached[0].startswith('fd-classifier-')
    b = quality.train_classifier(images, labels, cache_dir=str(tmp_path), **cfg)
    c = quality.train_classifier(images, labels, cache_dir=None, **cfg)
    fa, fb, fc = (quality.classifier_features(n, images[:50]) for n in (a, b, c))
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_allclose(fa, fc, rtol=1e-5, atol=1e-5)
    # Different held-out content means a different classifier file.
    quality.train_classifier(images[:200], labels[:200], cache_dir=str(tmp_path), **cfg)
    assert len(os.listdir(tmp_path)) == 2


def _zip_with_meta(path, images, labels, source_indices=None):
    dataset.write_image_zip(images, labels, path)
    if source_indices is not None:
        with zipfile.ZipFile(path) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        meta = json.loads(entries['dataset.json'])
        meta['source_indices'] = [int(s) for s in source_indices]
        entries['dataset.json'] = json.dumps(meta).encode()
        with zipfile.ZipFile(path, 'w') as z:
            for n, data in entries.items():
                z.writestr(n, data)


def test_heldout_split_excludes_the_training_subset(digits, tmp_path):
    images, labels = digits[0][:40], digits[1][:40]
    full = str(tmp_path / 'full.zip')
    _zip_with_meta(full, images, labels)
    subset = np.array([3, 7, 8, 20, 39])
    train = str(tmp_path / 'train.zip')
    _zip_with_meta(train, images[subset], None, source_indices=subset)
    held, held_labels = heldout.heldout_split(train, full)
    keep = np.setdiff1d(np.arange(40), subset)
    np.testing.assert_array_equal(held, images[keep])
    np.testing.assert_array_equal(held_labels, labels[keep])
    # The written held-out zip reads back identically.
    dest = str(tmp_path / 'heldout.zip')
    dataset.write_image_zip(held, held_labels, dest)
    back, back_labels = heldout.load_labelled(dest)
    np.testing.assert_array_equal(back, held)
    np.testing.assert_array_equal(back_labels, held_labels)


def test_heldout_split_rejects_mismatched_sets(digits, tmp_path):
    images, labels = digits[0][:40], digits[1][:40]
    full = str(tmp_path / 'full.zip')
    _zip_with_meta(full, images, labels)
    no_meta = str(tmp_path / 'plain.zip')
    _zip_with_meta(no_meta, images[:5], None)
    with pytest.raises(dnnlib.util.UserError, match='source_indices'):
        heldout.heldout_split(no_meta, full)
    other = str(tmp_path / 'other.zip')
    _zip_with_meta(other, 255 - images[:5], None, source_indices=range(5))
    with pytest.raises(dnnlib.util.UserError, match='differ'):
        heldout.heldout_split(other, full)
    beyond = str(tmp_path / 'beyond.zip')
    _zip_with_meta(beyond, images[:2], None, source_indices=[0, 99])
    with pytest.raises(dnnlib.util.UserError, match='99'):
        heldout.heldout_split(beyond, full)


def test_detector_metrics_skip_with_a_note_when_weights_are_missing(digits, tmp_path, monkeypatch):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    values, notes = quality.detector_fds(digits[0][:8], digits[0][8:16], allow_download=False)
    assert values == {}
    assert len(notes) == 2 and notes[0].startswith('FID skipped') and notes[1].startswith('FD_DINOv2 skipped')

#----------------------------------------------------------------------------
