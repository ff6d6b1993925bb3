"""Where the tick statistics go besides stats.jsonl: TensorBoard and Weights & Biases sinks (train.py --logger).

The training loop opens the chosen sinks on rank 0 (`open_sinks`), hands them every tick's training_stats
(`Sinks.log`) and closes them at the end. Each sink's package is imported only when that sink is chosen;
`check_available` says in one line when it is missing. A run's sinks are recorded in `loggers.json` in its
run directory (the TensorBoard folder and the W&B run id), so a run resumed from it, in the same directory or a
new one, keeps appending to the same TensorBoard run and the same W&B run.
"""

import contextlib
import importlib.util
import json
import math
import os
import random
import secrets
import string

import numpy as np
import torch

import dnnlib

SINKS = ('tensorboard', 'wandb')
CHOICES = SINKS + ('none',)
PACKAGES = {'tensorboard': 'tensorboard', 'wandb': 'wandb'}
RECORD = 'loggers.json'     # In the run directory: {"tensorboard": <folder, relative to it>, "wandb_id": <id>}.

#----------------------------------------------------------------------------

def parse_names(names):
    """Sinks of a repeatable --logger option: sorted unique names without 'none'; UserError for 'none' plus a sink."""
    names = set(names or ())
    if 'none' in names and len(names) > 1:
        raise dnnlib.util.UserError('--logger=none cannot be combined with another --logger')
    unknown = sorted(names - set(CHOICES))
    if unknown:
        raise dnnlib.util.UserError(f'--logger={unknown[0]}: expected one of {", ".join(CHOICES)}')
    return sorted(names - {'none'})

def check_available(names):
    """UserError (one line) naming the first chosen sink whose package is not installed; nothing is imported."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise dnnlib.util.UserError(f'--logger={name} needs the {PACKAGES[name]} package, which is not installed: '
                                        f'pip install {PACKAGES[name]} (requirements.txt pins the tested version)')

def scalars(stats):
    """{name: mean} of a Collector.as_dict() (or stats.jsonl line), without empty or non-finite entries."""
    out = {}
    for name, value in stats.items():
        if isinstance(value, dict):
            if value.get('num', 1) == 0:
                continue
            value = value.get('mean')
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out

@contextlib.contextmanager
def preserved_rng():
    """Restore the Python, NumPy and torch CPU random states afterwards: a sink never moves the training's draws."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])

def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))

def _read_record(run_dir):
    """The loggers.json of a run directory as a dict with absolute paths ({} when absent or unreadable)."""
    path = os.path.join(run_dir, RECORD)
    try:
        with open(path, 'r', encoding='utf8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    if isinstance(record.get('tensorboard'), str):
        record['tensorboard'] = os.path.normpath(os.path.join(run_dir, record['tensorboard']))
    return record

def _write_record(run_dir, record):
    rel = dict(record)
    if rel.get('tensorboard'):
        rel['tensorboard'] = os.path.relpath(rel['tensorboard'], run_dir)
    dnnlib.util.atomic_write_bytes(os.path.join(run_dir, RECORD), (json.dumps(rel, indent=2) + '\n').encode())

#----------------------------------------------------------------------------

class TensorBoardSink:
    """Scalars into a TensorBoard event folder (torch.utils.tensorboard.SummaryWriter); step = images seen."""

    def __init__(self, log_dir, config=None, purge_step=None):
        from torch.utils.tensorboard import SummaryWriter # pylint: disable=import-outside-toplevel
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)
        if config is not None:
            text = json.dumps(config, indent=2)
            self.writer.add_text('training_options', '```\n' + text + '\n```', global_step=0)
        self.writer.flush()

    def log(self, values, step):
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self):
        self.writer.close()

class WandbSink:
    """Scalars into a Weights & Biases run; offline (files under run_dir/wandb) unless the user configured W&B."""

    def __init__(self, run_dir, run_id, config=None):
        import wandb # pylint: disable=import-outside-toplevel
        # Offline unless the user chose a mode or gave a key: a run never uploads anything unasked.
        mode = os.environ.get('WANDB_MODE') or (None if os.environ.get('WANDB_API_KEY') else 'offline')
        self.run = wandb.init(project=os.environ.get('WANDB_PROJECT', 'ambient-edm'), dir=run_dir, id=run_id,
                              resume='allow', name=os.path.basename(os.path.normpath(run_dir)), config=config, mode=mode,
                              settings=wandb.Settings(console='off'), reinit='finish_previous')
        self.run_id = run_id

    def log(self, values, step):
        self.run.log(values, step=step)

    def close(self):
        self.run.finish()

class Sinks:
    """The chosen sinks of one run; a sink that fails while logging is reported once and dropped (training goes on)."""

    def __init__(self, sinks):
        self.sinks = dict(sinks)

    def log(self, stats, step):
        """Log a Collector.as_dict() (empty and non-finite entries left out) at `step` (images seen)."""
        values = scalars(stats)
        for name, sink in list(self.sinks.items()):
            try:
                with preserved_rng():
                    sink.log(values, int(step))
            except Exception as err: # pylint: disable=broad-except
                print(f'Warning: --logger={name} failed ({err.__class__.__name__}: {err}); no longer logging to it')
                del self.sinks[name]

    def close(self):
        for name, sink in list(self.sinks.items()):
            try:
                sink.close()
            except Exception as err: # pylint: disable=broad-except
                print(f'Warning: closing --logger={name} failed ({err.__class__.__name__}: {err})')
        self.sinks.clear()

def open_sinks(names, run_dir, config=None, resume_dir=None, start_step=0):
    """Open the named sinks for run_dir (rank 0 only); None when no sink is chosen.

    `resume_dir` is the run directory being resumed (the folder of its training state): its loggers.json says
    which TensorBoard folder and W&B run to continue. Events that the resumed run wrote after `start_step`
    (past its last training state, before it was killed) are hidden from TensorBoard by purge_step. `config`
    (the training options) is logged once, when a run starts fresh (W&B merges it into a resumed run).
    """
    names = parse_names(names)
    if not names:
        return None
    check_available(names)
    with preserved_rng():
        return _open(names, run_dir, config, resume_dir, start_step)

def _open(names, run_dir, config, resume_dir, start_step):
    os.makedirs(run_dir, exist_ok=True)
    previous = _read_record(resume_dir) if resume_dir else {}
    record = dict(previous)
    config = _jsonable(config) if config is not None else None
    sinks = {}
    try:
        if 'tensorboard' in names:
            log_dir = previous.get('tensorboard') or os.path.join(run_dir, 'tensorboard')
            resumed = 'tensorboard' in previous
            sinks['tensorboard'] = TensorBoardSink(log_dir, config=None if resumed else config,
                                                   purge_step=int(start_step) + 1 if resumed else None)
            record['tensorboard'] = log_dir
            print(f'TensorBoard: {"continuing" if resumed else "writing"} {log_dir}')
        if 'wandb' in names:
            run_id = previous.get('wandb_id')
            if not run_id: # W&B's id alphabet; from the OS, so no training RNG state moves.
                run_id = ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            sinks['wandb'] = WandbSink(run_dir, run_id, config=config)
            record['wandb_id'] = run_id
            print(f'Weights & Biases: {"continuing" if previous.get("wandb_id") else "started"} run {run_id}')
        _write_record(run_dir, record)
    except BaseException:
        Sinks(sinks).close()
        raise
    return Sinks(sinks)

#----------------------------------------------------------------------------
