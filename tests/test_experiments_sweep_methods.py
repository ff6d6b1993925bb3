"""The sweep over methods (edm, ambient, masking, noisy-only), the paper's thresholds presets, and the figures CLI."""

import json
import os

import numpy as np
import pytest

import dnnlib
from ambient.experiments import sweep, sweep_methods
from ambient.metrics import thresholds
from test_experiments_sweep import fake  # pylint: disable=unused-import  # noqa: F401  (the fake stage tools)


def test_method_specs():
    assert sweep_methods.parse_list('edm,ambient:0.5,ambient:1,masking:0.2,noisy_only:0.5,noisy-only:1') == (
        'edm', 'ambient:0.5', 'ambient:1', 'masking:0.2', 'noisy_only:0.5', 'noisy_only:1')
    assert sweep_methods.parse(0) == 'edm' and sweep_methods.parse(0.5) == 'ambient:0.5' and sweep_methods.parse('ambient:0') == 'edm'
    assert [sweep_methods.folder(s) for s in (0, 'ambient:0.5', 'masking:0.2', 'noisy_only:1')] == [
        'sigma_tn-0', 'sigma_tn-0.5', 'masking-0.2', 'noisy_only-1']
    assert sweep_methods.loss_args('masking:0.2', 3) == ['--loss=masking', '--mask_p=0.2', '--mask_seed=3']
    assert sweep_methods.loss_args('noisy_only:0.5', 1) == ['--loss=noisy_only', '--sigma_tn=0.5', '--noise_seed=1']
    for bad in ('foo', 'masking:1.5', 'ambient:x', 'noisy_only:0', 'edm,edm'):
        with pytest.raises(dnnlib.util.UserError):
            sweep_methods.parse_list(bad)


def test_per_image_method_spec(tmp_path):
    path = tmp_path / 'levels-a.json'
    path.write_text(json.dumps({'a.png': 0.2, 'b.png': 0.4, 'c.png': 1.0}))
    spec = sweep_methods.parse(f'per_image:{path}')
    assert spec == f'per_image:{path}' and sweep_methods.parse(f'ambient-per-image:{path}') == spec
    assert sweep_methods.family(spec) == 'per_image' and sweep_methods.param(spec) == 0.4  # the median
    assert sweep_methods.folder(spec) == 'per_image-levels-a'  # '-' in a path is kept
    assert sweep_methods.loss_args(spec, 2, ('--ambient_split=uniform',)) == [
        '--loss=ambient', f'--sigma_tn_per_image={path}', '--noise_seed=2', '--ambient_split=uniform']
    assert sweep_methods.order('ambient:1') < sweep_methods.order(spec) and sweep_methods.short_label(spec) == 'per-image levels-a'
    with pytest.raises(dnnlib.util.UserError, match='existing sigma_tn file'):
        sweep_methods.parse(f'per_image:{tmp_path / "absent.json"}')


def test_thresholds_presets():
    assert thresholds.resolve('auto', ['datasets/cifar10-32x32-300.zip']) == ('cifar10', (0.9, 0.925, 0.95))
    assert thresholds.resolve('auto', [None, 'downloads/ffhq/images1024x1024']) == ('ffhq', (0.85, 0.875, 0.9))
    assert thresholds.resolve('auto', ['datasets/tiny-imagenet-64x64-1000.zip'])[1] == (0.9, 0.925, 0.95)
    assert thresholds.resolve(None, ['digits'])[0] == 'all'
    assert thresholds.resolve('ffhq', ['cifar10.zip'])[0] == 'ffhq'
    with pytest.raises(dnnlib.util.UserError):
        thresholds.resolve('mnist', [])


def test_memorization_cli_uses_the_data_sets_thresholds(tmp_path):
    from click.testing import CliRunner
    from ambient import memorization
    from training.dataset import write_image_zip
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=[6, 1, 8, 8], dtype=np.uint8)
    write_image_zip(train, None, tmp_path / 'ffhq-6.zip')
    write_image_zip(train[:3], None, tmp_path / 'samples.zip')
    result = CliRunner().invoke(memorization.cli, ['calc', f'--images={tmp_path / "samples.zip"}', f'--data={tmp_path / "ffhq-6.zip"}',
                                                   '--detector=pixel', f'--dest={tmp_path / "mem"}'])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / 'mem' / 'metrics.json').read_text())
    assert metrics['thresholds_preset'] == 'ffhq' and list(metrics['fraction_above']) == ['0.85', '0.875', '0.9']


def test_sweep_compares_methods(fake):  # pylint: disable=redefined-outer-name
    cfg = fake.config(sigma_tn=None, methods='edm,ambient:0.5,masking:0.2,noisy_only:0.5', every=0)
    assert cfg.sigma_tn == (0, 0.5) and cfg.thresholds_preset == 'all'
    summary = sweep.run_sweep(cfg, tools=fake.tools)
    calls = fake.calls()
    train_args = [c['args'] for c in calls if c['tool'] == 'train']
    assert [a['loss'] for a in train_args] == ['edm', 'ambient', 'masking', 'noisy_only']
    assert train_args[2]['mask_p'] == '0.2' and train_args[2]['mask_seed'] == '0' and train_args[3]['sigma_tn'] == '0.5'
    assert train_args[2]['outdir'].endswith(os.path.join('runs', 'masking-0.2', 'seed-0'))
    rows = summary['rows']
    assert [(r['method'], r['loss'], r['sigma_tn']) for r in rows] == [
        ('edm', 'edm', 0.0), ('ambient:0.5', 'ambient', 0.5), ('masking:0.2', 'masking', None),
        ('noisy_only:0.5', 'noisy_only', 0.5)]
    assert [g['method'] for g in summary['groups']] == ['edm', 'ambient:0.5', 'masking:0.2', 'noisy_only:0.5']
    h = summary['headline']
    assert h['best']['method'] == 'ambient:0.5' and len(h['comparisons']) == 3
    figure_args = [c['args'] for c in calls if c['tool'] == 'figures']
    assert len(figure_args) == 2  # denoise with all four models, one trajectory (EDM vs ambient)
    report = (fake.out / 'report.md').read_text()
    for text in ('| masking p=0.2 | 1 |', '| noisy-only sigma_tn=0.5 | 1 |', 'mean top-1 sim', 'Similarity thresholds: 0.9, 0.95',
                 'masking p=0.2: 50.0% fewer copies'):
        assert text in report, text
    md = (fake.out / 'sweep.md').read_text()
    assert '| masking p=0.2 | 0 |' in md and '| 0 (EDM) | 0 |' in md
    assert (fake.out / 'pareto.png').is_file() and (fake.out / 'curves.png').is_file()
    with pytest.raises(dnnlib.util.UserError, match='not both'):
        fake.config(methods='edm', sigma_tn='0')


def test_figures_pareto_and_curves_from_a_sweep_directory(fake, tmp_path):  # pylint: disable=redefined-outer-name
    from click.testing import CliRunner
    from ambient import figures
    sweep.run_sweep(fake.config(sigma_tn=None, methods='edm,ambient:0.5,masking:0.2', every=1), tools=fake.tools)
    for sub, name in (('pareto', 'p.png'), ('curves', 'c.png')):
        result = CliRunner().invoke(figures.cli, [sub, f'--sweep={fake.out}', f'--dest={tmp_path / name}'])
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).stat().st_size > 1000
    result = CliRunner().invoke(figures.cli, ['pareto', f'--sweep={tmp_path}', f'--dest={tmp_path / "x.png"}'])
    assert result.exit_code == 1 and 'sweep.json' in result.output


@pytest.mark.slow
def test_toy_sweep_of_all_methods_end_to_end(tmp_path, repo_dir):
    """The real CLIs on digits: EDM, ambient, masking and noisy-only models, evaluated and plotted together."""
    import subprocess
    import sys
    import PIL.Image
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'ambient.sweep', '--outdir', str(out), '--every', '0', '--source', 'digits', '--subset', '32',
           '--methods', 'edm,ambient:1,masking:0.2,noisy_only:1', '--samples', '16', '--steps', '4', '--',
           '--cbase=8', '--cres=1', '--batch=16', '--tick=1', '--snap=1', '--dump=1', '--augment=0', '--dropout=0',
           '--iters=70']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(repo_dir))
    proc = subprocess.run(cmd, cwd=repo_dir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = json.loads((out / 'sweep.json').read_text())
    assert [r['method'] for r in saved['rows']] == ['edm', 'ambient:1', 'masking:0.2', 'noisy_only:1']
    assert all(np.isfinite(r['fd']) and r['num_samples'] == 16 for r in saved['rows'])
    with PIL.Image.open(out / 'figures' / 'denoise.png') as im:
        assert im.size[1] > im.size[0] / 4  # four model rows
    report = (out / 'report.md').read_text()
    assert 'masking p=0.2' in report and 'noisy-only sigma_tn=1' in report and 'figures/denoise.png' in report
