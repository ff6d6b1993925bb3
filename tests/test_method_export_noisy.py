"""Tests for ambient/export_noisy.py and ambient/method/export_noisy.py: S_tn written atomically with the training noise, a preview, clean CLI errors."""

import json
import os

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

from ambient.method.dataset import NoisyCopyDataset, fixed_noise
from ambient.export_noisy import main


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """Five random 8x8 RGB PNGs with class labels."""
    path = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(1)
    for i in range(5):
        PIL.Image.fromarray(rng.integers(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(path / f'{i}.png')
    (path / 'dataset.json').write_text(json.dumps(dict(labels=[[f'{i}.png', i % 2] for i in range(5)])))
    return str(path)


def export(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_writes_the_noisy_set_the_trainer_uses(image_folder, tmp_path):
    result = export(['--data', image_folder, '--sigma_tn', '0.5', '--seed', '3', '--dest', str(tmp_path / 'out')])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / 'out')) == ['noisy-tn0.5-seed3.npz', 'noisy-tn0.5-seed3.png']
    with np.load(tmp_path / 'out' / 'noisy-tn0.5-seed3.npz') as f:
        x_tn, raw_idx, labels = f['x_tn'], f['raw_idx'], f['labels']
        assert float(f['sigma_tn']) == 0.5 and int(f['noise_seed']) == 3
    assert x_tn.dtype == np.float32 and x_tn.shape == (5, 3, 8, 8)
    assert raw_idx.tolist() == list(range(5)) and labels.tolist() == [0, 1, 0, 1, 0]
    # Same x_tn as training builds from its items: x0 in [-1, 1] plus sigma_tn times the fixed noise.
    dataset = NoisyCopyDataset(path=image_folder, sigma_tn=0.5, noise_seed=3)
    for i in range(5):
        image, _, extras = dataset[i]
        np.testing.assert_allclose(x_tn[i], image / 127.5 - 1 + 0.5 * extras['tn_noise'], rtol=0, atol=1e-6)
        assert np.array_equal(extras['tn_noise'], fixed_noise(3, raw_idx[i], [3, 8, 8]))
    with PIL.Image.open(tmp_path / 'out' / 'noisy-tn0.5-seed3.png') as preview:
        assert preview.size == (24, 16) and preview.mode == 'RGB' # 5 images tile as 3 x 2


def test_seed_changes_the_noise_and_max_images_limits(image_folder, tmp_path):
    for seed in (0, 1):
        assert export(['--data', image_folder, '--sigma_tn', '1', '--seed', str(seed), '--dest', str(tmp_path), '--max_images', '2']).exit_code == 0
    with np.load(tmp_path / 'noisy-tn1-seed0.npz') as a, np.load(tmp_path / 'noisy-tn1-seed1.npz') as b:
        assert a['x_tn'].shape[0] == 2 and not np.array_equal(a['x_tn'], b['x_tn'])


@pytest.mark.parametrize('args', [['--data', 'missing-folder', '--sigma_tn', '1'], ['--sigma_tn', '0'], ['--sigma_tn', '-1'], ['--seed', '-1']])
def test_bad_input_is_one_line_error_and_no_output(image_folder, tmp_path, args):
    base = dict(zip(['--data', '--sigma_tn', '--seed', '--dest'], [image_folder, '1', '0', str(tmp_path / 'out')]))
    base.update(dict(zip(args[::2], args[1::2])))
    result = CliRunner().invoke(main, [x for kv in base.items() for x in kv])
    assert result.exit_code in (1, 2) and result.output.strip().splitlines()[-1].startswith('Error')
    assert 'Traceback' not in result.output
    assert not (tmp_path / 'out').exists() or os.listdir(tmp_path / 'out') == []
