"""Scalar statistics reported anywhere during training, averaged across ranks at each tick (EDM's API)."""

import re

import numpy as np
import torch

import dnnlib
from . import distributed as dist

_num_moments = 3            # [count, sum, sum of squares]
_reduce_dtype = torch.float64
_counter_dtype = torch.float64
_rank = 0
_sync_device = None         # Device for all_reduce; None: decided from the distributed context.
_sync_called = False
_counters = dict()          # name -> device -> [count, sum, sum_sq] tensor
_cumulative = dict()        # name -> cumulative moments on the CPU

#----------------------------------------------------------------------------

def init_multiprocessing(rank, sync_device):
    """Set this rank and the device used to all-reduce statistics (EDM signature; None means single process)."""
    global _rank, _sync_device
    _rank = rank
    _sync_device = sync_device

def report(name, value):
    """Record scalar(s) under `name` (tensor, array or number; all elements count). Returns value unchanged."""
    if name not in _counters:
        _counters[name] = dict()
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(_reduce_dtype)
    moments = torch.stack([torch.ones_like(elems).sum(), elems.sum(), elems.square().sum()])
    device = moments.device
    if device not in _counters[name]:
        _counters[name][device] = torch.zeros_like(moments)
    _counters[name][device].add_(moments)
    return value

def report0(name, value):
    """Like report(), but only rank 0 contributes (every rank must still call it)."""
    report(name, value if _rank == 0 else [])
    return value

#----------------------------------------------------------------------------

def _sync(names):
    """Sum the pending moments of these names over devices and ranks into the cumulative totals."""
    global _sync_called
    _sync_called = True
    if len(names) == 0:
        return []
    device = _sync_device
    if device is None and dist.is_distributed():
        device = dist.get_sync_device()
    deltas = []
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device or 'cpu')
        for counter in _counters.get(name, {}).values():
            delta.add_(counter.to(delta.device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)
    if dist.is_distributed():
        torch.distributed.all_reduce(deltas)
    deltas = deltas.cpu()
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
    return [(name, _cumulative[name]) for name in names]

class Collector:
    """Collects the statistics whose names match `regex`; update() averages them across ranks since the last update."""

    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = dict()
        self._moments = dict()
        self.update()
        self._moments.clear()

    def names(self):
        """Names of the matching statistics reported so far."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self):
        """Fold in everything reported since the last call; every rank must call it (collective)."""
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name):
        assert self._regex.fullmatch(name)
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def num(self, name):
        """Number of scalars recorded in the last interval."""
        return int(self._get_delta(name)[0])

    def mean(self, name):
        """Mean over the last interval (nan when empty)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name):
        """Standard deviation over the last interval (nan when empty)."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if int(delta[0]) == 1:
            return 0.0
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - np.square(mean), 0)))

    def as_dict(self):
        """{name: EasyDict(num, mean, std)} for every statistic seen in the last interval."""
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name):
        """Mean of a statistic over the last interval."""
        return self.mean(name)

default_collector = Collector()
