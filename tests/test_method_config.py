"""Tests for ambient/method/config.py: the train.py hook, its refusals, resume checks, and a tiny end-to-end ambient run."""

import glob
import hashlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib
from ambient.method.config import configure
from training import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECONDS = {'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
            've': ('training.networks.VEPrecond', 'training.loss.VELoss'),
            'vp': ('training.networks.VPPrecond', 'training.loss.VPLoss')}


def default_config(precond='edm', path='data.zip'):
    """The part of train.py's config that configure() reads and rewrites."""
    network, loss = PRECONDS[precond]
    return dnnlib.EasyDict(
        dataset_kwargs=dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=path, use_labels=False,
                                       xflip=True, cache=True),
        network_kwargs=dnnlib.EasyDict(class_name=network, model_type='SongUNet'),
        loss_kwargs=dnnlib.EasyDict(class_name=loss))


def options(**kwargs):
    return dnnlib.EasyDict(dict(sigma_tn=None, sigma_tn_per_image=None, ambient_split=None, noise_seed=None, ambient_aug_order=None), **kwargs)


@pytest.mark.parametrize('precond, loss_class', [('edm', 'AmbientEDMLoss'), ('ve', 'AmbientVELoss'), ('vp', 'AmbientVPLoss')])
def test_rewrites_loss_and_dataset(precond, loss_class):
    c = default_config(precond)
    tag = configure(c, options(sigma_tn=1.0))
    assert tag == 'ambient-tn1.0-edm'
    assert c.loss_kwargs == dict(class_name=f'ambient.method.loss.{loss_class}', sigma_tn=1.0, split='edm', aug_order='noisy')
    # The inner kwargs stay where train.py and generate.py look for them (path, use_labels).
    assert c.dataset_kwargs == dict(class_name='ambient.method.dataset.NoisyCopyDataset', inner_class_name='training.dataset.ImageFolderDataset',
                                    path='data.zip', use_labels=False, xflip=True, cache=True, sigma_tn=1.0, noise_seed=0)
    loss_fn = dnnlib.util.construct_class_by_name(**c.loss_kwargs)
    assert loss_fn.sigma_tn == 1.0


def test_options_reach_loss_dataset_and_tag():
    c = default_config()
    tag = configure(c, options(sigma_tn=0.25, ambient_split='uniform', noise_seed=7, ambient_aug_order='clean-then-noise'))
    assert tag == 'ambient-tn0.25-uniform-clean-then-noise'
    assert (c.loss_kwargs.split, c.loss_kwargs.aug_order, c.dataset_kwargs.noise_seed) == ('uniform', 'clean-then-noise', 7)


def test_built_dataset_yields_fixed_noise(tmp_path):
    import PIL.Image
    for i in range(3):
        PIL.Image.fromarray(np.full([8, 8, 3], 40 * i, dtype=np.uint8)).save(tmp_path / f'{i}.png')
    c = default_config(path=str(tmp_path))
    configure(c, options(sigma_tn=1.0, noise_seed=3))
    c.dataset_kwargs.resolution, c.dataset_kwargs.max_size = 8, 6 # what train.py adds after configure
    dataset = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
    assert len(dataset) == 6 and dataset.resolution == 8
    assert dataset[4][2]['tn_noise'].shape == (3, 8, 8)


@pytest.mark.parametrize('precond, sigma_tn, message', [
    ('edm', None, 'requires --sigma_tn'), ('edm', 0.0, '> 0'), ('edm', -1.0, '> 0'), ('edm', float('nan'), '> 0'),
    ('edm', 80.0, 'sigma_max=80'), ('ve', 100.0, 'sigma_max=100'), ('vp', 152.5, 'sigma_max=152'),
])
def test_refuses_bad_sigma_tn(precond, sigma_tn, message):
    with pytest.raises(dnnlib.util.UserError, match=message) as err:
        configure(default_config(precond), options(sigma_tn=sigma_tn))
    assert '\n' not in str(err.value)


def test_accepts_sigma_tn_just_below_the_limits():
    for precond, sigma_tn in [('edm', 79.0), ('ve', 99.0), ('vp', 150.0)]:
        configure(default_config(precond), options(sigma_tn=sigma_tn))


@pytest.mark.parametrize('opts, message', [
    (dict(ambient_split='half'), '--ambient_split'), (dict(ambient_aug_order='late'), '--ambient_aug_order'),
    (dict(noise_seed=-2), '--noise_seed'),
])
def test_refuses_bad_options(opts, message):
    with pytest.raises(dnnlib.util.UserError, match=message):
        configure(default_config(), options(sigma_tn=1.0, **opts))


def test_refuses_unknown_preconditioner_and_empty_uniform_split():
    c = default_config()
    c.network_kwargs.class_name = 'training.networks.iDDPMPrecond'
    with pytest.raises(dnnlib.util.UserError, match='iDDPMPrecond'):
        configure(c, options(sigma_tn=1.0))
    with pytest.raises(dnnlib.util.UserError, match='uniform'):
        configure(default_config('ve'), options(sigma_tn=0.01, ambient_split='uniform'))


def stored_state(c):
    """The part of a training state that check_resume_compatible reads."""
    return {name: json.dumps(json.loads(json.dumps(c[name])), sort_keys=True) for name in checkpoint.COMPARED_KWARGS}


@pytest.mark.parametrize('change, key', [(dict(sigma_tn=0.5), 'loss_kwargs.sigma_tn'), (dict(ambient_split='uniform'), 'loss_kwargs.split'),
                                         (dict(noise_seed=1), 'dataset_kwargs.noise_seed')])
def test_resume_with_other_ambient_options_is_refused(change, key):
    first = default_config()
    configure(first, options(sigma_tn=1.0))
    same = default_config()
    configure(same, options(sigma_tn=1.0))
    checkpoint.check_resume_compatible(stored_state(first), **{k: same[k] for k in checkpoint.COMPARED_KWARGS})
    changed = default_config()
    configure(changed, options(**dict(dict(sigma_tn=1.0), **change)))
    with pytest.raises(dnnlib.util.UserError, match=key):
        checkpoint.check_resume_compatible(stored_state(first), **{k: changed[k] for k in checkpoint.COMPARED_KWARGS})


def run(args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}')
    return proc


def mean_loss(snapshot_path, batches=64):
    """The snapshot's own ambient loss on a fixed batch, averaged over a fixed stream of sigma draws."""
    with open(snapshot_path, 'rb') as f:
        snap = pickle.load(f)
    dataset = dnnlib.util.construct_class_by_name(**snap['dataset_kwargs'])
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.as_tensor(np.stack([it[0] for it in items])).float() / 127.5 - 1
    eps = torch.as_tensor(np.stack([it[2]['tn_noise'] for it in items]))
    torch.manual_seed(0)
    with torch.no_grad():
        return float(np.mean([snap['loss_fn'](snap['ema'], images, tn_noise=eps).mean().item() for _ in range(batches)])), snap


@pytest.mark.slow
def test_tiny_ambient_training_run(tmp_path):
    # Flat-colour images: easy to learn, so a few dozen steps visibly lower the loss.
    import PIL.Image
    data = tmp_path / 'flat'
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        PIL.Image.fromarray(np.tile(rng.integers(0, 256, size=[1, 1, 3], dtype=np.uint8), [8, 8, 1])).save(data / f'{i:02d}.png')
    outdir = tmp_path / 'runs'
    # train.py keeps EDM's 10 Mimg learning-rate ramp-up; --lr=30 makes the effective rate ~1e-4..6e-3 here.
    common = ['--outdir', str(outdir), '--data', str(data), '--loss=ambient', '--cbase=16', '--cres=1', '--batch=32',
              '--tick=1', '--snap=1', '--dump=1', '--seed=1', '--ema=0.001', '--dropout=0', '--lr=30']
    run(['train.py', '--sigma_tn=1.0', '--duration=0.002'] + common)
    run_dir, = glob.glob(str(outdir / '*-ambient-tn1.0-edm'))
    snaps = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    first, snap = mean_loss(snaps[0])
    last, snap = mean_loss(snaps[-1])
    assert last < 0.85 * first
    assert snap['loss_fn'].sigma_tn == 1.0 and snap['dataset_kwargs']['sigma_tn'] == 1.0

    run(['generate.py', '--network', snaps[-1], '--outdir', str(tmp_path / 'gen'), '--seeds=0-1', '--steps=4'])
    assert sorted(os.listdir(tmp_path / 'gen')) == ['000000.png', '000001.png']

    refused = run(['train.py', '--sigma_tn=0.5', '--duration=0.003', '--resume', run_dir] + common, check=False)
    assert refused.returncode == 1 and 'loss_kwargs.sigma_tn' in refused.stderr + refused.stdout


#----------------------------------------------------------------------------
# --sigma_tn_per_image

@pytest.fixture
def folder(tmp_path):
    """Four 8x8 RGB PNGs in a sub-folder, named as a folder dataset names them (a/0.png ...)."""
    import PIL.Image
    (tmp_path / 'data' / 'a').mkdir(parents=True)
    for i in range(4):
        PIL.Image.fromarray(np.full([8, 8, 3], 50 * i, dtype=np.uint8)).save(tmp_path / 'data' / 'a' / f'{i}.png')
    return str(tmp_path / 'data')


def levels_file(tmp_path, levels=None, name='tn.json'):
    levels = {f'a/{i}.png': 0.1 * (i + 1) for i in range(4)} if levels is None else levels
    path = tmp_path / name
    path.write_text(json.dumps(levels))
    return str(path)


def test_per_image_file_reaches_loss_dataset_and_records(folder, tmp_path):
    path = levels_file(tmp_path)
    c = default_config(path=folder)
    tag = configure(c, options(sigma_tn_per_image=path, ambient_split='uniform'))
    assert tag == 'ambient-tnper-image-uniform'
    assert c.loss_kwargs == dict(class_name='ambient.method.loss.AmbientEDMLoss', sigma_tn='per_image', split='uniform', aug_order='noisy')
    record = c.dataset_kwargs.sigma_tn_per_image
    with open(path, 'rb') as f:
        assert record['sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert (record['path'], record['size'], record['min'], record['max']) == (path, 4, 0.1, 0.4)
    assert record['median'] == pytest.approx(0.25)
    assert c.dataset_kwargs.sigma_tn == 'per_image' and c.dataset_kwargs.noise_seed == 0
    json.dumps(c) # training_options.json holds it as is
    dataset = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
    assert [dataset[i][2]['sigma_tn'] for i in range(4)] == [0.1, 0.2, 0.1 * 3, 0.4]


def _per_image_refusals():
    """name -> (options, file contents or None for no file, message)."""
    good = {f'a/{i}.png': 0.5 for i in range(4)}
    return {
        'both given': (dict(sigma_tn=0.5), good, 'give --sigma_tn or --sigma_tn_per_image, not both'),
        'missing file': ({}, None, '--sigma_tn_per_image: no such file'),
        'unparsable': ({}, '{"a/0.png": ', 'not valid JSON'),
        'misses images': ({}, {'a/0.png': 0.5, 'a/1.png': 0.5}, 'no sigma_tn for 2 image(s) of the data set, e.g. a/2.png, a/3.png'),
        'unknown images': ({}, dict(good, **{'b/9.png': 0.5}), 'names 1 image(s) the data set lacks, e.g. b/9.png'),
        'negative': ({}, dict(good, **{'a/2.png': -0.1}), 'a/2.png=-0.1'),
        'zero': ({}, dict(good, **{'a/2.png': 0}), 'a/2.png=0'),
        'infinite': ({}, '{"a/0.png": Infinity, "a/1.png": 0.5, "a/2.png": 0.5, "a/3.png": 0.5}', 'a/0.png=inf'),
        'at sigma_max': ({}, dict(good, **{'a/3.png': 80.0}), "below the preconditioner's sigma_max=80; 1 image(s) are not, e.g. a/3.png=80"),
        'uniform without room below': (dict(precond='ve', ambient_split='uniform'), dict(good, **{'a/1.png': 0.01}), 'both sides of sigma_tn=0.01'),
    }


@pytest.mark.parametrize('case', list(_per_image_refusals()))
def test_per_image_refusals(folder, tmp_path, case):
    opts, contents, message = _per_image_refusals()[case]
    opts = dict(opts)
    precond = opts.pop('precond', 'edm')
    path = tmp_path / 'tn.json'
    if contents is not None:
        path.write_text(contents if isinstance(contents, str) else json.dumps(contents))
    with pytest.raises(dnnlib.util.UserError) as err:
        configure(default_config(precond, path=folder), options(sigma_tn_per_image=str(path), **opts))
    assert message in str(err.value) and '\n' not in str(err.value)
    assert str(err.value).startswith(('--sigma_tn_per_image', 'give --sigma_tn'))


def test_per_image_values_just_below_sigma_max_are_accepted(folder, tmp_path):
    for precond, top in [('edm', 79.0), ('ve', 99.0), ('vp', 150.0)]:
        configure(default_config(precond, path=folder), options(sigma_tn_per_image=levels_file(tmp_path, {f'a/{i}.png': top for i in range(4)})))
    with pytest.raises(dnnlib.util.UserError, match='sigma_max=100'):
        configure(default_config('ve', path=folder), options(sigma_tn_per_image=levels_file(tmp_path, {f'a/{i}.png': 100.0 for i in range(4)})))


def test_resume_with_another_per_image_file_is_refused(folder, tmp_path):
    def configured(**opts):
        c = default_config(path=folder)
        configure(c, options(**opts))
        return c
    def check(stored, now):
        checkpoint.check_resume_compatible(stored_state(stored), **{k: now[k] for k in checkpoint.COMPARED_KWARGS})
    path = levels_file(tmp_path)
    first = configured(sigma_tn_per_image=path)
    check(first, configured(sigma_tn_per_image=path))
    # Same path, other content: the recorded summary and sha256 differ.
    levels_file(tmp_path, {f'a/{i}.png': 0.5 for i in range(4)})
    with pytest.raises(dnnlib.util.UserError, match='dataset_kwargs.sigma_tn_per_image'):
        check(first, configured(sigma_tn_per_image=path))
    # Same values but one more space: only the sha256 differs.
    levels_file(tmp_path)
    with open(path, 'a') as f:
        f.write(' ')
    with pytest.raises(dnnlib.util.UserError, match=r'dataset_kwargs.sigma_tn_per_image.sha256'):
        check(first, configured(sigma_tn_per_image=path))
    # Another file, or one global sigma_tn instead.
    with pytest.raises(dnnlib.util.UserError, match='dataset_kwargs.sigma_tn_per_image.path'):
        check(first, configured(sigma_tn_per_image=levels_file(tmp_path, name='copy.json')))
    with pytest.raises(dnnlib.util.UserError, match='loss_kwargs.sigma_tn'):
        check(first, configured(sigma_tn=0.25))
    # The dataset itself refuses a file that changed after the run recorded it (a snapshot's dataset_kwargs, a worker).
    with pytest.raises(dnnlib.util.UserError, match='has changed since the run recorded it'):
        dnnlib.util.construct_class_by_name(**first.dataset_kwargs)
