"""Tests of training/loggers.py and train.py --logger: TensorBoard events read back with tensorboard's own reader,
W&B offline runs read back from their transaction log, resume continuing both, and one-line errors."""

import glob
import json
import os
import pathlib
import random
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import train # pylint: disable=wrong-import-position
from test_training_loop import make_image_zip # pylint: disable=wrong-import-position
from training import loggers # pylint: disable=wrong-import-position

def tensorboard_scalars(log_dir):
    """{tag: [(step, value)]} of a TensorBoard folder, read by tensorboard's EventAccumulator."""
    event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}, acc

def wandb_records(path):
    """Protobuf records of a W&B transaction log (run-<id>.wandb: a 7-byte header, then LevelDB-style log blocks)."""
    pb = pytest.importorskip('wandb.proto.wandb_internal_pb2')
    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b':W&B'
    block, pos, buf = 32768, 7, b''
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if kind == 0 and length == 0: # Zero padding up to the end of the block.
            pos += left
            continue
        if pos + 7 + length > len(data): # A record still being written.
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4): # FULL or LAST piece of a record.
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b''
            yield record

def wandb_history(path, timeout=60):
    """(run id, config keys, [(step, {key: value})]) of a W&B offline run file.

    W&B's writer is a separate process that may still be writing after run.finish() returns: the file is read
    once it holds its final 'exit' record.
    """
    deadline = time.time() + timeout
    while not any(r.WhichOneof('record_type') == 'exit' for r in wandb_records(path)) and time.time() < deadline:
        time.sleep(0.2)
    run_id, config, rows = None, [], []
    for r in wandb_records(path):
        kind = r.WhichOneof('record_type')
        if kind == 'run':
            run_id, config = r.run.run_id, [u.key for u in r.run.config.update]
        elif kind == 'history':
            items = {(i.key or '.'.join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            rows.append((r.history.step.num, {k: v for k, v in items.items() if not k.startswith('_')}))
    return run_id, config, rows

@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """W&B without the user's settings: no mode or key, its config and caches in a temp folder."""
    for name in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_DIR', 'WANDB_PROJECT', 'WANDB_RUN_ID', 'WANDB_RESUME'):
        monkeypatch.delenv(name, raising=False)
    for name in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR', 'WANDB_ARTIFACT_DIR'):
        monkeypatch.setenv(name, str(tmp_path / 'wandb-home' / name.lower()))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    return dict(os.environ)

def stats(**means):
    return {name.replace('__', '/'): dict(num=1, mean=value, std=0.0) for name, value in means.items()}

def rng_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()

#----------------------------------------------------------------------------

def test_scalars_keep_finite_means_only():
    got = loggers.scalars({'a': dict(num=2, mean=0.5, std=0), 'empty': dict(num=0, mean=float('nan'), std=0),
                           'inf': dict(num=1, mean=float('inf'), std=0), 'timestamp': 12.0, 'text': 'x'})
    assert got == {'a': 0.5, 'timestamp': 12.0}
    assert loggers.parse_names(['wandb', 'tensorboard', 'wandb']) == ['tensorboard', 'wandb']
    assert loggers.parse_names(['none']) == [] and loggers.parse_names(()) == []
    with pytest.raises(Exception, match='cannot be combined'):
        loggers.parse_names(['none', 'wandb'])

def test_tensorboard_scalars_read_back_and_resume_continues_the_same_folder(tmp_path):
    pytest.importorskip('tensorboard')
    first, second = tmp_path / '00000-run', tmp_path / '00001-run'
    before = rng_states()
    sinks = loggers.open_sinks(['tensorboard'], str(first), config=dict(batch_size=8, loggers=['tensorboard']))
    for step, loss in [(8, 0.9), (16, 0.8), (24, 0.7)]:
        sinks.log(stats(Loss__loss=loss, Training__lr=1e-3), step=step)
    sinks.close()
    after = rng_states()
    assert before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])
    assert json.loads((first / 'loggers.json').read_text()) == dict(tensorboard='tensorboard')

    # Resumed from the state at step 16 into a new run directory: the events go on in the first run's folder, and
    # those the first run wrote after step 16 are hidden.
    sinks = loggers.open_sinks(['tensorboard'], str(second), config=dict(batch_size=8), resume_dir=str(first), start_step=16)
    sinks.log(stats(Loss__loss=0.6), step=24)
    sinks.log(stats(Loss__loss=0.5), step=32)
    sinks.close()
    assert not (second / 'tensorboard').exists()
    assert json.loads((second / 'loggers.json').read_text()) == dict(tensorboard='../00000-run/tensorboard')
    scalars, acc = tensorboard_scalars(first / 'tensorboard')
    assert [s for s, _ in scalars['Loss/loss']] == [8, 16, 24, 32]
    assert [v for _, v in scalars['Loss/loss']] == pytest.approx([0.9, 0.8, 0.6, 0.5])
    assert scalars['Training/lr'] == [(8, pytest.approx(1e-3)), (16, pytest.approx(1e-3))]
    assert acc.Tags()['tensors'] == ['training_options/text_summary'] # The config, logged once.

def test_wandb_offline_run_files_and_the_same_run_id_on_resume(tmp_path, wandb_env):
    pytest.importorskip('wandb')
    first, second = tmp_path / '00000-run', tmp_path / '00001-run'
    before = rng_states()
    sinks = loggers.open_sinks(['wandb'], str(first), config=dict(batch_size=8, lr=1e-3))
    sinks.log(stats(Loss__loss=0.9, Loss__ambient__above_sigma_tn=1.5), step=8)
    sinks.log(stats(Loss__loss=0.8), step=16)
    sinks.close()
    after = rng_states()
    assert before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])
    run_id = json.loads((first / 'loggers.json').read_text())['wandb_id']
    files = glob.glob(str(first / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb')) # Offline: local files only.
    assert len(files) == 1
    got_id, config, rows = wandb_history(files[0])
    assert got_id == run_id and {'batch_size', 'lr'} <= set(config)
    assert rows == [(8, {'Loss/loss': 0.9, 'Loss/ambient/above_sigma_tn': 1.5}), (16, {'Loss/loss': 0.8})]

    sinks = loggers.open_sinks(['wandb'], str(second), config=dict(batch_size=8, lr=1e-3), resume_dir=str(first), start_step=16)
    sinks.log(stats(Loss__loss=0.7), step=24)
    sinks.close()
    assert json.loads((second / 'loggers.json').read_text())['wandb_id'] == run_id
    files = glob.glob(str(second / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb'))
    assert len(files) == 1 and wandb_history(files[0])[2] == [(24, {'Loss/loss': 0.7})]

def test_wandb_respects_a_mode_the_user_chose(tmp_path, wandb_env, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'disabled')
    sinks = loggers.open_sinks(['wandb'], str(tmp_path / 'run'))
    sinks.log(stats(Loss__loss=0.9), step=8)
    sinks.close()
    assert not (tmp_path / 'run' / 'wandb').exists()

#----------------------------------------------------------------------------
# train.py --logger

def test_missing_package_and_bad_combinations_are_one_error_line(tmp_path, monkeypatch):
    data = make_image_zip(tmp_path / 'tiny.zip')
    real_find_spec = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real_find_spec(name, *a))
    base = [f'--outdir={tmp_path / "out"}', f'--data={data}', '-n', '--seed=1']
    for args, message in [(['--logger=wandb'], 'needs the wandb package'), (['--logger=none', '--logger=tensorboard'], 'cannot be combined')]:
        result = CliRunner().invoke(train.main, base + args)
        errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
        assert result.exit_code == 1 and len(errors) == 1 and message in errors[0], result.output
        assert 'Traceback' not in result.output
    result = CliRunner().invoke(train.main, base + ['--logger=none'])
    assert result.exit_code == 0 and '"loggers"' not in result.output # A plain run's options stay EDM's.
    assert not (tmp_path / 'out').exists()

@pytest.mark.slow
def test_cli_run_logs_every_statistic_and_resume_continues_both(tmp_path, wandb_env):
    pytest.importorskip('tensorboard')
    pytest.importorskip('wandb')
    data = make_image_zip(tmp_path / 'tiny.zip')
    args = [f'--outdir={tmp_path / "runs"}', f'--data={data}', '--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8',
            '--tick=1', '--snap=1', '--dump=1', '--workers=1', '--loss=ambient', '--sigma_tn=0.5', '--seed=1',
            '--logger=tensorboard', '--logger=wandb']
    env = dict(wandb_env, OMP_NUM_THREADS='1')
    def run(*extra):
        proc = subprocess.run([sys.executable, str(REPO / 'train.py')] + args + list(extra), env=env, cwd=str(REPO),
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run('--iters=3')
    first = next((tmp_path / 'runs').iterdir())
    assert json.loads((first / 'training_options.json').read_text())['loggers'] == ['tensorboard', 'wandb']
    run('--iters=5', f'--resume={first}')
    second = [d for d in (tmp_path / 'runs').iterdir() if d != first][0]

    # Every value of stats.jsonl, at every tick, in the one TensorBoard run (steps: images seen).
    jsonl = [json.loads(line) for d in (first, second) for line in (d / 'stats.jsonl').read_text().splitlines()]
    scalars, _ = tensorboard_scalars(first / 'tensorboard')
    for name in ('Loss/loss', 'Loss/ambient/below_sigma_tn', 'Loss/ambient/above_sigma_tn', 'Loss/ambient/fraction_above',
                 'Training/lr', 'Timing/sec_per_tick', 'Timing/total_sec', 'Resources/cpu_mem_gb', 'Progress/kimg'):
        expected = [(round(line['Progress/kimg']['mean'] * 1000), line[name]['mean']) for line in jsonl if line[name]['num']]
        assert [s for s, _ in scalars[name]] == [s for s, _ in expected] == [8, 24, 40], name
        assert [v for _, v in scalars[name]] == pytest.approx([v for _, v in expected], rel=1e-6), name
    assert scalars["Training/lr"][0][1] == 0 # EDM's ramp-up starts at 0.

    # One W&B run id for both parts, offline, with the training options as its config.
    run_id = json.loads((first / 'loggers.json').read_text())['wandb_id']
    assert json.loads((second / 'loggers.json').read_text())['wandb_id'] == run_id
    steps = []
    for d in (first, second):
        (path,) = glob.glob(str(d / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb'))
        got_id, config, rows = wandb_history(path)
        assert got_id == run_id and {'loss_kwargs', 'batch_size', 'loggers'} <= set(config)
        steps += [s for s, row in rows if 'Loss/ambient/above_sigma_tn' in row]
    assert steps == [8, 24, 40]
