"""Checkpoints: snapshot pickles, training states, their names on disk, and the RNG states that make resume exact."""

import copy
import json
import os
import pickle
import random
import re

import numpy as np
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import misc
from training import snapshot

STATE_FORMAT = 'edm-ambient-training-state-1'
STATE_PATTERN = re.compile(r'training-state-(\d+)\.pt')
COMPARED_KWARGS = ('network_kwargs', 'loss_kwargs', 'dataset_kwargs')

SNAPSHOT_PATTERN = re.compile(r'network-snapshot-(\d+)\.pkl')

#----------------------------------------------------------------------------
# Names on disk.

def _save_file(path, write_fn):
    """Call write_fn(file) on a temporary file, then rename it into place: a reader never sees a partial file."""
    with dnnlib.util.atomic_output(path) as tmp:
        with open(tmp, 'wb') as f:
            write_fn(f)

def snapshot_path(run_dir, cur_nimg):
    """network-snapshot-NNNNNN.pkl (kimg, EDM's naming) of a run directory."""
    return os.path.join(run_dir, f'network-snapshot-{cur_nimg // 1000:06d}.pkl')

def training_state_path(run_dir, cur_nimg):
    """training-state-NNNNNN.pt (kimg) of a run directory."""
    return os.path.join(run_dir, f'training-state-{cur_nimg // 1000:06d}.pt')

def _numbered(run_dir, pattern):
    """[(number, path)] of the files in run_dir whose names match pattern, by number."""
    if not os.path.isdir(run_dir):
        return []
    return sorted((int(m.group(1)), os.path.join(run_dir, name)) for name in os.listdir(run_dir)
                  if (m := pattern.fullmatch(name)))

def list_snapshots(run_dir):
    """[(kimg, path)] of the network-snapshot-*.pkl in a run directory, by kimg."""
    return _numbered(run_dir, SNAPSHOT_PATTERN)

def latest_training_state(run_dir):
    """The newest training-state-*.pt in a run directory, or None."""
    found = _numbered(run_dir, STATE_PATTERN)
    return found[-1][1] if found else None

def find_training_state(path):
    """The training-state file `path` names: the file itself, or the newest training-state-*.pt in a run directory."""
    if path is None or not os.path.exists(path):
        raise dnnlib.util.UserError(f'--resume: {path} does not exist')
    if os.path.isdir(path):
        found = latest_training_state(path)
        if found is None:
            raise dnnlib.util.UserError(f'--resume: no training-state-*.pt in {path}')
        return found
    if not STATE_PATTERN.fullmatch(os.path.basename(path)):
        raise dnnlib.util.UserError(f'--resume must be a run directory or a training-state-*.pt file, not {path}')
    return path

def load_training_state(path):
    """Read a training-state file with torch.load(weights_only=True); UserError when it is not one."""
    try:
        state = torch.load(path, map_location=torch.device('cpu'), weights_only=True)
    except Exception as e: # pylint: disable=broad-except
        raise dnnlib.util.UserError(f'--resume: cannot read {path}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ""}') from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise dnnlib.util.UserError(f'--resume: {path} is not a training state written by this trainer')
    return state

def _plain(obj):
    """obj as plain JSON types (tuples become lists, EasyDicts dicts), for storing and comparing configs."""
    return json.loads(json.dumps(obj))

def _first_difference(stored, current, prefix):
    """Dotted name of the first key where two plain configs differ, or None."""
    if isinstance(stored, dict) and isinstance(current, dict):
        for key in sorted(set(stored) | set(current)):
            if key not in stored or key not in current:
                return f'{prefix}.{key}'
            found = _first_difference(stored[key], current[key], f'{prefix}.{key}')
            if found is not None:
                return found
        return None
    if stored == current or (prefix.endswith('class_name') and _same_object(stored, current)):
        return None
    return prefix

def _same_object(a, b):
    """Two dotted names of one class or function (a package may keep an old name as an alias of a moved one)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:
        return dnnlib.util.get_obj_by_name(a) is dnnlib.util.get_obj_by_name(b)
    except Exception: # pylint: disable=broad-except # An unresolvable name is simply a different one.
        return False

def check_resume_compatible(state, **kwargs):
    """Raise UserError naming the first key of network/loss/dataset kwargs that differs from the stored run."""
    for name in COMPARED_KWARGS:
        stored = json.loads(state[name])
        current = _plain(kwargs[name])
        key = _first_difference(stored, current, name)
        if key is not None:
            show = lambda cfg: json.dumps(_lookup(cfg, key.split('.')[1:]))
            raise dnnlib.util.UserError(f'--resume: {key} differs from the stored training state '
                                        f'(stored {show(stored)}, now {show(current)})')

def _lookup(cfg, keys):
    for key in keys:
        if not isinstance(cfg, dict) or key not in cfg:
            return '<absent>'
        cfg = cfg[key]
    return cfg

#----------------------------------------------------------------------------
# Randomness.

def seed_rank(seed):
    """Seed numpy and torch for this rank exactly as EDM does (and Python's random, which EDM leaves unseeded)."""
    rank_seed = (seed * dist.get_world_size() + dist.get_rank()) % (1 << 31)
    random.seed(rank_seed)
    np.random.seed(rank_seed)
    torch.manual_seed(np.random.randint(1 << 31))

def _get_rng_state():
    """This process's random generator states as tensors and numbers (storable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), cached_gaussian=float(cached)),
                python=dict(version=py_version, internal=list(py_internal), gauss=py_gauss))

def _set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])
    n = s['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['cached_gaussian']))
    p = s['python']
    random.setstate((p['version'], tuple(p['internal']), p['gauss']))

def _gather_rng_states():
    """RNG states of all ranks, in rank order (a collective call)."""
    mine = _get_rng_state()
    if dist.get_world_size() == 1:
        return [mine]
    states = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states

#----------------------------------------------------------------------------
# Snapshots and training states.

def save_snapshot(t, run_dir, cur_nimg, dataset_kwargs):
    """Write network-snapshot-NNNNNN.pkl (EDM layout) and the .safetensors of its EMA; returns the .pkl path."""
    data = dict(ema=t.ema, loss_fn=t.loss_fn, augment_pipe=t.augment_pipe, dataset_kwargs=dict(dataset_kwargs))
    for key, value in data.items():
        if isinstance(value, torch.nn.Module):
            value = copy.deepcopy(value).eval().requires_grad_(False)
            misc.check_ddp_consistency(value)
            data[key] = value.cpu()
    path = snapshot_path(run_dir, cur_nimg) if run_dir is not None else None
    if dist.get_rank() == 0:
        _save_file(path, lambda f: pickle.dump(data, f))
        if getattr(data['ema'], 'safetensors_twin', True): # e.g. ambient's masked wrapper has no training.networks twin
            snapshot.save_network_safetensors(data['ema'], path[:-len('.pkl')] + '.safetensors')
    return path

def save_training_state(t, run_dir, cur_nimg, cur_tick, seed, compared_kwargs, last_snapshot):
    """Write training-state-NNNNNN.pt: everything needed to continue bit-exactly (a collective call)."""
    rng = _gather_rng_states()
    if dist.get_rank() != 0:
        return
    state = dict(format=STATE_FORMAT, net=t.net.state_dict(), ema=t.ema.state_dict(), optimizer=t.optimizer.state_dict(),
                 cur_nimg=int(cur_nimg), cur_tick=int(cur_tick), nonfinite_steps=int(t.nonfinite_steps),
                 seed=int(seed), world_size=dist.get_world_size(), rng=rng, last_snapshot=last_snapshot or '',
                 **{name: json.dumps(_plain(compared_kwargs[name]), sort_keys=True) for name in COMPARED_KWARGS})
    _save_file(training_state_path(run_dir, cur_nimg), lambda f: torch.save(state, f))

def restore_training_state(t, state):
    """Load net, EMA, optimizer and this rank's RNG states from a training state (after setup_training)."""
    t.net.load_state_dict(state['net'], strict=True)
    t.ema.load_state_dict(state['ema'], strict=True)
    t.optimizer.load_state_dict(state['optimizer'])
    t.nonfinite_steps.fill_(state['nonfinite_steps'])
    if len(state['rng']) == dist.get_world_size():
        _set_rng_state(state['rng'][dist.get_rank()])
    else:
        dist.print0(f'Note: the state was written by {len(state["rng"])} processes, not {dist.get_world_size()}: '
                    'random streams are re-seeded, so the run continues correctly but not bit-exactly.')
        seed_rank(state['seed'] + state['cur_nimg'])

