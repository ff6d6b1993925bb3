"""Tests for ambient/method/dataset.py: fixed noise per raw image across workers, ranks, resumes and flips."""

import json
import pickle

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
from ambient.method.dataset import NoisyCopyDataset, fixed_noise
from training.dataset import ImageFolderDataset


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """Six random 8x8 RGB PNGs with class labels."""
    path = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    names = []
    for i in range(6):
        name = f'img{i:02d}.png'
        PIL.Image.fromarray(rng.integers(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(path / name)
        names.append([name, i % 3])
    (path / 'dataset.json').write_text(json.dumps(dict(labels=names)))
    return str(path)


def make(image_folder, noise_seed=0, **kwargs):
    return NoisyCopyDataset(path=image_folder, sigma_tn=0.5, noise_seed=noise_seed, **kwargs)


def all_noise(dataset, num_workers=0, batch_size=4):
    """tn_noise of every item, collated through a DataLoader as the training loop does."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return torch.cat([extras['tn_noise'] for _image, _label, extras in loader]).numpy()


def test_items_follow_the_plugin_contract(image_folder):
    dataset = make(image_folder, use_labels=True)
    inner = ImageFolderDataset(path=image_folder, use_labels=True)
    image, label, extras = dataset[2]
    assert np.array_equal(image, inner[2][0]) and np.array_equal(label, inner[2][1])
    assert set(extras) == {'tn_noise'}
    assert extras['tn_noise'].dtype == np.float32 and extras['tn_noise'].shape == (3, 8, 8)
    # The trainer's view of the dataset is the inner one's.
    assert (len(dataset), dataset.resolution, dataset.num_channels, dataset.label_dim, dataset.has_labels, dataset.name) == \
        (len(inner), inner.resolution, inner.num_channels, inner.label_dim, inner.has_labels, inner.name)
    assert dataset.get_details(2).raw_idx == 2 and dataset.image_shape == [3, 8, 8]


def test_noise_is_standard_normal_and_scaled_in_noisy_image(image_folder):
    dataset = make(image_folder)
    eps = np.stack([fixed_noise(0, i, [3, 32, 32]) for i in range(20)])
    assert abs(eps.mean()) < 0.03 and abs(eps.std() - 1) < 0.03
    expected = dataset[1][0].astype(np.float32) / 127.5 - 1 + 0.5 * dataset[1][2]['tn_noise']
    np.testing.assert_allclose(dataset.noisy_image(1), expected, rtol=0, atol=1e-6)


def test_same_noise_for_any_worker_count_rank_and_resume(image_folder):
    reference = all_noise(make(image_folder))
    assert np.array_equal(all_noise(make(image_folder), num_workers=2, batch_size=3), reference)
    assert np.array_equal(all_noise(make(image_folder)), reference) # another rank / a resumed run
    restored = pickle.loads(pickle.dumps(make(image_folder)))     # how spawn-started workers receive it
    assert np.array_equal(all_noise(restored), reference)
    assert len({arr.tobytes() for arr in reference}) == len(reference) # one draw per image
    assert not np.array_equal(all_noise(make(image_folder, noise_seed=1)), reference)


def test_noise_depends_on_raw_index_not_position(image_folder):
    full = make(image_folder)
    subset = make(image_folder, max_size=3, random_seed=4)
    for idx in range(len(subset)):
        raw = subset.get_raw_index(idx)
        assert np.array_equal(subset[idx][2]['tn_noise'], full[raw][2]['tn_noise'])


def test_flipped_copy_carries_flipped_noise(image_folder):
    dataset = make(image_folder, xflip=True)
    n = len(dataset) // 2
    for idx in range(n):
        image, _, extras = dataset[idx]
        flipped_image, _, flipped_extras = dataset[idx + n]
        assert dataset.get_details(idx + n).xflip
        assert np.array_equal(flipped_image, image[:, :, ::-1])
        assert np.array_equal(flipped_extras['tn_noise'], extras['tn_noise'][:, :, ::-1])


def test_global_rngs_untouched(image_folder):
    dataset = make(image_folder)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for idx in range(len(dataset)):
        dataset[idx]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_wraps_an_instance_or_kwargs(image_folder):
    inner = ImageFolderDataset(path=image_folder)
    by_instance = NoisyCopyDataset(inner, sigma_tn=0.5)
    by_dict = NoisyCopyDataset(dict(class_name='training.dataset.ImageFolderDataset', path=image_folder), sigma_tn=0.5)
    assert by_instance.inner is inner
    assert np.array_equal(by_instance[3][2]['tn_noise'], by_dict[3][2]['tn_noise'])


@pytest.mark.parametrize('kwargs', [dict(sigma_tn=0), dict(sigma_tn=-1), dict(sigma_tn=float('nan')), dict(sigma_tn=None),
                                    dict(sigma_tn=1, noise_seed=-1), dict(sigma_tn=1, noise_seed=0.5)])
def test_bad_arguments(image_folder, kwargs):
    with pytest.raises(dnnlib.util.UserError):
        NoisyCopyDataset(path=image_folder, **kwargs)
