"""Tests for training/dataset.py: loading dataset_tool output with EDM's item, subset and flip semantics."""

import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import dataset_tool
import dnnlib
from training.dataset import ImageFolderDataset

NUM = 40 # digits converted per fixture

@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """The first NUM sklearn digits as a folder and a zip, plus the expected pixels and labels."""
    from sklearn.datasets import load_digits
    root = tmp_path_factory.mktemp('digits')
    for dest in ['folder', 'data.zip']:
        dataset_tool.convert_dataset(source='digits', dest=str(root / dest), max_images=NUM)
    source = load_digits()
    images = np.rint(source.images[:NUM] * 255 / 16).astype(np.uint8)[:, np.newaxis]
    return dnnlib.EasyDict(folder=str(root / 'folder'), zip=str(root / 'data.zip'), images=images, labels=source.target[:NUM])

def test_items_and_properties(digits):
    for path in [digits.folder, digits.zip]:
        ds = ImageFolderDataset(path, use_labels=True)
        assert len(ds) == NUM and ds.image_shape == [1, 8, 8] and ds.num_channels == 1 and ds.resolution == 8
        assert ds.label_shape == [10] and ds.label_dim == 10 and ds.has_labels and ds.has_onehot_labels
        assert ds.name == os.path.splitext(os.path.basename(path))[0]
        for i in [0, 7, NUM - 1]:
            image, label = ds[i]
            assert image.dtype == np.uint8 and label.dtype == np.float32
            np.testing.assert_array_equal(image, digits.images[i])
            np.testing.assert_array_equal(label, np.eye(10, dtype=np.float32)[digits.labels[i]])
            details = ds.get_details(i)
            assert details.raw_idx == i and details.xflip is False and int(details.raw_label) == digits.labels[i]

def test_without_labels(digits):
    ds = ImageFolderDataset(digits.zip, resolution=8)
    image, label = ds[3]
    assert label.shape == (0,) and label.dtype == np.float32
    assert not ds.has_labels and ds.label_shape == [0]
    np.testing.assert_array_equal(image, digits.images[3])

def test_max_size_uses_edms_seeded_subset(digits):
    ds = ImageFolderDataset(digits.folder, use_labels=True, max_size=10, random_seed=3)
    order = np.arange(NUM)
    np.random.RandomState(3).shuffle(order)
    expected = np.sort(order[:10])
    assert len(ds) == 10
    assert [ds.get_raw_index(i) for i in range(10)] == expected.tolist()
    for i, raw in enumerate(expected):
        np.testing.assert_array_equal(ds[i][0], digits.images[raw])
        assert ds[i][1].argmax() == digits.labels[raw]
    other = ImageFolderDataset(digits.folder, max_size=10, random_seed=4)
    assert [other.get_raw_index(i) for i in range(10)] != expected.tolist()
    assert len(ImageFolderDataset(digits.folder, max_size=NUM + 5)) == NUM
    names = sorted(p.relative_to(digits.folder).as_posix() for p in pathlib.Path(digits.folder).rglob('*.png'))
    assert [ds.get_fname(ds.get_raw_index(i)) for i in range(10)] == [names[r] for r in expected]

def test_xflip_doubles_after_max_size(digits):
    ds = ImageFolderDataset(digits.zip, use_labels=True, max_size=6, xflip=True, random_seed=1)
    assert len(ds) == 12
    for i in range(6):
        assert ds.get_raw_index(i + 6) == ds.get_raw_index(i)
        assert ds.get_details(i).xflip is False and ds.get_details(i + 6).xflip is True
        np.testing.assert_array_equal(ds[i + 6][0], ds[i][0][:, :, ::-1])
        np.testing.assert_array_equal(ds[i + 6][1], ds[i][1])
    assert not np.array_equal(ds[0][0], ds[6][0]) # digits are not mirror-symmetric

def test_cache_keeps_decoded_images(digits):
    ds = ImageFolderDataset(digits.folder, cache=True)
    first = ds[5][0]
    assert list(ds._cached_images) == [5]
    np.testing.assert_array_equal(ds[5][0], first)

def test_pickle_and_dataloader_workers(digits):
    ds = ImageFolderDataset(digits.zip, use_labels=True)
    ds[0] # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[9][0], digits.images[9])
    loader = torch.utils.data.DataLoader(ds, batch_size=10, num_workers=2, shuffle=False)
    images = torch.cat([batch[0] for batch in loader]).numpy()
    np.testing.assert_array_equal(images, digits.images)

def test_float_labels(tmp_path):
    for i in range(3):
        PIL.Image.fromarray(np.full([4, 4, 3], i, np.uint8)).save(tmp_path / f'{i}.png')
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': [[f'{i}.png', [i, 0.5]] for i in range(3)]}))
    ds = ImageFolderDataset(str(tmp_path), use_labels=True)
    assert ds.label_shape == [2] and not ds.has_onehot_labels
    np.testing.assert_array_equal(ds[2][1], np.array([2, 0.5], np.float32))

#----------------------------------------------------------------------------
# Bad input raises UserError with a message naming the problem.

def _write_pngs(folder, shapes):
    os.makedirs(folder, exist_ok=True)
    for i, shape in enumerate(shapes):
        PIL.Image.fromarray(np.zeros(shape, np.uint8)).save(os.path.join(folder, f'{i}.png'))

def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(dnnlib.util.UserError, match='not found'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(dnnlib.util.UserError, match='folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'file.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(dnnlib.util.UserError, match='No image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    (tmp_path / 'bad.zip').write_bytes(b'garbage')
    with pytest.raises(dnnlib.util.UserError, match='Cannot open zip'):
        ImageFolderDataset(str(tmp_path / 'bad.zip'))

def test_corrupt_and_mixed_images(tmp_path):
    _write_pngs(tmp_path / 'a', [[8, 8, 3]] * 2)
    (tmp_path / 'a' / '2.png').write_bytes(b'junk')
    ds = ImageFolderDataset(str(tmp_path / 'a'))
    with pytest.raises(dnnlib.util.UserError, match='2.png'):
        ds[2]
    _write_pngs(tmp_path / 'b', [[8, 8, 3], [16, 16, 3]])
    ds = ImageFolderDataset(str(tmp_path / 'b'))
    ds[0]
    with pytest.raises(dnnlib.util.UserError, match='1.png'):
        ds[1]

def test_resolution_mismatch(tmp_path):
    _write_pngs(tmp_path, [[8, 8, 3]])
    assert ImageFolderDataset(str(tmp_path), resolution=8).resolution == 8
    with pytest.raises(dnnlib.util.UserError, match='8x8'):
        ImageFolderDataset(str(tmp_path), resolution=16)

def test_label_errors(tmp_path):
    _write_pngs(tmp_path, [[8, 8, 3]] * 2)
    meta = tmp_path / 'dataset.json'
    meta.write_text(json.dumps({'labels': [['0.png', 0], ['1.png', 1], ['9.png', 1]]}))
    with pytest.raises(dnnlib.util.UserError, match='9.png'):
        ImageFolderDataset(str(tmp_path), use_labels=True)
    ImageFolderDataset(str(tmp_path)) # labels unused: not read
    meta.write_text(json.dumps({'labels': [['0.png', 0]]}))
    with pytest.raises(dnnlib.util.UserError, match='no label for 1 image'):
        ImageFolderDataset(str(tmp_path), use_labels=True)
    meta.write_text('{"labels": [[')
    with pytest.raises(dnnlib.util.UserError, match='Malformed'):
        ImageFolderDataset(str(tmp_path), use_labels=True)

def test_zip_with_truncated_member(tmp_path, digits):
    # The zip's directory is intact but one member's bytes are cut: decoding that item fails clearly.
    with zipfile.ZipFile(digits.zip) as z:
        first, second = z.read('00000/img00000000.png'), z.read('00000/img00000001.png')
    with zipfile.ZipFile(tmp_path / 'd.zip', 'w') as z:
        z.writestr('00000/img00000000.png', first)
        z.writestr('00000/img00000001.png', second[:len(second) // 2])
    ds = ImageFolderDataset(str(tmp_path / 'd.zip'))
    np.testing.assert_array_equal(ds[0][0], digits.images[0])
    with pytest.raises(dnnlib.util.UserError, match='img00000001.png'):
        ds[1]
