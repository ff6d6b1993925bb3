"""Old runs keep working: snapshots and training_options.json written before the ambient/ package was laid out
in rooms (issue 22) load, construct and resume unchanged.

The fixtures in tests/fixtures/compat/ were written by train.py with the flat layout (ambient/loss.py,
ambient/dataset.py, ambient/config.py, ambient/baselines.py, ambient/baselines_config.py), on the four flat 8x8
images of flat8/, from the repository root (so their dataset path is relative):

    python train.py --outdir=... --data=tests/fixtures/compat/flat8 <FAMILY OPTIONS> <COMMON>

Their pickles hold the old modules' source and their options the old dotted names (`ambient.loss.AmbientEDMLoss`,
`ambient.baselines_config.FixedMaskDataset`, ...), which must keep resolving.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'compat')
COMMON = ['--data=tests/fixtures/compat/flat8', '--cbase=4', '--cres=1', '--blocks=1', '--attn=4', '--batch=4', '--iters=2',
          '--tick=1', '--snap=1', '--dump=1', '--seed=1', '--lr_rampup=0', '--workers=1']
FAMILIES = {
    'ambient': (['--loss=ambient', '--sigma_tn=0.5'], 'AmbientEDMLoss', 'tn_noise'),
    'masking': (['--loss=masking', '--mask_p=0.3'], 'MaskingEDMLoss', 'mask'),
    'noisy_only': (['--loss=noisy_only', '--sigma_tn=0.5'], 'NoisyOnlyEDMLoss', 'tn_noise'),
}
OLD_NAMES = ['ambient.loss.AmbientEDMLoss', 'ambient.loss.AmbientVELoss', 'ambient.loss.AmbientVPLoss',
             'ambient.loss.AUG_ORDERS', 'ambient.dataset.NoisyCopyDataset', 'ambient.dataset.WrappedDataset',
             'ambient.dataset.fixed_noise', 'ambient.config.configure', 'ambient.baselines.MaskingEDMLoss',
             'ambient.baselines.NoisyOnlyEDMLoss', 'ambient.baselines.MaskedPrecond',
             'ambient.baselines_config.FixedMaskDataset', 'ambient.baselines_config.build_masked_precond',
             'ambient.baselines_config.configure_masking', 'ambient.baselines_config.configure_noisy_only',
             'ambient.oracle.EDMOracle', 'ambient.nn_search.DEFAULT_CHUNK']


def _options(family):
    with open(os.path.join(FIXTURES, family, 'training_options.json'), encoding='utf-8') as f:
        return json.load(f)


def _dataset(dataset_kwargs):
    kwargs = dict(dataset_kwargs)
    kwargs['path'] = os.path.join(REPO, kwargs['path'])
    return dnnlib.util.construct_class_by_name(**kwargs)


@pytest.mark.parametrize('name', OLD_NAMES)
def test_old_dotted_names_resolve(name):
    assert dnnlib.util.get_obj_by_name(name) is not None


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_old_snapshot_loads_and_computes_its_loss(family):
    _, loss_class, key = FAMILIES[family]
    with open(os.path.join(FIXTURES, family, 'network-snapshot-000000.pkl'), 'rb') as f:
        snap = pickle.load(f)
    assert sorted(snap) == ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']
    assert type(snap['loss_fn']).__name__ == loss_class
    dataset = _dataset(snap['dataset_kwargs'])
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 4 and all(key in it[2] for it in items)
    images = torch.as_tensor(np.stack([it[0] for it in items])).float() / 127.5 - 1
    extras = {key: torch.as_tensor(np.stack([it[2][key] for it in items]))}
    torch.manual_seed(0)
    with torch.no_grad():
        loss = snap['loss_fn'](net=snap['ema'], images=images, labels=None, augment_pipe=snap['augment_pipe'], **extras)
        out = snap['ema'](images, torch.ones([4]))
    assert torch.isfinite(loss).all() and torch.isfinite(out).all() and out.shape == images.shape
    # What is loaded pickles again (with the current modules' source) and loads back to the same weights.
    again = pickle.loads(pickle.dumps(snap))
    for a, b in zip(snap['ema'].state_dict().values(), again['ema'].state_dict().values()):
        assert torch.equal(a, b)
    assert type(again['loss_fn']).__name__ == loss_class


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_old_training_options_construct_by_name(family):
    _, loss_class, key = FAMILIES[family]
    opts = _options(family)
    loss = dnnlib.util.construct_class_by_name(**opts['loss_kwargs'])
    assert type(loss).__name__ == loss_class
    dataset = _dataset(opts['dataset_kwargs'])
    assert key in dataset[0][2]
    net = dnnlib.util.construct_class_by_name(**opts['network_kwargs'], img_resolution=8, img_channels=3, label_dim=0)
    with torch.no_grad():
        assert net(torch.zeros([1, 3, 8, 8]), torch.ones([1])).shape == (1, 3, 8, 8)


@pytest.mark.parametrize('family', ['ambient', 'masking'])
def test_old_run_resumes(family, tmp_path):
    """train.py --resume on an old training state: today's options must equal the stored ones (a dry run checks)."""
    state = os.path.join(FIXTURES, family, 'training-state-000000.pt')
    cmd = [sys.executable, 'train.py', f'--outdir={tmp_path}', *FAMILIES[family][0], *COMMON, f'--resume={state}', '--dry-run']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'differs' not in proc.stdout + proc.stderr


def test_resume_check_compares_class_names_by_what_they_resolve_to():
    from training import checkpoint # pylint: disable=import-outside-toplevel
    old = dict(class_name='ambient.loss.AmbientEDMLoss', sigma_tn=0.5)
    state = {name: json.dumps({}) for name in checkpoint.COMPARED_KWARGS}
    state['loss_kwargs'] = json.dumps(old)
    kwargs = {name: {} for name in checkpoint.COMPARED_KWARGS}
    kwargs['loss_kwargs'] = dict(class_name='ambient.method.loss.AmbientEDMLoss', sigma_tn=0.5)
    checkpoint.check_resume_compatible(state, **kwargs) # the old flat name is the same class
    kwargs['loss_kwargs'] = dict(class_name='ambient.method.loss.AmbientVELoss', sigma_tn=0.5)
    with pytest.raises(dnnlib.util.UserError, match='loss_kwargs.class_name'):
        checkpoint.check_resume_compatible(state, **kwargs)
    kwargs['loss_kwargs'] = dict(class_name='no.such.Thing', sigma_tn=0.5)
    with pytest.raises(dnnlib.util.UserError, match='loss_kwargs.class_name'):
        checkpoint.check_resume_compatible(state, **kwargs)
