"""Tests of train.py: a CPU run writing every artifact, exact resume through the CLI, and bad-input errors."""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import train # pylint: disable=wrong-import-position
from test_training_loop import make_image_zip # pylint: disable=wrong-import-position

TINY = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8', '--tick=1', '--snap=1', '--dump=1', '--workers=1']

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return dict(labelled=make_image_zip(root / 'tiny.zip'), unlabelled=make_image_zip(root / 'nolabels.zip', labels=False))

def run_train(args, **popen):
    """Start `python train.py args` with one CPU thread."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, str(REPO / 'train.py')] + args, env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)

def finish(proc):
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out

def final_state(run_dir):
    from training import checkpoint
    return torch.load(checkpoint.find_training_state(str(run_dir)), weights_only=True)

def assert_same_training(a, b):
    for part in ('net', 'ema'):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f'{part}.{key}'
    assert a['cur_nimg'] == b['cur_nimg']

#----------------------------------------------------------------------------

def test_cli_run_writes_run_dir_and_resumes_exactly(data, tmp_path):
    outdir = tmp_path / 'runs'
    finish(run_train([f'--outdir={outdir}', f'--data={data["labelled"]}', '--iters=3'] + TINY))
    first = outdir / '00000-tiny-uncond-ddpmpp-edm-gpus1-batch8-fp32'
    names = set(os.listdir(first))
    assert {'training_options.json', 'log.txt', 'stats.jsonl', 'network-snapshot-000000.pkl',
            'network-snapshot-000000.safetensors', 'training-state-000000.pt'} <= names, names
    options = json.loads((first / 'training_options.json').read_text())
    assert options['total_iters'] == 3 and options['batch_size'] == 8 and options['run_dir'] == str(first)
    assert options['optimizer_kwargs'] == dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8)
    assert options['network_kwargs']['class_name'] == 'training.networks.EDMPrecond'
    assert options['network_kwargs']['augment_dim'] == 9 and options['loss_kwargs'] == {'class_name': 'training.loss.EDMLoss'}
    log = (first / 'log.txt').read_text()
    assert 'tick 0 ' in log and 'Exiting...' in log
    assert final_state(first)['cur_nimg'] == 24

    # Resume from the run directory for two more steps, with the stored (random) seed; equals a straight 5-step run.
    finish(run_train([f'--outdir={outdir}', f'--data={data["labelled"]}', '--iters=5', f'--resume={first}'] + TINY))
    resumed = outdir / '00001-tiny-uncond-ddpmpp-edm-gpus1-batch8-fp32'
    assert json.loads((resumed / 'training_options.json').read_text())['seed'] == options['seed']
    finish(run_train([f'--outdir={outdir}', f'--data={data["labelled"]}', '--iters=5', f'--seed={options["seed"]}',
                      '--desc=straight'] + TINY))
    straight = outdir / '00002-tiny-uncond-ddpmpp-edm-gpus1-batch8-fp32-straight'
    assert_same_training(final_state(resumed), final_state(straight))

    # Changing the network (or the seed) of a resumed run is refused before anything is written.
    result = CliRunner().invoke(train.main, [f'--outdir={outdir}', f'--data={data["labelled"]}', f'--resume={first}',
                                             '--dropout=0.2'] + TINY)
    assert result.exit_code == 1 and 'network_kwargs.dropout differs' in result.output
    result = CliRunner().invoke(train.main, [f'--outdir={outdir}', f'--data={data["labelled"]}', f'--resume={first}',
                                             f'--seed={options["seed"] + 1}'] + TINY)
    assert result.exit_code == 1 and '--seed' in result.output
    assert len(os.listdir(outdir)) == 3

@pytest.mark.slow
def test_cli_sigkill_at_a_random_moment_then_resume_is_exact(data, tmp_path):
    # 1-kimg ticks (the CLI's smallest) and a dump every tick: dumps after 125, 250 and 375 steps.
    args = [f'--data={data["labelled"]}', '--iters=400', '--seed=5'] + TINY
    finish(run_train([f'--outdir={tmp_path / "straight"}'] + args))
    killed = tmp_path / 'killed'
    proc = run_train([f'--outdir={killed}'] + args)
    deadline = time.time() + 120
    while not list(killed.glob('*/training-state-*.pt')) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.7) # Somewhere in the middle of the following steps.
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    run_dir = next(killed.iterdir())
    assert final_state(run_dir)['cur_nimg'] < 400 * 8
    finish(run_train([f'--outdir={killed}', f'--resume={run_dir}'] + args))
    resumed = [d for d in killed.iterdir() if d != run_dir][0]
    assert_same_training(final_state(resumed), final_state(next((tmp_path / 'straight').iterdir())))

#----------------------------------------------------------------------------
# Bad input: one `Error:` line, non-zero exit, nothing written.

def _bad_cases(data, tmp_path):
    not_a_zip = tmp_path / 'garbage.zip'
    not_a_zip.write_text('not a zip')
    a_file = tmp_path / 'afile'
    a_file.write_text('x')
    state_dir = tmp_path / 'nostate'
    state_dir.mkdir()
    good = f'--data={data["labelled"]}'
    return {
        'missing dataset': ([f'--data={tmp_path / "missing.zip"}'], 'not found'),
        'corrupt dataset': ([f'--data={not_a_zip}'], 'Cannot open zip'),
        'cond without labels': ([f'--data={data["unlabelled"]}', '--cond=1'], 'requires labels'),
        'batch not divisible': ([good, '--batch=12', '--batch-gpu=8'], 'not divisible'),
        'resume and transfer': ([good, f'--resume={state_dir}', f'--transfer={a_file}'], 'cannot be specified at the same time'),
        'resume to nothing': ([good, f'--resume={tmp_path / "nowhere"}'], 'does not exist'),
        'resume dir without state': ([good, f'--resume={state_dir}'], 'no training-state'),
        'resume a non-state file': ([good, f'--resume={a_file}'], 'training-state'),
        'uncreatable outdir': ([good, f'--outdir={a_file / "sub"}'], '--outdir'),
        'family option with edm': ([good, '--sigma_tn=0.2'], 'requires --loss=ambient'),
        'ambient without sigma_tn': ([good, '--loss=ambient'], 'sigma_tn'),
        'bad betas': ([good, '--betas=0.9'], '--betas'),
        **_per_image_bad_cases(good, tmp_path),
    }

def _image_names(num=16):
    """The file names make_image_zip gives its images (as dataset.json names them)."""
    return [f'{i // 10:05d}/img{i:08d}.png' for i in range(num)]

def _levels_file(path, levels):
    path.write_text(json.dumps(levels))
    return str(path)

def _per_image_bad_cases(good, tmp_path):
    """--sigma_tn_per_image mistakes: refused in one line before the run directory exists."""
    names = _image_names()
    ok = _levels_file(tmp_path / 'ok.json', {name: 0.5 for name in names})
    def file(name, levels):
        return f'--sigma_tn_per_image={_levels_file(tmp_path / name, levels)}'
    unparsable = tmp_path / 'unparsable.json'
    unparsable.write_text('{"00000/img00000000.png": 0.5')
    ambient = [good, '--loss=ambient']
    return {
        'per-image with edm': ([good, f'--sigma_tn_per_image={ok}'], '--sigma_tn_per_image requires --loss=ambient'),
        'per-image with masking': ([good, '--loss=masking', '--mask_p=0.2', f'--sigma_tn_per_image={ok}'], 'requires --loss=ambient'),
        'per-image and sigma_tn': (ambient + ['--sigma_tn=0.5', f'--sigma_tn_per_image={ok}'], 'give --sigma_tn or --sigma_tn_per_image, not both'),
        'per-image file missing': (ambient + [f'--sigma_tn_per_image={tmp_path / "none.json"}'], 'no such file'),
        'per-image file unparsable': (ambient + [f'--sigma_tn_per_image={unparsable}'], 'not valid JSON'),
        'per-image file misses images': (ambient + [file('few.json', {name: 0.5 for name in names[:12]})],
                                         'no sigma_tn for 4 image(s) of the data set, e.g. 00001/img00000012.png'),
        'per-image file names other images': (ambient + [file('more.json', dict({name: 0.5 for name in names}, **{'00009/img00000099.png': 0.5}))],
                                              'names 1 image(s) the data set lacks, e.g. 00009/img00000099.png'),
        'per-image negative': (ambient + [file('neg.json', dict({name: 0.5 for name in names}, **{names[3]: -0.5}))], f'{names[3]}=-0.5'),
        'per-image zero': (ambient + [file('zero.json', dict({name: 0.5 for name in names}, **{names[3]: 0}))], f'{names[3]}=0'),
        'per-image nan': (ambient + [file('nan.json', dict({name: 0.5 for name in names}, **{names[3]: float('nan')}))], f'{names[3]}=nan'),
        'per-image at sigma_max': (ambient + [file('max.json', dict({name: 0.5 for name in names}, **{names[3]: 80.0}))], 'sigma_max=80'),
    }

PER_IMAGE_BAD_CASES = ['per-image with edm', 'per-image with masking', 'per-image and sigma_tn', 'per-image file missing',
                       'per-image file unparsable', 'per-image file misses images', 'per-image file names other images',
                       'per-image negative', 'per-image zero', 'per-image nan', 'per-image at sigma_max']

@pytest.mark.parametrize('case', ['missing dataset', 'corrupt dataset', 'cond without labels', 'batch not divisible',
                                  'resume and transfer', 'resume to nothing', 'resume dir without state',
                                  'resume a non-state file', 'uncreatable outdir', 'family option with edm',
                                  'ambient without sigma_tn', 'bad betas'] + PER_IMAGE_BAD_CASES)
def test_bad_input_gives_one_error_line_and_writes_nothing(data, tmp_path, case):
    args, message = _bad_cases(data, tmp_path)[case]
    outdir = tmp_path / 'out'
    if not any(a.startswith('--outdir') for a in args):
        args = [f'--outdir={outdir}'] + args
    result = CliRunner().invoke(train.main, args + ['--batch=8', '--cbase=16', '--cres=1'] if case != 'batch not divisible' else args)
    errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert result.exit_code == 1, result.output
    assert len(errors) == 1 and message in errors[0], result.output
    assert 'Traceback' not in result.output and not outdir.exists()

def test_invalid_choice_is_a_usage_error(data, tmp_path):
    result = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "out"}', f'--data={data["labelled"]}',
                                             '--loss=ambient', '--sigma_tn=0.2', '--ambient_split=bogus'])
    assert result.exit_code == 2 and "Invalid value for '--ambient_split'" in result.output
    assert not (tmp_path / 'out').exists()

def test_dry_run_prints_config_writes_nothing_and_leaves_ambient_unimported(data, tmp_path):
    already = 'ambient.method.config' in sys.modules
    result = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "out"}', f'--data={data["labelled"]}', '-n',
                                             '--optimizer=adamw', '--wd=0.01', '--betas=0.9,0.99', '--bf16=1', '--seed=7',
                                             '--blocks=2', '--attn=4', '--lr_rampup=0'])
    assert result.exit_code == 0, result.output
    assert 'Dry run; exiting.' in result.output and not (tmp_path / 'out').exists()
    options = json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2])
    assert options['optimizer_kwargs'] == dict(class_name='torch.optim.AdamW', lr=1e-3, betas=[0.9, 0.99], eps=1e-8, weight_decay=0.01)
    assert options['bf16'] is True and options['seed'] == 7 and options['total_kimg'] == 200000
    assert options['network_kwargs']['num_blocks'] == 2 and options['network_kwargs']['attn_resolutions'] == [4]
    assert options['lr_rampup_kimg'] == 0
    assert options['run_dir'].endswith('00000-tiny-uncond-ddpmpp-edm-gpus1-batch512-bf16')
    assert already or 'ambient.method.config' not in sys.modules

def test_ambient_family_names_the_run(data, tmp_path):
    result = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "out"}', f'--data={data["labelled"]}', '-n',
                                             '--loss=ambient', '--sigma_tn=0.2', '--seed=1'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2])
    assert options['loss_kwargs']['class_name'] != 'training.loss.EDMLoss'
    assert '-fp32-ambient' in options['run_dir']

def test_transfer_sets_edm_options_in_edms_order(data, tmp_path):
    pkl = tmp_path / 'network-snapshot-000000.pkl'
    pkl.write_bytes(b'not loaded by a dry run')
    result = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "out"}', f'--data={data["labelled"]}', '-n',
                                             f'--transfer={pkl}', '--seed=3'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2])
    # EDM: transfer learning switches the EMA ramp-up off; seed, resume_pkl, ema_rampup_ratio and run_dir close the file.
    assert list(options)[-4:] == ['seed', 'resume_pkl', 'ema_rampup_ratio', 'run_dir']
    assert options['resume_pkl'] == str(pkl) and options['ema_rampup_ratio'] is None

#----------------------------------------------------------------------------

def test_fast_path_options_are_recorded_only_when_chosen(data, tmp_path):
    def options(*extra):
        result = CliRunner().invoke(train.main, [f'--outdir={tmp_path / "out"}', f'--data={data["labelled"]}', '-n', '--seed=1', *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2]), result.output
    plain, out = options()
    assert not {'compile', 'channels_last', 'tf32'} & set(plain) and 'fused' not in plain['optimizer_kwargs']
    assert 'Fast paths:' not in out
    fast, out = options('--compile=1', '--channels_last=1', '--fused=1', '--tf32=1', '--bf16=1')
    assert fast['compile'] is fast['channels_last'] is fast['tf32'] is fast['optimizer_kwargs']['fused'] is True
    assert 'Fast paths:              compile, channels_last, fused, tf32' in out
    # The run name says the precision only, as EDM's does.
    assert fast['run_dir'].endswith('-bf16') and plain['run_dir'].endswith('-fp32')

#----------------------------------------------------------------------------
# --sigma_tn_per_image

def _losses(run_dir):
    """Every tick's Loss/* statistics of a run."""
    return [{k: v for k, v in json.loads(line).items() if k.startswith('Loss/')} for line in (run_dir / 'stats.jsonl').read_text().splitlines()]

@pytest.mark.parametrize('split', ['edm', 'uniform'])
def test_constant_per_image_file_trains_bit_for_bit_like_sigma_tn(data, tmp_path, split):
    outdir = tmp_path / 'runs'
    levels = _levels_file(tmp_path / 'constant.json', {name: 0.5 for name in _image_names()})
    # x-flips and the (ambient-safe) augmentation on: flipped items carry their image's value, one draw augments both.
    args = [f'--outdir={outdir}', f'--data={data["unlabelled"]}', '--loss=ambient', f'--ambient_split={split}', '--iters=3',
            '--seed=3', '--xflip=1', '--augment=0.5'] + TINY
    finish(run_train(args + ['--sigma_tn=0.5']))
    finish(run_train(args + [f'--sigma_tn_per_image={levels}']))
    by_number, by_file = sorted(outdir.iterdir())
    assert by_file.name.endswith(f'-ambient-tnper-image-{split}') and by_number.name.endswith(f'-ambient-tn0.5-{split}')
    assert_same_training(final_state(by_number), final_state(by_file))
    assert _losses(by_number) == _losses(by_file) and _losses(by_file)[-1]['Loss/ambient/above_sigma_tn']['num'] > 0

    # The run records the file: path, sha256 of its content, and the values' size, min, median and max.
    options = json.loads((by_file / 'training_options.json').read_text())
    assert options['loss_kwargs']['sigma_tn'] == 'per_image' and options['dataset_kwargs']['sigma_tn'] == 'per_image'
    record = options['dataset_kwargs']['sigma_tn_per_image']
    assert record == dict(path=levels, sha256=hashlib.sha256(pathlib.Path(levels).read_bytes()).hexdigest(), size=16,
                          min=0.5, median=0.5, max=0.5)

    # Resuming needs the same file: another one is refused in one line before anything is written.
    other = _levels_file(tmp_path / 'other.json', {name: 0.25 for name in _image_names()})
    for resume_args, key in [([f'--sigma_tn_per_image={other}'], 'dataset_kwargs.sigma_tn_per_image'),
                             (['--sigma_tn=0.5'], 'loss_kwargs.sigma_tn')]:
        result = CliRunner().invoke(train.main, args + resume_args + [f'--resume={by_file}', '--iters=4'])
        assert result.exit_code == 1 and f'--resume: {key}' in result.output, result.output
    assert len(os.listdir(outdir)) == 2
