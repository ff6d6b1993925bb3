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


#----------------------------------------------------------------------------
# Per-image noise levels (train.py --sigma_tn_per_image).

NAMES = [f'img{i:02d}.png' for i in range(6)] # The image_folder fixture's files.
LEVELS = {name: 0.1 * (i + 1) for i, name in enumerate(NAMES)}


def write_levels(path, levels=None, fmt='json'):
    """A per-image sigma_tn file: a JSON object, or CSV with header file,sigma_tn."""
    levels = LEVELS if levels is None else levels
    if fmt == 'json':
        path.write_text(json.dumps(levels))
    else:
        path.write_text('file,sigma_tn\n' + ''.join(f'{name},{value!r}\n' for name, value in levels.items()))
    return str(path)


def test_per_image_items_carry_their_images_sigma_tn(image_folder, tmp_path):
    dataset = NoisyCopyDataset(path=image_folder, sigma_tn_per_image=write_levels(tmp_path / 'tn.json'), xflip=True)
    plain = make(image_folder, xflip=True)
    assert dataset.per_image and dataset.sigma_tn == 'per_image' and not plain.per_image
    for idx in range(len(dataset)):
        image, label, extras = dataset[idx]
        name = NAMES[dataset.get_raw_index(idx)]
        assert set(extras) == {'tn_noise', 'sigma_tn'}
        # The file's value exactly (float64), the same fixed noise as a global run; the flipped copy has its image's value.
        assert extras['sigma_tn'].dtype == np.float64 and extras['sigma_tn'] == LEVELS[name]
        assert np.array_equal(extras['tn_noise'], plain[idx][2]['tn_noise']) and np.array_equal(image, plain[idx][0])
        expected = image.astype(np.float32) / 127.5 - 1 + np.float32(LEVELS[name]) * extras['tn_noise']
        assert np.array_equal(dataset.noisy_image(idx), expected)
    # Collated as the trainer does: one float64 value per item, next to the noise.
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False, num_workers=0)
    _images, _labels, extras = next(iter(loader))
    assert extras['sigma_tn'].dtype == torch.float64 and extras['sigma_tn'].tolist() == [LEVELS[n] for n in NAMES[:4]]
    assert extras['tn_noise'].shape == (4, 3, 8, 8)


def test_per_image_json_and_csv_agree_and_follow_raw_indices(image_folder, tmp_path):
    by_json = NoisyCopyDataset(path=image_folder, sigma_tn_per_image=write_levels(tmp_path / 'tn.json'))
    by_csv = NoisyCopyDataset(path=image_folder, sigma_tn_per_image=write_levels(tmp_path / 'tn.csv', fmt='csv'))
    assert [by_json[i][2]['sigma_tn'] for i in range(6)] == [by_csv[i][2]['sigma_tn'] for i in range(6)]
    # A max_size subset looks values up by raw index, and needs values only for the images it uses.
    used = NoisyCopyDataset(path=image_folder, sigma_tn=0.5, max_size=3, random_seed=4)
    used = {NAMES[used.get_raw_index(i)] for i in range(len(used))}
    assert len(used) == 3
    subset = NoisyCopyDataset(path=image_folder, max_size=3, random_seed=4,
                              sigma_tn_per_image=write_levels(tmp_path / 'some.json', {n: LEVELS[n] for n in used}))
    for idx in range(len(subset)):
        assert subset[idx][2]['sigma_tn'] == LEVELS[NAMES[subset.get_raw_index(idx)]]
    # A record (what runs store) is accepted and its sha256 checked; the dataset pickles for DataLoader workers.
    from ambient.method.dataset import sigma_tn_record
    record, mapping = sigma_tn_record(str(tmp_path / 'tn.json'))
    assert mapping == LEVELS and record['size'] == 6 and record['min'] == 0.1 and record['max'] == pytest.approx(0.6)
    assert record['median'] == pytest.approx(0.35)
    restored = pickle.loads(pickle.dumps(NoisyCopyDataset(path=image_folder, sigma_tn='per_image', sigma_tn_per_image=record)))
    assert [restored[i][2]['sigma_tn'] for i in range(6)] == [LEVELS[n] for n in NAMES]


def _bad_level_files():
    """name -> (file contents or None for no file, constructor kwargs, message)."""
    missing_three = {n: v for n, v in LEVELS.items() if n not in ('img01.png', 'img03.png', 'img04.png')}
    return {
        'missing file': (None, {}, 'no such file'),
        'not json': ('{"img00.png": 0.1,', {}, 'not valid JSON'),
        'json list': ('[0.1, 0.2]', {}, 'one JSON object'),
        'json string value': (json.dumps(dict(LEVELS, **{'img02.png': '0.3'})), {}, 'img02.png is not a number'),
        'json duplicate': ('{"img00.png": 0.1, "img00.png": 0.2}', {}, 'names img00.png twice'),
        'empty object': ('{}', {}, 'holds no sigma_tn values'),
        'csv header': ('name,value\nimg00.png,0.1\n', {}, 'header file,sigma_tn'),
        'csv number': ('file,sigma_tn\nimg00.png,abc\n', {}, 'line 2: the sigma_tn of img00.png is not a number'),
        'csv columns': ('file,sigma_tn\nimg00.png,0.1,7\n', {}, 'expected 2 columns'),
        'misses images': (json.dumps(missing_three), {}, 'no sigma_tn for 3 image(s) of the data set, e.g. img01.png, img03.png, img04.png'),
        'unknown images': (json.dumps(dict(LEVELS, **{'cat.png': 0.2, 'dog.png': 0.3})), {}, 'names 2 image(s) the data set lacks, e.g. cat.png, dog.png'),
        'negative': (json.dumps(dict(LEVELS, **{'img05.png': -0.5})), {}, 'finite number > 0; 1 image(s) are not, e.g. img05.png=-0.5'),
        'zero': (json.dumps(dict(LEVELS, **{'img05.png': 0})), {}, 'img05.png=0'),
        'nan': ('{' + ', '.join(f'"{n}": NaN' for n in NAMES) + '}', {}, '6 image(s) are not, e.g. img00.png=nan'),
        'inf in csv': ('file,sigma_tn\n' + ''.join(f'{n},inf\n' for n in NAMES), {}, 'img00.png=inf'),
        'changed file': (json.dumps(LEVELS), dict(sha256='0' * 64), 'has changed since the run recorded it'),
        'with sigma_tn': (json.dumps(LEVELS), dict(sigma_tn=0.5), 'not both'),
    }


@pytest.mark.parametrize('case', list(_bad_level_files()))
def test_per_image_file_errors_are_one_line(image_folder, tmp_path, case):
    text, kwargs, message = _bad_level_files()[case]
    suffix = '.csv' if text is not None and text.startswith(('file,', 'name,')) else '.json'
    path = tmp_path / f'levels{suffix}'
    if text is not None:
        path.write_text(text)
    source = dict(path=str(path), sha256=kwargs['sha256']) if 'sha256' in kwargs else str(path)
    with pytest.raises(dnnlib.util.UserError) as err:
        NoisyCopyDataset(path=image_folder, sigma_tn_per_image=source, sigma_tn=kwargs.get('sigma_tn'))
    assert message in str(err.value) and '\n' not in str(err.value)
