"""Tests of ambient/experiments/sweep.py: stage orchestration, skipping, resuming, and (slow) the real CLIs end to end."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import PIL.Image
import pytest

import dnnlib
from ambient.experiments import sweep, sweep_stages
from training import dataset

#----------------------------------------------------------------------------
# Stand-ins for train.py / generate.py / ambient.memorization: same arguments and outputs, no networks.
# Every call is appended to $SWEEP_CALLS so that tests can see which stages ran.

FAKE_COMMON = '''
import json, os, sys
args = dict(a[2:].split('=', 1) if '=' in a else (a[2:], True) for a in sys.argv[1:] if a.startswith('--'))
with open(os.environ['SWEEP_CALLS'], 'a') as f:
    f.write(json.dumps(dict(tool=TOOL, args=args)) + '\\n')
'''

FAKE_TRAIN = '''
# Two snapshots (kimg 1 and 2, batch 8) after the untrained kimg-0 one; crashes after kimg 1 when asked.
out = args['outdir']
os.makedirs(out, exist_ok=True)
json.dump(dict(batch_size=8), open(os.path.join(out, 'training_options.json'), 'w'))
start = 1
if 'resume' in args:
    start = int(args['resume'][-9:-3]) + 1
else:
    open(os.path.join(out, 'network-snapshot-000000.pkl'), 'w').write('untrained')
for kimg in range(start, 3):
    open(os.path.join(out, f'network-snapshot-{kimg:06d}.pkl'), 'w').write(args.get('sigma_tn', '0'))
    open(os.path.join(out, f'training-state-{kimg:06d}.pt'), 'w').write('state')
    with open(os.path.join(out, 'stats.jsonl'), 'a') as f:
        f.write(json.dumps({'Progress/kimg': {'num': 1, 'mean': kimg + 0.024}}) + '\\n')
    if os.environ.get('FAKE_TRAIN_CRASH') and kimg == 1:
        sys.exit(3)
'''

FAKE_GENERATE = '''
import numpy as np, PIL.Image
lo, hi = (int(x) for x in args['seeds'].split('-'))
os.makedirs(args['outdir'])
sigma = float(open(args['network']).read())
for seed in range(lo, hi + 1):
    rng = np.random.RandomState(seed)
    img = (rng.rand(8, 8) * 255 * (1 - sigma / 2)).astype(np.uint8)
    PIL.Image.fromarray(img).save(os.path.join(args['outdir'], f'{seed:06d}.png'))
PIL.Image.fromarray(np.zeros([16, 16], np.uint8)).save(args['grid'])
'''

FAKE_MEMORIZATION = '''
# Per-sample results in neighbors.csv, and metrics.json consistent with them: EDM copies the first third of its
# samples, ambient models the first sixth, held-out images none; similarity 0.96 for copies, 0.5 otherwise.
os.makedirs(args['dest'])
n = len([f for f in os.listdir(args['images'])]) if os.path.isdir(args['images']) else 5
copies = 0 if not os.path.isdir(args['images']) else (n // 3 if 'sigma_tn-0' + os.sep in args['images'] else n // 6)
ratio = [0.1 if i < copies else 0.9 for i in range(n)]
sim = [0.96 if i < copies else 0.5 for i in range(n)]
with open(os.path.join(args['dest'], 'neighbors.csv'), 'w') as f:
    f.write('file,nearest,similarity,second,second_similarity,l2_nearest,l2_distance,ratio\\n')
    for i in range(n):
        f.write(f'{i:06d}.png,0,{sim[i]},1,0.4,0,1.0,{ratio[i]}\\n')
metrics = dict(num_samples=n, detector=dict(name=args['detector']), similarity_mean=sum(sim) / n,
               fraction_above={'0.9': copies / n, '0.95': copies / n}, ratio_fraction=copies / n)
for name in ('histogram.png', 'nearest.png'):
    open(os.path.join(args['dest'], name), 'w').write('')
json.dump(metrics, open(os.path.join(args['dest'], 'metrics.json'), 'w'))
'''

FAKE_FIGURES = '''
import numpy as np, PIL.Image
PIL.Image.fromarray(np.zeros([16, 16], np.uint8)).save(args['dest'], format='png')
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake tools, a calls log, and small real-digit training / held-out zips."""
    tools = {}
    for tool, body in [('train', FAKE_TRAIN), ('generate', FAKE_GENERATE), ('memorization', FAKE_MEMORIZATION),
                       ('figures', FAKE_FIGURES)]:
        path = tmp_path / f'fake_{tool}.py'
        path.write_text(f'TOOL = {tool!r}\n' + FAKE_COMMON + textwrap.dedent(body))
        tools[tool] = [sys.executable, str(path)]
    calls = tmp_path / 'calls.jsonl'
    monkeypatch.setenv('SWEEP_CALLS', str(calls))
    sklearn_datasets = pytest.importorskip('sklearn.datasets')
    d = sklearn_datasets.load_digits()
    images = np.rint(d.images[:120] * (255 / 16)).astype(np.uint8)[:, None]
    dataset.write_image_zip(images[:20], None, tmp_path / 'train.zip')
    dataset.write_image_zip(images[20:], d.target[20:120], tmp_path / 'heldout.zip')

    def read_calls():
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    def config(**kw):
        opts = dict(data=str(tmp_path / 'train.zip'), heldout=str(tmp_path / 'heldout.zip'), sigma_tn='0,0.5',
                    every=1, samples=6, train_opts=('--iters=10',))
        opts.update(kw)
        return sweep.make_config(str(tmp_path / 'out'), **opts)

    return dnnlib.EasyDict(tools=tools, calls=read_calls, config=config, out=tmp_path / 'out')


def _stage_count(calls, tool):
    return sum(1 for c in calls if c['tool'] == tool)

#----------------------------------------------------------------------------

def test_sweep_writes_every_output_and_skips_finished_stages(fake):
    summary = sweep.run_sweep(fake.config(), tools=fake.tools)
    calls = fake.calls()
    assert _stage_count(calls, 'train') == 2
    assert _stage_count(calls, 'generate') == 4 # Two sigma_tn x snapshots kimg 1 and 2 (kimg 0 is untrained).
    assert _stage_count(calls, 'memorization') == 5 # ... plus the held-out baseline.
    train_args = [c['args'] for c in calls if c['tool'] == 'train']
    assert train_args[0]['loss'] == 'edm' and 'sigma_tn' not in train_args[0]
    assert train_args[1]['loss'] == 'ambient' and train_args[1]['sigma_tn'] == '0.5'
    assert all(a['iters'] == '10' and a['seed'] == '0' and a['nosubdir'] for a in train_args)

    for name in ('sweep.json', 'sweep.md', 'pareto.png', 'curves.png', 'report.md', 'figures/denoise.png',
                 'figures/trajectory-sigma_tn-0.5.png'):
        assert (fake.out / name).is_file(), name
    figure_args = [c['args'] for c in calls if c['tool'] == 'figures']
    assert len(figure_args) == 2 and figure_args[1]['sigma_tn'] == '0.5' and figure_args[1]['noise_seed'] == '0'
    saved = json.loads((fake.out / 'sweep.json').read_text())
    rows = saved['rows']
    assert [(r['sigma_tn'], r['kimg']) for r in rows] == [(0, 1.024), (0, 2.024), (0.5, 1.024), (0.5, 2.024)]
    assert rows[0]['nimg'] == 1024 and rows[0]['iters'] == 128 and rows[0]['epochs'] == pytest.approx(1024 / 20)
    assert all(r['fd'] is not None and r['fd'] > 0 for r in rows)
    assert rows[0]['ratio_fraction'] == pytest.approx(1 / 3) and rows[2]['ratio_fraction'] == pytest.approx(1 / 6)
    assert all(r['seed'] == 0 for r in rows)
    assert saved['quality_metric'] == 'FD_heldout' and saved['baseline']['num_samples'] == 5
    # The fake ambient samples are darker, hence farther from real digits: fd and memorization trade off.
    assert sorted(saved['pareto_front']) == sorted(summary['pareto_front'])
    md = (fake.out / 'sweep.md').read_text()
    assert md.count('\n| 0 (EDM) | 0 |') == 2 and md.count('\n| 0.5 | 0 |') == 2 and '33.3%' in md
    report = (fake.out / 'report.md').read_text()
    assert 'FD_heldout' in report and 'ratio' in report and '| ambient sigma_tn=0.5 | 1 |' in report
    # The quality reference: the training images scored as if they were samples.
    assert saved['training_set_quality'] > 0 and f'training images themselves score FD_heldout {saved["training_set_quality"]:.2f}' in report
    # The report states the resolution of its fractions and does not present pixel-space similarity as the paper's.
    assert 'over 6 samples, so one sample is 16.7%' in report and 'not comparable with the paper' in report
    assert not list(fake.out.rglob('*.tmp-*'))

    n = len(calls)
    sweep.run_sweep(fake.config(), tools=fake.tools)
    assert len(fake.calls()) == n # Nothing ran again.
    assert json.loads((fake.out / 'sweep.json').read_text())['rows'] == rows


def test_moved_sweep_folder_is_still_done(fake, tmp_path):
    # A sweep folder copied to another path (or machine) keeps its trained models: the record names its own folder.
    sweep.run_sweep(fake.config(every=0), tools=fake.tools)
    n = _stage_count(fake.calls(), 'train')
    shutil.move(str(fake.out), str(tmp_path / 'moved'))
    cfg = sweep.make_config(str(tmp_path / 'moved'), data=str(tmp_path / 'train.zip'), heldout=str(tmp_path / 'heldout.zip'),
                            sigma_tn='0,0.5', every=0, samples=6, train_opts=('--iters=10',))
    sweep.run_sweep(cfg, tools=fake.tools)
    assert _stage_count(fake.calls(), 'train') == n
    assert sweep_stages.portable_argv(['--outdir=/a/b/runs/sigma_tn-0/seed-0', '--data=/a/b/data/train.zip', '--x=/a/bc']) == [
        f'--outdir=<outdir>{os.sep}runs/sigma_tn-0/seed-0', f'--data=<outdir>{os.sep}data/train.zip', '--x=/a/bc']
    with pytest.raises(dnnlib.util.UserError, match='other options'): # Other options are still refused.
        sweep.run_sweep(sweep.make_config(str(tmp_path / 'moved'), data=str(tmp_path / 'train.zip'), heldout=str(tmp_path / 'heldout.zip'),
                                          sigma_tn='0', every=0, samples=6, train_opts=('--iters=11',)), tools=fake.tools)


def test_final_snapshot_only_and_more_sigmas_later(fake):
    sweep.run_sweep(fake.config(sigma_tn='0', every=0), tools=fake.tools)
    assert _stage_count(fake.calls(), 'generate') == 1
    assert os.path.isdir(fake.out / 'evals' / 'sigma_tn-0' / 'seed-0' / 'snapshot-000002')
    # Adding a sigma_tn later trains only the new model.
    sweep.run_sweep(fake.config(sigma_tn='0,1', every=0), tools=fake.tools)
    calls = fake.calls()
    assert _stage_count(calls, 'train') == 2 and _stage_count(calls, 'generate') == 2


def test_killed_training_resumes_from_its_latest_state(fake, monkeypatch):
    monkeypatch.setenv('FAKE_TRAIN_CRASH', '1')
    with pytest.raises(dnnlib.util.UserError, match='train sigma_tn=0 seed=0 failed'):
        sweep.run_sweep(fake.config(), tools=fake.tools)
    assert not (fake.out / 'runs' / 'sigma_tn-0' / 'seed-0' / 'sweep-train-done.json').exists()
    monkeypatch.delenv('FAKE_TRAIN_CRASH')
    sweep.run_sweep(fake.config(), tools=fake.tools)
    train_args = [c['args'] for c in fake.calls() if c['tool'] == 'train']
    assert len(train_args) == 3
    assert 'resume' not in train_args[0]
    assert train_args[1]['resume'].endswith(os.path.join('sigma_tn-0', 'seed-0', 'training-state-000001.pt'))
    assert (fake.out / 'sweep.md').is_file()


def test_half_written_stage_outputs_are_redone(fake):
    sweep.run_sweep(fake.config(), tools=fake.tools)
    folder = fake.out / 'evals' / 'sigma_tn-0.5' / 'seed-0' / 'snapshot-000002'
    # A killed generate and memorization leave temporary names; the finished outputs are missing.
    os.rename(folder / 'samples', folder / 'samples.tmp-99999')
    os.rename(folder / 'memorization', folder / 'memorization.tmp-99999')
    (folder / 'quality.json').unlink()
    n = len(fake.calls())
    sweep.run_sweep(fake.config(), tools=fake.tools)
    new = fake.calls()[n:]
    assert [c['tool'] for c in new] == ['generate', 'memorization']
    assert (folder / 'quality.json').is_file() and (folder / 'memorization' / 'metrics.json').is_file()
    assert not list(fake.out.rglob('*.tmp-*'))


def test_changed_training_options_are_refused(fake):
    sweep.run_sweep(fake.config(sigma_tn='0'), tools=fake.tools)
    with pytest.raises(dnnlib.util.UserError, match='other options'):
        sweep.run_sweep(fake.config(sigma_tn='0', train_opts=('--iters=20',)), tools=fake.tools)


def test_evaluations_with_other_sampling_or_detector_are_refused(fake):
    # The report states --samples, --steps and --detector: outputs made with other values are never reused.
    sweep.run_sweep(fake.config(sigma_tn='0', every=0), tools=fake.tools)
    folder = fake.out / 'evals' / 'sigma_tn-0' / 'seed-0' / 'snapshot-000002'
    assert json.loads((folder / 'sampling.json').read_text()) == dict(samples=6, steps=18)
    for kw, match in [(dict(samples=8), '6 samples of 18 steps'), (dict(steps=4), '6 samples of 18 steps'),
                      (dict(detector='inception'), '--detector=pixel')]:
        with pytest.raises(dnnlib.util.UserError, match=match):
            sweep.run_sweep(fake.config(sigma_tn='0', every=0, **kw), tools=fake.tools)
    # Samples from before sampling.json existed are checked by their count.
    (folder / 'sampling.json').unlink()
    n = len(fake.calls())
    sweep.run_sweep(fake.config(sigma_tn='0', every=0), tools=fake.tools)
    assert _stage_count(fake.calls()[n:], 'generate') == 0
    with pytest.raises(dnnlib.util.UserError, match='6 samples'):
        sweep.run_sweep(fake.config(sigma_tn='0', every=0, samples=7), tools=fake.tools)


def test_dry_run_prints_commands_and_runs_nothing(fake, capsys):
    cfg = fake.config(gpus=2)
    tools = sweep_stages.default_tools(cfg)
    assert tools['train'][:3] == ['torchrun', '--standalone', '--nproc_per_node=2']
    assert tools['memorization'][-3:] == ['-m', 'ambient.memorization', 'calc']
    assert sweep.run_sweep(cfg, tools=tools, dry_run=True) is None
    out = capsys.readouterr().out
    assert out.count('[train sigma_tn=') == 2 and 'torchrun --standalone --nproc_per_node=2' in out
    assert '--loss=ambient --sigma_tn=0.5' in out and 'network-snapshot-<kimg>.pkl' in out
    assert fake.calls() == [] and not (fake.out / 'runs').exists()


def test_config_presets_and_validation(tmp_path):
    cfg = sweep.make_config(str(tmp_path), preset='demo', samples=16, train_opts=('--iters=10',))
    assert cfg.source == 'digits' and cfg.subset == 100 and cfg.samples == 16 and cfg.sigma_tn == (0, 0.5)
    assert cfg.seeds == (0, 1, 2) and cfg.ambient_opts == ('--ambient_split=uniform',)
    assert cfg.train_opts[-1] == '--iters=10' and '--iters=1800' in cfg.train_opts # The later option wins.
    assert sweep.make_config(str(tmp_path), source='digits', subset=5, sigma_tn='0,0.25').sigma_tn == (0, 0.25)
    for bad, match in [(dict(train_opts=('--sigma_tn=1',)), 'set by the sweep'), (dict(sigma_tn='0,x'), 'parse'),
                       (dict(sigma_tn='-1'), '>= 0'), (dict(source='digits'), '--subset'),
                       (dict(data=str(tmp_path / 'missing.zip')), 'does not exist'), (dict(preset='nope'), 'preset')]:
        with pytest.raises(dnnlib.util.UserError, match=match):
            sweep.make_config(str(tmp_path), **bad)


def test_snapshot_choice_and_progress(tmp_path):
    snaps = [(k, f'n{k}') for k in range(1, 8)]
    assert sweep_stages.choose_snapshots(snaps, 0) == [(7, 'n7')]
    assert sweep_stages.choose_snapshots(snaps, 1) == snaps
    assert [k for k, _ in sweep_stages.choose_snapshots(snaps, 3)] == [1, 4, 7]
    assert sweep_stages.choose_snapshots([], 2) == []
    (tmp_path / 'stats.jsonl').write_text('\n'.join(json.dumps({'Progress/kimg': {'mean': k}}) for k in (0.064, 12.032, 24.0)))
    (tmp_path / 'training_options.json').write_text(json.dumps(dict(batch_size=64)))
    p = sweep_stages.snapshot_progress(str(tmp_path), 12, num_train=100)
    assert p == dict(kimg=12.032, nimg=12032, iters=188, epochs=120.32)
    assert sweep_stages.snapshot_progress(str(tmp_path / 'none'), 3, 0) == dict(kimg=3.0, nimg=3000, iters=None, epochs=None)

#----------------------------------------------------------------------------
# The real CLIs, end to end on CPU (toy network, a few hundred steps).

TOY = ['--source', 'digits', '--subset', '32', '--sigma_tn', '0,1', '--samples', '16', '--steps', '4',
       '--', '--cbase=8', '--cres=1', '--batch=16', '--tick=1', '--snap=1', '--dump=1', '--augment=0', '--dropout=0']


def _sweep_cmd(outdir, iters, every):
    return [sys.executable, '-m', 'ambient.sweep', '--outdir', str(outdir), '--every', str(every), *TOY, f'--iters={iters}']


def _env(repo_dir):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(repo_dir))


@pytest.mark.slow
def test_toy_sweep_end_to_end_then_rerun_skips(tmp_path, repo_dir):
    out = tmp_path / 'out'
    first = subprocess.run(_sweep_cmd(out, 130, 1), cwd=repo_dir, env=_env(repo_dir), capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in ('sweep.json', 'sweep.md', 'pareto.png', 'curves.png', 'report.md', 'data/heldout.zip'):
        assert (out / name).is_file(), name
    rows = json.loads((out / 'sweep.json').read_text())['rows']
    assert [(r['sigma_tn'], int(r['kimg'])) for r in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for r in rows:
        assert r['num_samples'] == 16 and np.isfinite(r['fd'])
        with PIL.Image.open(out / r['grid']) as im, PIL.Image.open(out / r['nearest']) as nn:
            assert im.size[0] >= 32 and nn.size[0] > 0
    again = subprocess.run(_sweep_cmd(out, 130, 1), cwd=repo_dir, env=_env(repo_dir), capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert '[train' not in again.stdout and '[generate]' not in again.stdout and '[memorization]' not in again.stdout


@pytest.mark.slow
def test_toy_sweep_killed_mid_training_completes_on_rerun(tmp_path, repo_dir):
    out = tmp_path / 'out'
    state = out / 'runs' / 'sigma_tn-0' / 'seed-0' / 'training-state-000001.pt'
    proc = subprocess.Popen(_sweep_cmd(out, 190, 0), cwd=repo_dir, env=_env(repo_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert state.exists(), 'training never wrote its first state'
    finally:
        os.killpg(proc.pid, signal.SIGKILL) # The sweep and the train.py it started (its own session).
        proc.wait()
    assert not (out / 'runs' / 'sigma_tn-0' / 'seed-0' / 'sweep-train-done.json').exists()
    rerun = subprocess.run(_sweep_cmd(out, 190, 0), cwd=repo_dir, env=_env(repo_dir), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert '--resume=' in rerun.stdout
    rows = json.loads((out / 'sweep.json').read_text())['rows']
    assert [(r['sigma_tn'], int(r['kimg'])) for r in rows] == [(0, 3), (1, 3)] # Final snapshots only (--every 0).

#----------------------------------------------------------------------------


@pytest.mark.parametrize('preset', ['demo', 'cifar-table2'])
def test_preset_options_are_accepted_by_train_py(tmp_path, repo_dir, preset):
    """train.py's own dry run (-n) parses the preset's options and builds its configuration."""
    if preset == 'demo':
        sklearn_datasets = pytest.importorskip('sklearn.datasets')
        images = np.rint(sklearn_datasets.load_digits().images[:8] * (255 / 16)).astype(np.uint8)[:, None]
    else:
        images = np.random.default_rng(0).integers(0, 256, size=[8, 3, 16, 16], dtype=np.uint8)
    dataset.write_image_zip(images, None, tmp_path / 'd.zip')
    (tmp_path / 'source.tar.gz').write_bytes(b'')
    cfg = sweep.make_config(str(tmp_path / 'out'), preset=preset, source='digits' if preset == 'demo' else str(tmp_path / 'source.tar.gz'))
    argv = sweep_stages.train_argv(cfg, str(tmp_path / 'd.zip'), cfg.methods[1], 0, str(tmp_path / 'run'))
    result = subprocess.run([sys.executable, str(repo_dir / 'train.py'), *argv, '-n'], cwd=repo_dir, env=_env(repo_dir),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'Dry run' in result.stdout and not (tmp_path / 'run').exists()


def test_existing_subset_with_other_options_is_refused(tmp_path, capsys):
    # A train.zip left by an earlier sweep (5 images, seed 0): reused only for the same --subset and --data-seed.
    images = np.zeros([5, 1, 8, 8], dtype=np.uint8)
    dest = tmp_path / 'out' / 'data' / 'train.zip'
    dest.parent.mkdir(parents=True)
    dataset.write_image_zip(images, None, dest)
    with pytest.raises(dnnlib.util.UserError, match='source_indices|subset of 0'):
        sweep_stages.check_subset(str(dest), 5, 0) # No subset record at all.
    with zipfile.ZipFile(dest) as z:
        files = {name: z.read(name) for name in z.namelist() if name != 'dataset.json'}
    with zipfile.ZipFile(dest, 'w') as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr('dataset.json', json.dumps(dict(labels=None, subset_seed=0, source_indices=[3, 5, 8, 13, 21])))
    sweep_stages.check_subset(str(dest), 5, 0)
    for subset, seed in [(6, 0), (5, 1)]:
        cfg = sweep.make_config(str(tmp_path / 'out'), source='digits', subset=subset, data_seed=seed, sigma_tn='0')
        with pytest.raises(dnnlib.util.UserError, match='use another --outdir'):
            sweep.run_sweep(cfg, dry_run=True)
    cfg = sweep.make_config(str(tmp_path / 'out'), source='digits', subset=5, data_seed=0, sigma_tn='0')
    sweep.run_sweep(cfg, dry_run=True)
    out = capsys.readouterr().out
    assert '--dest=' + str(dest) not in out and 'full.zip' in out


def test_several_seeds_give_one_row_each_and_intervals(fake):
    summary = sweep.run_sweep(fake.config(seeds='0-2', every=0), tools=fake.tools)
    train_args = [c['args'] for c in fake.calls() if c['tool'] == 'train']
    # One model per (sigma_tn, seed); ambient noisy copies drawn with the training seed.
    assert [(a['loss'], a['seed'], a.get('noise_seed')) for a in train_args] == [
        ('edm', '0', None), ('edm', '1', None), ('edm', '2', None),
        ('ambient', '0', '0'), ('ambient', '1', '1'), ('ambient', '2', '2')]
    saved = json.loads((fake.out / 'sweep.json').read_text())
    assert [(r['sigma_tn'], r['seed']) for r in saved['rows']] == [(0, 0), (0, 1), (0, 2), (0.5, 0), (0.5, 1), (0.5, 2)]
    groups = saved['groups']
    assert [(g['sigma_tn'], g['seeds'], g['num_samples']) for g in groups] == [(0, [0, 1, 2], 18), (0.5, [0, 1, 2], 18)]
    edm, amb = groups
    assert edm['ratio']['mean'] == pytest.approx(1 / 3) and amb['ratio']['mean'] == pytest.approx(1 / 6)
    for g in groups:
        assert g['ratio']['lo'] < g['ratio']['mean'] < g['ratio']['hi']
    best = saved['headline']['best']
    assert best['sigma_tn'] == 0.5 and best['ratio']['mean'] == pytest.approx(0.5)
    assert best['ratio']['lo'] <= 0.5 <= best['ratio']['hi']
    # 6 samples per seed cannot separate 1/3 from 1/6: the report must not claim the bar is met.
    assert not best['meets_target'] and not best['ratio_separated']
    report = (fake.out / 'report.md').read_text()
    assert report.startswith('# Report\n\n**Best ambient setting: sigma_tn=0.5.**') and 'does NOT meet' in report
    assert 'training seeds [0, 1, 2]' in report and summary['headline']['best']['sigma_tn'] == 0.5


def test_seeds_are_parsed_like_generate_seeds(tmp_path):
    assert sweep.make_config(str(tmp_path), seeds='0-2,5').seeds == (0, 1, 2, 5)
    for bad in ('x', '-1', '1,1', '0-1,1'):
        with pytest.raises(dnnlib.util.UserError, match='--seeds'):
            sweep.make_config(str(tmp_path), seeds=bad)
    with pytest.raises(dnnlib.util.UserError, match='set by the sweep'):
        sweep.make_config(str(tmp_path), train_opts=('--seed=3',))


def test_parallel_jobs_give_the_same_results(fake, tmp_path):
    one = sweep.run_sweep(fake.config(seeds='0-1', every=0), tools=fake.tools)
    two = sweep.run_sweep(sweep.make_config(str(tmp_path / 'out2'), data=str(tmp_path / 'train.zip'),
                                            heldout=str(tmp_path / 'heldout.zip'), sigma_tn='0,0.5', seeds='0-1',
                                            every=0, samples=6, jobs=2, train_opts=('--iters=10',)), tools=fake.tools)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ('quality',)} for r in rows]
    assert strip(one['rows']) == strip(two['rows']) and len(two['rows']) == 4
    assert [g['ratio'] for g in one['groups']] == [g['ratio'] for g in two['groups']]
    assert sweep_stages.stage_threads(1) is None


def test_cifar_presets(tmp_path):
    assert sweep.CIFAR_MINI.endswith(os.path.join('shared', 'data', 'cifar10-mini', 'cifar-10-python.tar.gz'))
    source = tmp_path / 'cifar-10-python.tar.gz' # Stands in for the sample where ../shared is absent (only opened by the sweep's stages).
    source.write_bytes(b'')
    quick, full, table2 = (sweep.make_config(str(tmp_path), preset=p, source=str(source)) for p in ('cifar-quick', 'cifar', 'cifar-table2'))
    best = f'ambient:{sweep.CIFAR_SIGMA_TN:g}'
    assert quick.methods == full.methods == ('edm', best) and quick.seeds == (0,) and full.seeds == (0, 1, 2)
    # The quick run's models are the first seed of the full one: same options, so one --outdir serves both.
    for key in ('source', 'subset', 'balanced', 'resolution', 'train_opts', 'ambient_opts', 'samples', 'every', 'steps'):
        assert quick[key] == full[key] == table2[key], key
    assert set(full.methods) < set(table2.methods) and {'masking:0.2', f'noisy_only:{sweep.CIFAR_SIGMA_TN:g}'} < set(table2.methods)
    assert table2.sigma_tn == (0, 0.3, sweep.CIFAR_SIGMA_TN, 0.6) and full.thresholds_preset == 'cifar10'
    assert full.arithmetic is not None and sweep.make_config(str(tmp_path), preset='demo').arithmetic is None
    # --sigma_tn replaces a preset's models; a missing source is one clear line.
    assert sweep.make_config(str(tmp_path), preset='cifar', sigma_tn='0,0.3', source=str(source)).methods == ('edm', 'ambient:0.3')
    with pytest.raises(dnnlib.util.UserError, match='does not exist'):
        sweep.make_config(str(tmp_path), preset='cifar', source=str(tmp_path / 'absent.tar.gz'))


def test_cifar_preset_builds_a_balanced_subset_and_names_the_quality_metric(tmp_path, capsys):
    source = pathlib.Path(sweep.CIFAR_MINI)
    if not source.is_file():
        pytest.skip('../shared/data/cifar10-mini is absent')
    cfg = sweep.make_config(str(tmp_path / 'out'), preset='cifar-quick', subset=20)
    data = sweep_stages.prepare_data(cfg, sweep_stages.default_tools(cfg), sweep_stages.Runner())
    assert data.name == 'cifar10' and sweep_stages.data_name('downloads/cifar-10-python.tar.gz') == 'cifar10'
    meta = dataset.read_dataset_json(data.train)
    labels = [label for _, label in meta['labels']]
    assert meta['subset_balanced'] and sorted(labels) == sorted(list(range(10)) * 2)  # 2 per class
    images, _ = dataset.load_images(data.train)
    assert images.shape[1:] == (3, 16, 16)
    assert len(dataset.load_images(data.heldout)[0]) == 2000 - 20
    with pytest.raises(dnnlib.util.UserError, match='class-balanced subset of 20'):
        sweep_stages.check_subset(data.train, 20, 0, balanced=False)


def test_cifar_preset_arithmetic_follows_the_cpu_then_the_record(tmp_path, monkeypatch):
    source = tmp_path / 'cifar-10-python.tar.gz'
    source.write_bytes(b'')
    make = lambda out, *extra: sweep.make_config(str(tmp_path / out), preset='cifar', source=str(source), train_opts=extra)
    monkeypatch.setattr(sweep.cpu_features, 'bf16_kind', lambda: 'avx512_bf16')
    cfg = make('a')
    assert not any('bf16' in o for o in cfg.train_opts) and 'no AMX' in cfg.arithmetic[1] # Never bf16 without AMX.
    monkeypatch.setattr(sweep.cpu_features, 'bf16_kind', lambda: 'amx_bf16')
    cfg = make('b', '--bf16=0')
    assert cfg.train_opts[-4:] == (*sweep.FAST_OPTS, '--bf16=0') # The user's options come last and win.
    # The first run records its choice; a later run on a CPU without AMX follows it (the sweep resumes as it began).
    os.makedirs(cfg.outdir)
    sweep.record_arithmetic(cfg)
    monkeypatch.setattr(sweep.cpu_features, 'bf16_kind', lambda: 'none')
    again = make('b')
    assert again.train_opts[-3:] == sweep.FAST_OPTS and 'recorded' in again.arithmetic[1]
    (tmp_path / 'b' / sweep.ARITHMETIC_RECORD).write_text('{')
    with pytest.raises(dnnlib.util.UserError, match='unreadable'):
        make('b')
