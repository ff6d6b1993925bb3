"""Tests for ambient.memorization: copies are flagged, held-out real images are not, caching and CLI errors."""

import csv
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dnnlib
from ambient import memorization as memorization_cli
from ambient.metrics import memorization, memorization_report
from training.detectors import load_detector

NUM_TRAIN, NUM_HELDOUT, NUM_COPIES = 150, 60, 12


def _digits():
    """Distinct sklearn digits as uint8 [N, 16, 16] (8x8 upscaled, 17 grey levels spread to 0..255)."""
    from sklearn.datasets import load_digits
    raw = (load_digits().images * (255 / 16)).round().astype(np.uint8)
    _, first = np.unique(raw.reshape(len(raw), -1), axis=0, return_index=True)
    raw = raw[np.sort(first)]
    return raw.repeat(2, axis=1).repeat(2, axis=2)


def _write_zip(path, images):
    with zipfile.ZipFile(path, 'w') as z:
        for i, img in enumerate(images):
            buf = _png(img)
            z.writestr(f'{i // 1000:05d}/img{i:08d}.png', buf)
    return str(path)


def _png(img):
    import io
    buf = io.BytesIO()
    PIL.Image.fromarray(img).save(buf, format='png')
    return buf.getvalue()


def _write_dir(path, images):
    os.makedirs(path, exist_ok=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img).save(os.path.join(path, f'{i:06d}.png'))
    return str(path)


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """A training zip, exact copies of some training images, and held-out real digits never trained on."""
    root = tmp_path_factory.mktemp('digits')
    images = _digits()
    train = images[:NUM_TRAIN]
    heldout = images[NUM_TRAIN : NUM_TRAIN + NUM_HELDOUT]
    copy_ids = np.random.RandomState(0).choice(NUM_TRAIN, NUM_COPIES, replace=False)
    return dnnlib.EasyDict(
        root=root, train=train, copy_ids=copy_ids,
        train_zip=_write_zip(root / 'train.zip', train),
        copies=_write_dir(root / 'copies', train[copy_ids]),
        heldout=_write_dir(root / 'heldout', heldout),
    )


def _calc(*args):
    result = CliRunner().invoke(memorization_cli.cli, ['calc', *args])
    return result


def _one_error_line(result):
    """The CLI failed with exactly one `Error:` line on stderr and no traceback."""
    return result.stderr.startswith('Error: ') and result.stderr.count('\n') == 1 and result.exc_info[0] is SystemExit


def _read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_copies_flagged_heldout_not(digits, tmp_path):
    dest = tmp_path / 'out'
    r = _calc(f'--images={digits.copies}', f'--data={digits.train_zip}', '--detector=pixel', f'--dest={dest}',
              f'--reference={digits.heldout}', f'--cache-dir={tmp_path / "cache"}')
    assert r.exit_code == 0, r.output
    m = json.loads((dest / 'metrics.json').read_text())
    assert m['num_samples'] == NUM_COPIES and m['num_train'] == NUM_TRAIN
    assert m['detector']['name'] == 'pixel' and m['resize'] is None
    assert m['fraction_above'] == {'0.85': 1.0, '0.875': 1.0, '0.9': 1.0, '0.925': 1.0, '0.95': 1.0}
    assert m['similarity_mean'] == pytest.approx(1.0, abs=1e-5)
    assert m['ratio_fraction'] == 1.0
    ref = m['reference']
    assert ref['num_samples'] == NUM_HELDOUT
    assert ref['ratio_fraction'] <= 0.1  # real digits are not near-copies of other digits
    assert ref['similarity_max'] < 0.99 and ref['similarity_mean'] < m['similarity_mean'] - 0.05

    rows = _read_csv(dest / 'neighbors.csv')
    assert [row['file'] for row in rows] == [f'{i:06d}.png' for i in range(NUM_COPIES)]
    assert [int(row['nearest']) for row in rows] == digits.copy_ids.tolist()
    assert [int(row['l2_nearest']) for row in rows] == digits.copy_ids.tolist()
    assert all(float(row['ratio']) == 0 and float(row['similarity']) > 0.9999 for row in rows)
    assert all(int(row['second']) != int(row['nearest']) for row in rows)

    hist = PIL.Image.open(dest / 'histogram.png')
    assert hist.size[0] > 100
    grid = np.asarray(PIL.Image.open(dest / 'nearest.png').convert('RGB'))
    _, boxes = memorization_report.nearest_grid(torch.zeros([NUM_COPIES, 1, 16, 16], dtype=torch.uint8),
                                         torch.zeros([NUM_TRAIN, 1, 16, 16], dtype=torch.uint8),
                                         list(range(NUM_COPIES)), [0] * NUM_COPIES)
    for (sy, sx), (ty, tx), (h, w) in boxes:
        left, right = grid[sy : sy + h, sx : sx + w], grid[ty : ty + h, tx : tx + w]
        assert left.std() > 0 and np.array_equal(left, right)  # every copy sits beside itself
    assert not list(dest.glob('*.tmp-*'))


class _CountingDetector:
    """The pixel detector under another name, counting the images it featurises."""

    def __init__(self, name='fake'):
        self.inner = load_detector('pixel')
        self.name, self.preprocess = name, 'test'
        self.images_seen = 0

    @property
    def feature_dim(self):
        return self.inner.feature_dim # None until the first call, like the pixel detector

    def __call__(self, images):
        self.images_seen += images.shape[0]
        return self.inner(images)


def test_train_features_cached_by_content(digits, tmp_path):
    cache = tmp_path / 'cache'
    samples = torch.from_numpy(digits.train[digits.copy_ids][:, None])
    det = _CountingDetector()
    kw = dict(detector=det, cache_dir=str(cache), verbose=False)
    first = memorization.compute_memorization(samples, digits.train_zip, **kw)
    assert det.images_seen == NUM_TRAIN + NUM_COPIES
    assert len(list(cache.glob('*.npy'))) == 1

    det.images_seen = 0
    second = memorization.compute_memorization(samples, digits.train_zip, **kw)
    assert det.images_seen == NUM_COPIES  # training features came from the cache
    assert second.metrics == first.metrics

    changed = digits.train.copy()
    changed[5] = 255 - changed[5]
    det.images_seen = 0
    memorization.compute_memorization(samples, _write_zip(tmp_path / 'changed.zip', changed), **kw)
    assert det.images_seen == NUM_TRAIN + NUM_COPIES  # different pixels, new entry

    other = _CountingDetector(name='other')
    memorization.compute_memorization(samples, digits.train_zip, detector=other, cache_dir=str(cache), verbose=False)
    assert other.images_seen == NUM_TRAIN + NUM_COPIES  # the detector is part of the key
    assert len(list(cache.glob('*.npy'))) == 3


def test_single_training_image(digits, tmp_path):
    train = _write_zip(tmp_path / 'one.zip', digits.train[:1])
    samples = torch.from_numpy(digits.train[:3, None])
    r = memorization.compute_memorization(samples, train, detector='pixel', cache_dir=str(tmp_path), verbose=False)
    assert r.samples.nearest.tolist() == [0, 0, 0] and r.samples.second.tolist() == [-1, -1, -1]
    assert np.isnan(r.samples.ratio).all() and r.metrics['ratio_fraction'] == 0  # undefined, not counted
    assert r.samples.similarity[0] == pytest.approx(1, abs=1e-6) and r.samples.similarity[1] < 0.99


def test_resize_is_explicit(digits, tmp_path):
    big = digits.train[digits.copy_ids[:4]].repeat(2, axis=1).repeat(2, axis=2)
    images = _write_dir(tmp_path / 'big', big)
    args = [f'--images={images}', f'--data={digits.train_zip}', '--detector=pixel', f'--cache-dir={tmp_path / "c"}']
    r = _calc(*args, f'--dest={tmp_path / "a"}')
    assert r.exit_code == 1 and _one_error_line(r) and '--resize' in r.stderr
    assert not (tmp_path / 'a' / 'metrics.json').exists()
    r = _calc(*args, f'--dest={tmp_path / "b"}', '--resize')
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / 'b' / 'metrics.json').read_text())
    assert m['resize'] == dict(source=[32, 32], target=[16, 16], mode='bicubic-antialias')
    rows = _read_csv(tmp_path / 'b' / 'neighbors.csv')
    assert [int(row['nearest']) for row in rows] == digits.copy_ids[:4].tolist()


@pytest.mark.parametrize('case', ['empty', 'threshold', 'channels', 'arch', 'dest'])
def test_bad_inputs_give_one_error_line(digits, tmp_path, case):
    images, extra = digits.copies, []
    if case == 'dest':
        (tmp_path / 'file').write_bytes(b'')
        extra = [f'--dest={tmp_path / "file"}'] # a later --dest wins
    if case == 'empty':
        images = str(tmp_path / 'empty')
        os.makedirs(images)
    elif case == 'threshold':
        extra = ['--thresholds=0.9,1.5']
    elif case == 'channels':
        rgb = np.repeat(digits.train[:3, :, :, None], 3, axis=3)
        images = _write_dir(tmp_path / 'rgb', rgb)
    elif case == 'arch':
        extra = ['--arch=vitl14']
    r = _calc(f'--images={images}', f'--data={digits.train_zip}', '--detector=pixel', f'--dest={tmp_path / "o"}',
              f'--cache-dir={tmp_path / "c"}', *extra)
    assert r.exit_code == 1 and _one_error_line(r), r.output
    assert not (tmp_path / 'o' / 'metrics.json').exists()


def test_dinov2_offline_without_checkpoint_fails_fast(digits, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    r = _calc(f'--images={digits.copies}', f'--data={digits.train_zip}', '--detector=dinov2',
              f'--dest={tmp_path / "o"}', f'--cache-dir={tmp_path / "c"}')
    assert r.exit_code == 1 and _one_error_line(r), r.output
    assert '--detector-path' in r.stderr and 'vitg14' in r.stderr


def test_two_ranks_match_one(digits, tmp_path):
    common = [f'--images={digits.copies}', f'--data={digits.train_zip}', '--detector=pixel',
              f'--reference={digits.heldout}', '--chunk=16']
    r = _calc(*common, f'--dest={tmp_path / "one"}', f'--cache-dir={tmp_path / "c1"}')
    assert r.exit_code == 0, r.output
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           '-m', 'ambient.memorization', 'calc', *common, f'--dest={tmp_path / "two"}', f'--cache-dir={tmp_path / "c2"}']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(memorization_cli.__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads((tmp_path / 'one' / 'metrics.json').read_text())
    two = json.loads((tmp_path / 'two' / 'metrics.json').read_text())
    assert _close(one, two), (one, two)
    assert _read_csv(tmp_path / 'one' / 'neighbors.csv') == _read_csv(tmp_path / 'two' / 'neighbors.csv')


def _close(a, b):
    """Nested JSON equality with float tolerance (different block shapes round differently)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, abs=1e-6)
    return a == b


def test_pixel_ratio_exact_among_near_duplicates():
    # A sample equal to 4 of 200 near-identical training images: float32 rounding would report a second
    # neighbour 1 grey level away; the search must find two exact copies (distance 0, ratio 0).
    g = torch.Generator().manual_seed(8)
    base = torch.randint(0, 256, [3, 32, 32], generator=g)
    train = base.repeat(200, 1, 1, 1).flatten(1)
    for j in range(200):
        idx = torch.randint(0, 3072, [j % 7 + 1], generator=g)
        train[j, idx] = (train[j, idx] + torch.randint(-3, 4, idx.shape, generator=g)).clamp(0, 255)
    train = train.to(torch.uint8)
    exact = (train.double() - base.flatten().double()).norm(dim=1)
    copies = [j for j in range(200) if exact[j] == 0]
    assert len(copies) >= 2
    detector = load_detector('pixel')
    feats = detector(train.reshape(-1, 3, 32, 32))
    nn = memorization.nearest_neighbors(detector, base[None].to(torch.uint8), feats, train, chunk=64)
    assert nn['l2_index'][0].tolist() == copies[:2]
    assert nn['distance'][0].tolist() == [0.0, 0.0] and nn['ratio'][0].item() == 0.0


def test_max_size_takes_edm_seeded_subset(digits, tmp_path):
    dest = tmp_path / 'out'
    r = _calc(f'--images={digits.copies}', f'--data={digits.train_zip}', '--detector=pixel', f'--dest={dest}',
              f'--cache-dir={tmp_path / "cache"}', '--max_size=5')
    assert r.exit_code == 0, r.output
    m = json.loads((dest / 'metrics.json').read_text())
    assert m['num_samples'] == 5 and m['max_size'] == 5
    kept = np.sort(np.random.RandomState(0).permutation(NUM_COPIES)[:5]) # EDM's draw with random_seed 0
    rows = _read_csv(dest / 'neighbors.csv')
    assert [row['file'] for row in rows] == [f'{i:06d}.png' for i in kept]
    assert [int(row['nearest']) for row in rows] == digits.copy_ids[kept].tolist()


def test_train_features_cache_keyed_by_local_weights(digits, tmp_path):
    cache, images = str(tmp_path / 'cache'), torch.from_numpy(digits.train)[:, None]
    raw = np.arange(NUM_TRAIN)
    for weights in ('a.pkl', 'b.pkl'):
        (tmp_path / weights).write_bytes(weights.encode())
        det = _CountingDetector()
        memorization.train_features(det, images, raw, cache, verbose=False, detector_path=str(tmp_path / weights))
        assert det.images_seen == NUM_TRAIN # other weights never reuse cached features
    det = _CountingDetector()
    memorization.train_features(det, images, raw, cache, verbose=False, detector_path=str(tmp_path / 'a.pkl'))
    assert det.images_seen == 0


def test_failed_rewrite_leaves_no_stale_metrics(digits, tmp_path, monkeypatch):
    samples = torch.from_numpy(digits.train[digits.copy_ids][:, None])
    result = memorization.compute_memorization(samples, digits.train_zip, detector='pixel', cache_dir=str(tmp_path), verbose=False)
    names = [f'{i}.png' for i in range(NUM_COPIES)]
    dest = tmp_path / 'out'
    memorization_report.write_outputs(str(dest), result, names)
    assert (dest / 'metrics.json').is_file()
    real_write = dnnlib.util.atomic_write_bytes

    def failing_write(path, data):
        if path.endswith('nearest.png'):
            raise OSError('disk full')
        real_write(path, data)
    monkeypatch.setattr(dnnlib.util, 'atomic_write_bytes', failing_write)
    with pytest.raises(OSError):
        memorization_report.write_outputs(str(dest), result, names)
    assert not (dest / 'metrics.json').exists() # the old one no longer vouches for the new neighbors.csv
