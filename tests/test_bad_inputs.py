"""Issue 11: a table of bad inputs across all seven CLIs.

Each row must end with a non-zero exit, exactly one `Error:` line that names the problem, no traceback, and no
new or changed file in its destination (a fresh folder per row), in the shared inputs, or on the test mounts.
Most rows run in-process through click's CliRunner (importing torch once); rows marked `proc` run as real
subprocesses. Read-only and full tmpfs mounts need root; their rows skip elsewhere.
"""

import io
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import dataset_tool # pylint: disable=wrong-import-position
import fid # pylint: disable=wrong-import-position
import generate # pylint: disable=wrong-import-position
import train # pylint: disable=wrong-import-position
from ambient import export_noisy, memorization, sweep # pylint: disable=wrong-import-position
from training.dataset import load_images # pylint: disable=wrong-import-position
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from test_experiments_sweep import fake # pylint: disable=wrong-import-position,unused-import # The sweep's fake-tools fixture.

CLIS = {'train': train.main, 'generate': generate.main, 'fid': fid.main, 'dataset_tool': dataset_tool.cli,
        'memorization': memorization.cli, 'export_noisy': export_noisy.main, 'sweep': sweep.main}
SCRIPTS = {'train': ['train.py'], 'generate': ['generate.py'], 'fid': ['fid.py'], 'dataset_tool': ['dataset_tool.py'],
           'memorization': ['-m', 'ambient.memorization'], 'export_noisy': ['-m', 'ambient.export_noisy'],
           'sweep': ['-m', 'ambient.sweep']}
ENV = dict(os.environ, OMP_NUM_THREADS='1')
TINY = ['--batch=4', '--cbase=8', '--cres=1', '--augment=0', '--dropout=0', '--tick=1', '--snap=1', '--dump=1']

def run_cli(cli, args, proc=False, timeout=300):
    """(exit status, combined output) of one CLI call, in-process or as a subprocess."""
    if proc:
        p = subprocess.run([sys.executable, *SCRIPTS[cli], *args], cwd=str(REPO), env=ENV, capture_output=True,
                           text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr
    result = CliRunner().invoke(CLIS[cli], args)
    # Anything but click's own exit (an uncaught exception) would have been a traceback on the command line.
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    return result.exit_code, result.output

#----------------------------------------------------------------------------
# Inputs, built once.

def _png(array):
    buf = io.BytesIO()
    PIL.Image.fromarray(array).save(buf, format='png')
    return buf.getvalue()

def _folder(path, images, labels=None):
    path.mkdir()
    for i, im in enumerate(images):
        (path / f'img{i:03d}.png').write_bytes(_png(im) if isinstance(im, np.ndarray) else im)
    if labels is not None:
        (path / 'dataset.json').write_text(json.dumps({'labels': [[f'img{i:03d}.png', l] for i, l in enumerate(labels)]}))
    return path

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('inputs')
    f = dict(root=root)
    f['zip'] = root / 'digits.zip'
    dataset_tool.convert_dataset('digits', str(f['zip']), subset=20)
    images, _ = load_images(f['zip'])
    f['images'] = _folder(root / 'images', [im[0] for im in images])
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, [8, 8], dtype=np.uint8) for _ in range(6)]

    # A zip with one member's bytes changed (CRC mismatch), and one cut in the middle.
    data = bytearray(f['zip'].read_bytes())
    with zipfile.ZipFile(f['zip']) as z:
        info = z.infolist()[3]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    f['crc_zip'] = root / 'crc.zip'
    f['crc_zip'].write_bytes(bytes(data))
    f['cut_zip'] = root / 'cut.zip'
    f['cut_zip'].write_bytes(f['zip'].read_bytes()[:len(data) // 2])

    good_png = _png(grey[0])
    f['mixed'] = _folder(root / 'mixed', grey[:5] + [rng.integers(0, 256, [16, 16], dtype=np.uint8)])
    f['garbage_png'] = _folder(root / 'garbage_png', grey[:5] + [b'this is not a png'])
    f['cut_png'] = _folder(root / 'cut_png', grey[:5] + [good_png[:len(good_png) // 2]])
    f['str_labels'] = _folder(root / 'str_labels', grey[:4], labels=['cat', 'dog', 'cat', 'dog'])
    f['neg_labels'] = _folder(root / 'neg_labels', grey[:4], labels=[0, -1, 1, 0])

    f['text'] = root / 'notes.txt'
    f['text'].write_text('my notes\n')
    f['nan_ref'] = root / 'nan_ref.npz'
    np.savez(f['nan_ref'], mu=np.full(2048, np.nan), sigma=np.eye(2048))
    f['ref'] = root / 'ref.npz'
    np.savez(f['ref'], mu=np.zeros(2048), sigma=np.eye(2048))

    # A tiny trained run: snapshot 000000 and training state 000000; and the same network with NaN weights.
    run = root / 'run'
    p = subprocess.run([sys.executable, 'train.py', f'--outdir={run}', '--nosubdir', f'--data={f["zip"]}', '--iters=2',
                        '--seed=0'] + TINY, cwd=str(REPO), env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    f['run'], f['pkl'], f['state'] = run, run / 'network-snapshot-000000.pkl', run / 'training-state-000000.pt'
    with open(f['pkl'], 'rb') as fp:
        snap = pickle.load(fp)
    with torch.no_grad():
        for param in snap['ema'].parameters():
            param.fill_(float('nan'))
    f['nan_pkl'] = root / 'nan.pkl'
    with open(f['nan_pkl'], 'wb') as fp:
        pickle.dump(snap, fp)
    return f

@pytest.fixture(scope='module')
def mounts(tmp_path_factory):
    """64 KiB tmpfs mounts: `ro` read-only, `full` filled up, `small` empty (fills up while writing); {} without root."""
    found = {}
    if hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('mount'):
        root = tmp_path_factory.mktemp('mounts')
        for name in ('ro', 'full', 'small'):
            d = root / name
            d.mkdir()
            if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(d)], capture_output=True).returncode == 0:
                found[name] = d
        if 'full' in found:
            try:
                with open(found['full'] / 'filler', 'wb') as fp:
                    while True:
                        fp.write(b'\0' * 4096)
                        fp.flush()
            except OSError:
                pass
        if 'ro' in found:
            (found['ro'] / 'keep.txt').write_text('x')
            if subprocess.run(['mount', '-o', 'remount,ro', str(found['ro'])], capture_output=True).returncode != 0:
                subprocess.run(['umount', str(found.pop('ro'))], capture_output=True)
    yield found
    for d in found.values():
        subprocess.run(['umount', str(d)], capture_output=True)

#----------------------------------------------------------------------------
# The table: (id, cli, args, needle in the one Error: line). {out} is a fresh folder per row; {ro}, {full} and
# {small} are the mounts; other names are the inputs above. A row whose id starts with "proc-" runs as a subprocess.

T = ['--outdir={out}/runs', '--data={zip}', '--iters=1'] + TINY
G = ['--network={pkl}', '--outdir={out}/gen', '--seeds=0-1']
M = ['calc', '--images={images}', '--data={zip}', '--detector=pixel', '--cache-dir={out}/cache']
E = ['--data={zip}', '--sigma_tn=0.5']

ROWS = [
    # train.py: every float option finite and in range, before anything is written.
    ('proc-train-lr-nan', 'train', T + ['--lr=nan'], "'--lr': 'nan' is not a finite"),
    ('train-lr-inf', 'train', T + ['--lr=inf'], "'--lr': 'inf' is not a finite"),
    ('train-lr-negative', 'train', T + ['--lr=-1'], "'--lr'"),
    ('train-lr-huge', 'train', T + ['--lr=1e38'], "'--lr'"),
    ('train-dropout-nan', 'train', T + ['--dropout=nan'], "'--dropout'"),
    ('train-dropout-range', 'train', T + ['--dropout=2'], "'--dropout'"),
    ('train-duration-nan', 'train', T + ['--duration=nan'], "'--duration'"),
    ('train-duration-inf', 'train', T + ['--duration=inf'], "'--duration'"),
    ('train-ema-nan', 'train', T + ['--ema=nan'], "'--ema'"),
    ('train-augment-inf', 'train', T + ['--augment=inf'], "'--augment'"),
    ('train-eps-nan', 'train', T + ['--eps=nan'], "'--eps'"),
    ('train-ls-inf', 'train', T + ['--ls=inf'], "'--ls'"),
    ('train-wd-nan', 'train', T + ['--wd=nan'], "'--wd'"),
    ('train-lr-rampup-nan', 'train', T + ['--lr_rampup=nan'], "'--lr_rampup'"),
    ('train-betas-nan', 'train', T + ['--betas=nan,0.9'], '--betas'),
    ('train-sigma-tn-nan', 'train', T + ['--loss=ambient', '--sigma_tn=nan'], "'--sigma_tn'"),
    ('train-sigma-tn-without-ambient', 'train', T + ['--sigma_tn=0.5'], 'requires --loss=ambient'),
    ('train-seed-negative', 'train', T + ['--seed=-1'], "'--seed'"),
    ('train-noise-seed-negative', 'train', T + ['--loss=ambient', '--sigma_tn=0.5', '--noise_seed=-1'], "'--noise_seed'"),
    ('train-cbase-zero', 'train', T + ['--cbase=0'], "'--cbase'"),
    ('train-cbase-negative', 'train', T + ['--cbase=-4'], "'--cbase'"),
    ('train-cres-zero', 'train', T + ['--cres=0'], 'positive integers'),
    ('train-cres-too-deep', 'train', T + ['--cres=1,2,3,4,5'], 'Cannot build the network for 8x8'),
    ('train-cres-too-deep-vp', 'train', T + ['--precond=vp', '--cres=1,1,1,1,1'], 'Cannot build the network'),
    ('train-fp16-bf16', 'train', T + ['--fp16=1', '--bf16=1'], 'cannot be combined'),
    ('train-transfer-garbage', 'train', T + ['--transfer={text}'], 'is not a network snapshot pickle'),
    ('train-transfer-missing', 'train', T + ['--transfer={out}/missing.pkl'], 'no such file'),
    ('train-resume-snapshot', 'train', T + ['--resume={pkl}'], 'training-state-*.pt'),
    ('train-data-missing', 'train', T[:1] + ['--data={out}/missing.zip'] + T[2:], 'not found'),
    ('train-data-cut-zip', 'train', T[:1] + ['--data={cut_zip}'] + T[2:], 'Cannot open zip'),
    ('proc-train-data-crc-zip', 'train', T[:1] + ['--data={crc_zip}'] + T[2:], 'corrupt (CRC check failed)'),
    ('train-data-mixed-sizes', 'train', T[:1] + ['--data={mixed}'] + T[2:], 'all images must match'),
    ('train-data-mixed-sizes-nocache', 'train', T[:1] + ['--data={mixed}', '--cache=0'] + T[2:], 'all images must match'),
    ('train-data-garbage-png', 'train', T[:1] + ['--data={garbage_png}'] + T[2:], 'not a recognised image format'),
    ('proc-train-data-cut-png', 'train', T[:1] + ['--data={cut_png}'] + T[2:], 'Cannot read image img005.png'),
    ('train-cond-without-labels', 'train', T[:1] + ['--data={images}', '--cond=1'] + T[2:], 'requires labels'),
    ('train-outdir-readonly', 'train', ['--outdir={ro}/runs'] + T[1:], 'read-only file system'),
    ('train-outdir-full', 'train', ['--outdir={full}/runs'] + T[1:], 'no space left'),
    ('train-outdir-file', 'train', ['--outdir={text}'] + T[1:], 'not a directory'),

    # generate.py
    ('proc-generate-sigma-max-nan', 'generate', G + ['--sigma_max=nan'], "'--sigma_max'"),
    ('generate-sigma-max-inf', 'generate', G + ['--sigma_max=inf'], "'--sigma_max'"),
    ('generate-sigma-min-nan', 'generate', G + ['--sigma_min=nan'], "'--sigma_min'"),
    ('generate-s-noise-nan', 'generate', G + ['--S_noise=nan'], "'--S_noise'"),
    ('generate-s-churn-inf', 'generate', G + ['--S_churn=inf'], "'--S_churn'"),
    ('generate-s-max-nan', 'generate', G + ['--S_max=nan'], "'--S_max'"),
    ('generate-rho-nan', 'generate', G + ['--rho=nan'], "'--rho'"),
    ('generate-sigma-order', 'generate', G + ['--sigma_min=10', '--sigma_max=1'], 'must be less than --sigma_max'),
    ('generate-s-min-max-order', 'generate', G + ['--S_min=2', '--S_max=1'], 'must not exceed --S_max'),
    ('generate-sigma-max-overflow', 'generate', G + ['--sigma_max=1e30'], 'NaN/Inf'),
    ('proc-generate-nan-network', 'generate', ['--network={nan_pkl}'] + G[1:], 'Sampling produced NaN/Inf'),
    ('generate-training-state', 'generate', ['--network={state}'] + G[1:], 'is a training-state file'),
    ('generate-network-garbage', 'generate', ['--network={text}'] + G[1:], 'Cannot unpickle'),
    ('generate-network-missing', 'generate', ['--network={out}/none.pkl'] + G[1:], 'No such file'),
    ('generate-network-empty-dir', 'generate', ['--network={images}'] + G[1:], 'directory without network-snapshot'),
    ('generate-outdir-file', 'generate', G[:1] + ['--outdir={text}'] + G[2:], 'not a directory'),
    ('generate-outdir-readonly', 'generate', G[:1] + ['--outdir={ro}/gen'] + G[2:], 'read-only file system'),
    ('generate-outdir-full', 'generate', G[:1] + ['--outdir={full}/gen'] + G[2:], 'no space left'),
    ('generate-grid-readonly', 'generate', G + ['--grid={ro}/grid.png'], 'read-only file system'),
    ('generate-seeds-garbage', 'generate', G[:2] + ['--seeds=abc'], 'Invalid integer list'),

    # fid.py
    ('fid-calc-images-missing', 'fid', ['calc', '--images={out}/missing', '--ref={ref}'], 'dataset not found'),
    ('fid-calc-nan-ref', 'fid', ['calc', '--images={images}', '--ref={nan_ref}', '--num=2'], 'NaN or Inf'),
    ('fid-calc-garbage-ref', 'fid', ['calc', '--images={images}', '--ref={text}', '--num=2'], 'Cannot read reference'),
    ('fid-calc-num-one', 'fid', ['calc', '--images={images}', '--ref={ref}', '--num=1'], "'--num'"),
    ('fid-ref-dest-text', 'fid', ['ref', '--data={zip}', '--dest={text}'], 'refusing to overwrite'),
    ('fid-ref-dest-readonly', 'fid', ['ref', '--data={zip}', '--dest={ro}/ref.npz'], 'read-only file system'),
    ('fid-ref-dest-full', 'fid', ['ref', '--data={zip}', '--dest={full}/ref.npz'], 'no space left'),
    ('fid-ref-data-missing', 'fid', ['ref', '--data={out}/missing', '--dest={out}/ref.npz'], 'dataset not found'),

    # dataset_tool.py
    ('proc-dataset-tool-seed-negative', 'dataset_tool', ['--source=digits', '--dest={out}/d.zip', '--subset=5', '--seed=-1'], "'--seed'"),
    ('dataset-tool-dest-text', 'dataset_tool', ['convert', '--source=digits', '--dest={text}'], 'already exists'),
    ('dataset-tool-string-labels', 'dataset_tool', ['convert', '--source={str_labels}', '--dest={out}/d.zip'], 'not a class integer'),
    ('dataset-tool-negative-labels', 'dataset_tool', ['convert', '--source={neg_labels}', '--dest={out}/d.zip'], 'not a class integer'),
    ('dataset-tool-dest-readonly', 'dataset_tool', ['convert', '--source=digits', '--dest={ro}/d.zip'], 'read-only file system'),
    ('dataset-tool-dest-fills-up', 'dataset_tool', ['convert', '--source=digits', '--dest={small}/d.zip'], 'No space left on device'),
    ('dataset-tool-folder-fills-up', 'dataset_tool', ['convert', '--source=digits', '--dest={small}/d'], 'No space left on device'),
    ('dataset-tool-cut-zip', 'dataset_tool', ['convert', '--source={cut_zip}', '--dest={out}/d.zip'], 'cut.zip'),
    ('dataset-tool-resolution', 'dataset_tool', ['convert', '--source=digits', '--dest={out}/d.zip', '--resolution=7x7'], 'power of two'),
    ('dataset-tool-subset-zero', 'dataset_tool', ['convert', '--source=digits', '--dest={out}/d.zip', '--subset=0'], 'positive'),

    # python -m ambient.memorization
    ('memorization-dest-file', 'memorization', M + ['--dest={text}'], 'not a directory'),
    ('memorization-dest-readonly', 'memorization', M + ['--dest={ro}/mem'], 'read-only file system'),
    ('memorization-dest-full', 'memorization', M + ['--dest={full}/mem'], 'no space left'),
    ('memorization-images-missing', 'memorization', ['calc', '--images={out}/missing'] + M[2:] + ['--dest={out}/mem'], 'dataset not found'),
    ('memorization-thresholds-nan', 'memorization', M + ['--dest={out}/mem', '--thresholds=nan'], 'thresholds'),
    ('memorization-data-crc-zip', 'memorization', M[:2] + ['--data={crc_zip}'] + M[3:] + ['--dest={out}/mem'], 'crc.zip'),

    # python -m ambient.export_noisy
    ('export-noisy-sigma-nan', 'export_noisy', ['--data={zip}', '--sigma_tn=nan', '--dest={out}/n'], "'--sigma_tn'"),
    ('export-noisy-sigma-inf', 'export_noisy', ['--data={zip}', '--sigma_tn=inf', '--dest={out}/n'], "'--sigma_tn'"),
    ('export-noisy-dest-file', 'export_noisy', E + ['--dest={text}'], 'not a directory'),
    ('export-noisy-dest-readonly', 'export_noisy', E + ['--dest={ro}/n'], 'read-only file system'),
    ('export-noisy-dest-full', 'export_noisy', E + ['--dest={full}/n'], 'no space left'),
    ('export-noisy-cut-zip', 'export_noisy', ['--data={cut_zip}', '--sigma_tn=0.5', '--dest={out}/n'], 'Cannot open zip'),

    # python -m ambient.sweep
    ('sweep-sigma-twice', 'sweep', ['--outdir={out}/sw', '--data={zip}', '--sigma_tn=0.5,0.5'], 'names a value twice'),
    ('sweep-sigma-nan', 'sweep', ['--outdir={out}/sw', '--data={zip}', '--sigma_tn=nan'], 'finite'),
    ('sweep-source-and-heldout', 'sweep', ['--outdir={out}/sw', '--source=digits', '--subset=10', '--heldout={zip}'], '--heldout applies to --data'),
    ('sweep-dry-run-cut-zip', 'sweep', ['--outdir={out}/sw', '--data={cut_zip}', '--dry-run'], 'Cannot open zip'),
    ('sweep-dry-run-text-data', 'sweep', ['--outdir={out}/sw', '--data={text}', '--dry-run'], 'must be a folder or a .zip'),
]

def _tree(folders):
    """{path: (size, mtime)} of every file and folder below the given folders."""
    state = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                state[path] = (st.st_size if name in filenames else None, st.st_mtime_ns)
    return state

def test_table_size():
    assert len(ROWS) >= 60 and len({r[0] for r in ROWS}) == len(ROWS)
    assert {r[1] for r in ROWS} == set(CLIS)

@pytest.mark.parametrize('row', ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, inputs, mounts, tmp_path):
    name, cli, args, needle = row
    needed = {m for m in ('ro', 'full', 'small') if any('{' + m + '}' in a for a in args)}
    if needed - set(mounts):
        pytest.skip(f'needs root and tmpfs mounts ({", ".join(sorted(needed))})')
    out = tmp_path / 'out'
    out.mkdir()
    values = dict({k: str(v) for k, v in inputs.items()}, out=str(out), **{k: str(v) for k, v in mounts.items()})
    args = [a.format(**values) for a in args]
    watched = [out, inputs['root'], *mounts.values()]
    before = _tree(watched)
    code, output = run_cli(cli, args, proc=name.startswith('proc-'))
    errors = [line for line in output.splitlines() if line.startswith('Error:')]
    assert code != 0, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), output[-3000:]
    after = _tree(watched)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))

#----------------------------------------------------------------------------
# Cases where working (or keeping what is good) is the right answer.

def test_generate_accepts_a_run_directory(inputs, tmp_path):
    code, output = run_cli('generate', [f'--network={inputs["run"]}', f'--outdir={tmp_path / "gen"}', '--seeds=0-1'])
    assert code == 0 and 'network-snapshot-000000.pkl' in output, output
    assert sorted(os.listdir(tmp_path / 'gen')) == ['000000.png', '000001.png']

def test_memorization_recomputes_a_corrupt_cache(inputs, tmp_path):
    args = ['calc', f'--images={inputs["images"]}', f'--data={inputs["zip"]}', '--detector=pixel',
            f'--cache-dir={tmp_path / "cache"}', f'--dest={tmp_path / "mem"}']
    assert run_cli('memorization', args)[0] == 0
    (cache,) = (tmp_path / 'cache').iterdir()
    cache.write_bytes(b'\x93NUMPY garbage')
    shutil.rmtree(tmp_path / 'mem')
    code, output = run_cli('memorization', args)
    assert code == 0 and 'unreadable feature cache' in output and str(cache) in output, output
    assert np.load(cache).shape[0] == 20

@pytest.mark.slow
def test_training_divergence_keeps_the_last_good_snapshot_and_state(inputs, tmp_path):
    """AdamW's decay factor (1 - lr * wd) passes -1 as the learning rate ramps up: the loss turns NaN before kimg 3."""
    outdir = tmp_path / 'run'
    base = [f'--outdir={outdir}', '--nosubdir', f'--data={inputs["zip"]}', '--seed=0', '--optimizer=adamw', '--wd=1'] + TINY
    code, output = run_cli('train', base + ['--lr=1e4', '--iters=1000'], proc=True)
    errors = [line for line in output.splitlines() if line.startswith('Error:')]
    assert code != 0 and 'Traceback' not in output, output[-3000:]
    assert len(errors) == 1 and 'NaN/Inf' in errors[0] and 'at kimg' in errors[0] and 'Last good snapshot' in errors[0], output[-3000:]
    kept = {p.name: p.read_bytes() for p in outdir.iterdir() if p.suffix in ('.pkl', '.pt', '.safetensors')}
    assert 'training-state-000001.pt' in kept and not [n for n in os.listdir(outdir) if '.tmp-' in n]
    diverged_kimg = float(re.search(r'at kimg ([0-9.]+)', errors[0]).group(1))
    assert all(int(n.split('-')[-1].split('.')[0]) < diverged_kimg for n in kept)
    for name in kept:
        if name.endswith('.pkl'):
            with open(outdir / name, 'rb') as fp:
                assert all(torch.isfinite(p).all() for p in pickle.load(fp)['ema'].parameters()), name
    # Resuming from the last good state with a sane learning rate works.
    last_state = max(n for n in kept if n.endswith('.pt'))
    steps = int(last_state.split('-')[-1].split('.')[0]) * 250 + 2
    code, output = run_cli('train', base + ['--lr=1e-3', f'--iters={steps}', f'--resume={outdir / last_state}'], proc=True)
    assert code == 0, output[-3000:]

def test_sweep_without_heldout_finishes_its_report(fake):
    """--data without --heldout: the sweep writes sweep.md and report.md without the quality column, also on a rerun."""
    cfg = fake.config(heldout=None)
    for _ in range(2):
        sweep.run_sweep(cfg, tools=fake.tools)
        assert (fake.out / 'sweep.md').is_file() and (fake.out / 'report.md').is_file()
    assert 'Quality skipped' in (fake.out / 'sweep.md').read_text()
