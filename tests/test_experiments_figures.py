"""Tests of ambient/figures.py and ambient/experiments/figures.py: Figure-3 denoising grids and sampler states at sigma_tn, on real digits."""

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from ambient import figures as figures_cli
from ambient.experiments import figures
from ambient.method.oracle import EDMOracle
from training import dataset, networks, snapshot

#----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """20 real 8x8 digits as a dataset zip, and the uint8 images."""
    sklearn_datasets = pytest.importorskip('sklearn.datasets')
    images = np.rint(sklearn_datasets.load_digits().images[:20] * (255 / 16)).astype(np.uint8)[:, None]
    path = tmp_path_factory.mktemp('data') / 'train.zip'
    dataset.write_image_zip(images, None, path)
    return path, images


def tiny_net(seed):
    torch.manual_seed(seed)
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, label_dim=0, model_type='SongUNet', model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0)
    return net.eval().requires_grad_(False)


def test_denoise_grid_uses_the_same_noise_for_every_model(digits):
    _, images = digits
    a, b = tiny_net(0), tiny_net(1)
    preds, noisy = figures.denoise_grid([a, a, b], images[:2], [0.5, 3.0], seed=7)
    assert preds.shape == (3, 2, 2, 1, 8, 8) and noisy.shape == (2, 2, 1, 8, 8)
    np.testing.assert_array_equal(preds[0], preds[1]) # same net, same inputs
    assert not np.allclose(preds[0], preds[2])
    x0 = images[:2].astype(np.float64) / 127.5 - 1
    noise = torch.randn([2, 2, 1, 8, 8], generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    np.testing.assert_allclose(noisy[:, 1], x0 + 3.0 * noise[1])
    # The EDM optimum at a tiny noise level hands back the training image itself.
    oracle_preds, _ = figures.denoise_grid([EDMOracle(torch.from_numpy(x0 * 1.0))], images[:2], [1e-3])
    np.testing.assert_allclose(oracle_preds[0, :, 0], x0, atol=1e-3)


def test_states_at_sigma_tn_measure_distances_in_noise_units(digits):
    _, images = digits
    x0 = torch.from_numpy(images.astype(np.float64) / 127.5 - 1)
    # EDM's memorizing optimum: at sigma_tn a trajectory is one training image plus noise of exactly that size,
    # i.e. about 1 unit from its image and about sqrt(2) from that image's (independent) noisy copy.
    states = figures.states_at(EDMOracle(x0), 0.5, list(range(64)), num_steps=18)
    assert states.shape == (64, 1, 8, 8) and torch.isfinite(states).all()
    d = figures.trajectory_distances(states, images, np.arange(20), 0.5, noise_seed=0)
    assert 0.75 < np.median(d['to_clean']) < 1.25
    assert np.median(d['to_noisy']) > np.median(d['to_clean']) * 1.2


def test_cli_writes_both_pictures(digits, tmp_path):
    path, _ = digits
    nets = []
    for seed in (0, 1):
        nets.append(str(tmp_path / f'net{seed}.safetensors'))
        snapshot.save_network_safetensors(tiny_net(seed), nets[-1])
    runner = CliRunner()
    args = [f'--network={nets[0]}', f'--network={nets[1]}', '--label=EDM', '--label=ambient', f'--data={path}']
    out = runner.invoke(figures_cli.cli, ['denoise', *args, '--sigmas=0.5,2', '--images=2', f'--dest={tmp_path / "d.png"}'])
    assert out.exit_code == 0, out.output
    out = runner.invoke(figures_cli.cli, ['trajectory', *args, '--sigma_tn=0.5', '--samples=8', '--steps=4',
                                      f'--dest={tmp_path / "t.png"}'])
    assert out.exit_code == 0, out.output
    assert 'EDM: median distance to nearest x0' in out.output
    for name in ('d.png', 't.png'):
        with PIL.Image.open(tmp_path / name) as im:
            assert im.size[0] > 300 and np.asarray(im.convert('L')).std() > 10
    bad = runner.invoke(figures_cli.cli, ['denoise', *args[:2], '--label=only-one', f'--data={path}', f'--dest={tmp_path / "x.png"}'])
    assert bad.exit_code != 0 and 'one --label per --network' in bad.output and not (tmp_path / 'x.png').exists()
