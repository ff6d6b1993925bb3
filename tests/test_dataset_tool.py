"""Tests for dataset_tool.py: every source format, subsets, EDM's output layout, and clean failures."""

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool

#----------------------------------------------------------------------------
# Helpers.

def run_tool(*args):
    """Run the CLI in-process; return the click Result."""
    return CliRunner().invoke(dataset_tool.cli, [str(a) for a in args])

def read_output(dest):
    """(list of (name, HWC-or-HW array) in name order, parsed dataset.json) of a converted dataset."""
    dest = str(dest)
    if dest.endswith('.zip'):
        with zipfile.ZipFile(dest) as z:
            names = sorted(n for n in z.namelist() if n.endswith('.png'))
            images = [(n, np.array(PIL.Image.open(io.BytesIO(z.read(n))))) for n in names]
            meta = json.loads(z.read('dataset.json'))
    else:
        names = sorted(os.path.relpath(os.path.join(r, f), dest) for r, _, fs in os.walk(dest) for f in fs if f.endswith('.png'))
        images = [(n, np.array(PIL.Image.open(os.path.join(dest, n)))) for n in names]
        with open(os.path.join(dest, 'dataset.json')) as f:
            meta = json.load(f)
    return images, meta

def pixel_hash(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()

def hashed_items(dest):
    """Sorted (pixel hash, label) pairs: the dataset's content independent of order."""
    images, meta = read_output(dest)
    labels = dict(meta['labels'])
    return sorted((pixel_hash(img), labels[name]) for name, img in images)

def save_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(array).save(path)

def make_cifar_tarball(path, images_per_batch=3, seed=0):
    """A tiny tarball laid out as CIFAR-10's python version; returns (CHW images, labels) in order."""
    rng = np.random.default_rng(seed)
    all_images, all_labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        for batch in list(range(1, 6)) + ['test']:
            data = rng.integers(0, 256, size=[images_per_batch, 3072], dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, size=images_per_batch)]
            blob = pickle.dumps({'data': data, 'labels': labels, 'batch_label': f'batch {batch}'}, protocol=2)
            name = 'test_batch' if batch == 'test' else f'data_batch_{batch}'
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            if batch != 'test':
                all_images.append(data.reshape(-1, 3, 32, 32))
                all_labels += labels
    return np.concatenate(all_images), all_labels

def make_mnist(folder, count=5, seed=0):
    """Tiny MNIST idx gz files in folder; returns (28x28 images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=[count, 28, 28], dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, 'train-images-idx3-ubyte.gz'), 'wb') as f:
        f.write(b''.join(int(x).to_bytes(4, 'big') for x in [2051, count, 28, 28]) + images.tobytes())
    with gzip.open(os.path.join(folder, 'train-labels-idx1-ubyte.gz'), 'wb') as f:
        f.write(b''.join(int(x).to_bytes(4, 'big') for x in [2049, count]) + labels.tobytes())
    return images, labels

def make_image_folder(folder, count=4, size=8, mode='RGB', seed=0):
    """count random PNGs split over two class folders; returns {relpath: array}."""
    rng = np.random.default_rng(seed)
    shape = [size, size, 3] if mode == 'RGB' else [size, size]
    files = {}
    for i in range(count):
        rel = f'{"cat" if i % 2 else "dog"}/{i:03d}.png'
        files[rel] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        save_png(os.path.join(folder, rel), files[rel])
    return files

#----------------------------------------------------------------------------
# Real CIFAR-10 fixtures (skipped without ../shared).

@pytest.fixture(scope='module')
def cifar_converted(cifar_dir, tmp_path_factory):
    """The 2000-image tarball converted once to a zip."""
    dest = tmp_path_factory.mktemp('cifar') / 'cifar.zip'
    assert dataset_tool.convert_dataset(source=str(cifar_dir / 'cifar-10-python.tar.gz'), dest=str(dest)) == 2000
    return dest

def test_cifar_tarball_matches_manifest_and_edm_layout(cifar_dir, cifar_converted):
    images, meta = read_output(cifar_converted)
    assert [name for name, _ in images] == [f'{i // 1000:05d}/img{i:08d}.png' for i in range(2000)]
    with open(cifar_dir / 'manifest.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['fixture'].startswith('data_batch_')]
    rows.sort(key=lambda r: (r['fixture'].split('[')[0], int(r['fixture'].split('[')[1][:-1])))
    assert [pixel_hash(img) for _, img in images] == [r['pixel_sha256'] for r in rows]
    assert meta == {'labels': [[name, int(r['label'])] for (name, _), r in zip(images, rows)]}
    with zipfile.ZipFile(cifar_converted) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        assert z.read('dataset.json').startswith(b'{"labels": [["00000/img00000000.png", ')

def test_cifar_tarball_and_png_folder_agree(cifar_dir, cifar_converted, tmp_path):
    dest = tmp_path / 'from_png'
    assert run_tool('convert', '--source', cifar_dir / 'png', '--dest', dest).exit_code == 0
    from_png = hashed_items(dest)
    assert len(from_png) == 2000
    assert from_png == hashed_items(cifar_converted)

def test_subset_is_seeded_and_recorded(cifar_dir, cifar_converted, tmp_path):
    full, _ = read_output(cifar_converted)
    tarball = cifar_dir / 'cifar-10-python.tar.gz'
    outputs = {}
    for name, seed in [('a', 0), ('b', 0), ('c', 1)]:
        result = run_tool('convert', f'--source={tarball}', f'--dest={tmp_path / name}.zip', '--subset=300', f'--seed={seed}')
        assert result.exit_code == 0, result.output
        outputs[name] = read_output(f'{tmp_path / name}.zip')
    images, meta = outputs['a']
    indices = meta['source_indices']
    assert indices == sorted(np.random.default_rng(0).choice(2000, size=300, replace=False).tolist())
    assert meta['subset_seed'] == 0 and meta['source'].startswith('cifar10:')
    assert [pixel_hash(img) for _, img in images] == [pixel_hash(full[i][1]) for i in indices]
    assert [pixel_hash(img) for _, img in outputs['b'][0]] == [pixel_hash(img) for _, img in images]
    assert outputs['b'][1] == meta
    assert outputs['c'][1]['source_indices'] != indices

def test_balanced_subset(cifar_dir, tmp_path):
    dest = tmp_path / 'balanced'
    result = run_tool('--source', cifar_dir / 'cifar-10-python.tar.gz', '--dest', dest, '--subset', 300, '--balanced')
    assert result.exit_code == 0, result.output
    _, meta = read_output(dest)
    counts = np.bincount([label for _, label in meta['labels']], minlength=10)
    assert counts.tolist() == [30] * 10
    assert meta['subset_balanced'] is True
    assert meta['source_indices'] == sorted(set(meta['source_indices']))

#----------------------------------------------------------------------------
# Formats without ../shared.

def test_synthetic_cifar_tarball(tmp_path):
    tarball = tmp_path / 'cifar-10-python.tar.gz'
    images, labels = make_cifar_tarball(tarball)
    dest = tmp_path / 'out'
    assert run_tool('convert', '--source', tarball, '--dest', dest).exit_code == 0
    out, meta = read_output(dest)
    assert len(out) == 15 # 5 training batches, test_batch ignored
    for (name, img), chw, label, entry in zip(out, images, labels, meta['labels']):
        np.testing.assert_array_equal(img, chw.transpose(1, 2, 0))
        assert entry == [name, label]

@pytest.mark.parametrize('as_file', [False, True])
def test_synthetic_mnist(tmp_path, as_file):
    images, labels = make_mnist(tmp_path / 'mnist')
    source = tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz' if as_file else tmp_path / 'mnist'
    dest = tmp_path / 'out.zip'
    assert run_tool('convert', '--source', source, '--dest', dest, '--max-images', 4).exit_code == 0
    out, meta = read_output(dest)
    assert len(out) == 4
    for (_, img), src in zip(out, images):
        assert img.shape == (32, 32)
        np.testing.assert_array_equal(img[2:30, 2:30], src)
        assert img[:2].max() == 0 and img[:, :2].max() == 0
    assert [label for _, label in meta['labels']] == labels[:4].tolist()

def test_digits_source(tmp_path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    dest = tmp_path / 'digits'
    assert run_tool('convert', '--source=digits', f'--dest={dest}', '--max-images=64').exit_code == 0
    out, meta = read_output(dest)
    assert len(out) == 64 and all(img.shape == (8, 8) and img.dtype == np.uint8 for _, img in out)
    np.testing.assert_array_equal(np.stack([img for _, img in out]), expected[:64])
    assert [label for _, label in meta['labels']] == digits.target[:64].tolist()

    dest16 = tmp_path / 'digits16.zip'
    assert run_tool('--source=digits', f'--dest={dest16}', '--max-images=64', '--resolution=16x16').exit_code == 0
    out16, _ = read_output(dest16)
    assert out16[5][1].shape == (16, 16)
    resized = np.array(PIL.Image.fromarray(expected[5]).resize((16, 16), PIL.Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out16[5][1], resized)

def test_acceptance_command_line(tmp_path):
    dest = tmp_path / 'd.zip'
    cmd = [sys.executable, 'dataset_tool.py', 'convert', '--source=digits', f'--dest={dest}', '--subset=300', '--seed=0', '--resolution=16x16']
    proc = subprocess.run(cmd, cwd=os.path.dirname(dataset_tool.__file__), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out, meta = read_output(dest)
    assert len(out) == 300 and out[0][1].shape == (16, 16)
    assert meta['source_indices'] == sorted(np.random.default_rng(0).choice(1797, size=300, replace=False).tolist())

def test_image_folder_and_zip_sources(tmp_path):
    files = make_image_folder(tmp_path / 'src', count=6)
    dest = tmp_path / 'from_folder'
    assert run_tool('--source', tmp_path / 'src', '--dest', dest).exit_code == 0
    out, meta = read_output(dest)
    order = sorted(files) # cat/..., then dog/...
    for (_, img), rel in zip(out, order):
        np.testing.assert_array_equal(img, files[rel])
    assert [label for _, label in meta['labels']] == [0 if rel.startswith('cat') else 1 for rel in order]

    # The converted folder, zipped, is a valid source with its own dataset.json labels.
    archive = tmp_path / 'again.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        for name, _ in out:
            z.write(dest / name, name)
        z.write(dest / 'dataset.json', 'dataset.json')
    assert run_tool('--source', archive, '--dest', tmp_path / 'from_zip.zip').exit_code == 0
    assert hashed_items(tmp_path / 'from_zip.zip') == hashed_items(dest)

def test_center_crop_transform(tmp_path):
    rng = np.random.default_rng(0)
    save_png(str(tmp_path / 'src' / 'wide.png'), rng.integers(0, 256, size=[12, 20], dtype=np.uint8))
    dest = tmp_path / 'out'
    assert run_tool('--source', tmp_path / 'src', '--dest', dest, '--transform=center-crop', '--resolution=8x8').exit_code == 0
    (_, img), = read_output(dest)[0]
    assert img.shape == (8, 8, 3) # grey is expanded to RGB, as EDM does
    assert read_output(dest)[1] == {'labels': None}

def test_empty_dest_folder_is_filled(tmp_path):
    (tmp_path / 'dest').mkdir()
    assert run_tool('--source=digits', f'--dest={tmp_path / "dest"}', '--max-images=3').exit_code == 0
    assert len(read_output(tmp_path / 'dest')[0]) == 3

#----------------------------------------------------------------------------
# Bad input: one `Error:` line, non-zero exit, no output and no temporary left behind.

def _corrupt(tmp_path):
    make_image_folder(tmp_path / 'src', count=3)
    (tmp_path / 'src' / 'zz.png').write_bytes(b'not a png at all')

def _truncated(tmp_path):
    make_image_folder(tmp_path / 'src', count=3)
    blob = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(blob, format='png')
    (tmp_path / 'src' / 'zz.png').write_bytes(blob.getvalue()[:len(blob.getvalue()) // 2])

def _mixed_sizes(tmp_path):
    make_image_folder(tmp_path / 'src', count=2, size=8)
    save_png(str(tmp_path / 'src' / 'zz.png'), np.zeros([16, 16, 3], np.uint8))

def _mixed_channels(tmp_path):
    make_image_folder(tmp_path / 'src', count=2, size=8)
    save_png(str(tmp_path / 'src' / 'zz.png'), np.zeros([8, 8], np.uint8))

def _single(shape):
    def make(tmp_path):
        save_png(str(tmp_path / 'src' / 'a.png'), np.zeros(shape, np.uint8))
    return make

def _labels_missing_file(tmp_path):
    make_image_folder(tmp_path / 'src', count=2)
    labels = [['cat/001.png', 0], ['dog/000.png', 1], ['dog/gone.png', 1]]
    (tmp_path / 'src' / 'dataset.json').write_text(json.dumps({'labels': labels}))

def _bad_zip(truncate):
    def make(tmp_path):
        make_image_folder(tmp_path / 'files', count=3)
        with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as z:
            for rel in ['cat/001.png', 'dog/000.png', 'dog/002.png']:
                z.write(tmp_path / 'files' / rel, rel)
        data = (tmp_path / 'src.zip').read_bytes()
        (tmp_path / 'src.zip').write_bytes(data[:len(data) // 2] if truncate else b'PK' + bytes(200))
    return make

def _bad_tarball(tmp_path):
    make_cifar_tarball(tmp_path / 'cifar-10-python.tar.gz')
    data = (tmp_path / 'cifar-10-python.tar.gz').read_bytes()
    (tmp_path / 'cifar-10-python.tar.gz').write_bytes(data[:len(data) // 2])

class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())

def _unsafe_tarball(tmp_path):
    # A batch pickle that would call a function on load: refused, never executed.
    with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        blob = pickle.dumps({'data': _Sneaky(), 'labels': [0]}, protocol=2)
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))

def _bad_mnist(tmp_path):
    make_mnist(tmp_path / 'mnist')
    path = tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz'
    with gzip.open(path, 'rb') as f:
        raw = f.read()
    with gzip.open(path, 'wb') as f:
        f.write(raw[:-100])

def _nonempty_dest(tmp_path):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')

BAD_INPUTS = {
    'missing source':       (lambda p: None,          ['--source', '{p}/nowhere'],               'Missing input'),
    'empty folder':         (lambda p: (p / 'src').mkdir(), ['--source', '{p}/src'],             'No images'),
    'corrupt image':        (_corrupt,                ['--source', '{p}/src'],                   'zz.png'),
    'truncated image':      (_truncated,              ['--source', '{p}/src'],                   'zz.png'),
    'corrupt zip':          (_bad_zip(False),         ['--source', '{p}/src.zip'],               'zip'),
    'truncated zip':        (_bad_zip(True),          ['--source', '{p}/src.zip'],               'zip'),
    'truncated tarball':    (_bad_tarball,            ['--source', '{p}/cifar-10-python.tar.gz'], 'CIFAR-10'),
    'unsafe pickle':        (_unsafe_tarball,         ['--source', '{p}/cifar-10-python.tar.gz'], 'posix.getcwd'),
    'truncated mnist':      (_bad_mnist,              ['--source', '{p}/mnist'],                 'truncated'),
    'mixed sizes':          (_mixed_sizes,            ['--source', '{p}/src'],                   'zz.png'),
    'mixed channels':       (_mixed_channels,         ['--source', '{p}/src'],                   'zz.png'),
    'non-square images':    (_single([8, 4, 3]),      ['--source', '{p}/src'],                   'square'),
    'non-power-of-two':     (_single([12, 12, 3]),    ['--source', '{p}/src'],                   'power of two'),
    'non-square output':    (lambda p: None,          ['--source=digits', '--resolution=16x8'],  'square'),
    'non-power-of-two out': (lambda p: None,          ['--source=digits', '--resolution=12x12'], 'power of two'),
    'subset too large':     (lambda p: None,          ['--source=digits', '--subset=1798'],      'larger than'),
    'subset not divisible': (lambda p: None,          ['--source=digits', '--subset=15', '--balanced'], 'divisible'),
    'labels name missing':  (_labels_missing_file,    ['--source', '{p}/src'],                   'dog/gone.png'),
}

@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(tmp_path, case):
    make, args, message = BAD_INPUTS[case]
    make(tmp_path)
    before = set(os.listdir(tmp_path))
    result = run_tool('convert', *[a.format(p=tmp_path) for a in args], '--dest', tmp_path / 'out' / 'ds.zip')
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: ') and message in lines[0], result.output
    assert set(os.listdir(tmp_path)) == before # neither dest, nor its parent, nor a temporary

def test_nonempty_dest_is_refused(tmp_path):
    _nonempty_dest(tmp_path)
    result = run_tool('--source=digits', '--dest', tmp_path / 'out', '--max-images=2')
    assert result.exit_code != 0 and result.output.strip().splitlines() == [f'Error: --dest {tmp_path / "out"} already exists and is not empty']
    assert os.listdir(tmp_path / 'out') == ['keep.txt']
    (tmp_path / 'd.zip').write_bytes(b'x')
    assert run_tool('--source=digits', '--dest', tmp_path / 'd.zip').exit_code != 0
    assert (tmp_path / 'd.zip').read_bytes() == b'x'

def test_failure_midway_leaves_nothing(tmp_path):
    # Three good images are written before the corrupt one is reached; all must vanish.
    _corrupt(tmp_path)
    for dest in [tmp_path / 'out', tmp_path / 'out.zip']:
        result = run_tool('--source', tmp_path / 'src', '--dest', dest)
        assert result.exit_code == 1 and 'zz.png' in result.output
    assert sorted(os.listdir(tmp_path)) == ['src']

#----------------------------------------------------------------------------
