"""Helpers shared by the speed benchmarks: the --modes list, and the peak memory of one path measured alone in a fresh process."""

import os
import resource
import subprocess
import sys
import time

import click
import torch


def modes_option(modes):
    """A click callback parsing --modes into a list of names from `modes`; the reference 'edm' always runs first."""
    def parse(ctx, param, value): # pylint: disable=unused-argument
        names = [m for m in value.split(',') if m]
        unknown = [m for m in names if m != 'edm' and m not in modes]
        if unknown:
            raise click.BadParameter(f'unknown mode(s) {unknown}; choose from edm, {", ".join(modes)}')
        return ['edm'] + [m for m in names if m != 'edm']
    return parse


def timed(fn, device, *args):
    """(wall seconds, result) of fn(*args), with CUDA work finished on both sides."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def peak_memory_gb(device):
    """Peak memory of this process: max allocated on CUDA, else the peak resident set (VmHWM)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        # VmHWM belongs to this address space; ru_maxrss would carry the parent's peak across fork and exec.
        with open('/proc/self/status', encoding='ascii') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def report(device):
    """The line a child prints for child_peak_memory()."""
    print(f'peak memory {peak_memory_gb(device):.3f} GB')


def child_peak_memory(script, mode, overrides):
    """Run this benchmark's command line again for one `mode` alone (--alone), with `overrides` (--name=value) replacing
    the options they name and without --memory; return the peak memory the child reports in GB, None if it failed."""
    names = {arg.split('=')[0] for arg in overrides} | {'--modes', '--memory', '--no-memory'}
    argv = [arg for arg in sys.argv[1:] if arg.split('=')[0] not in names]
    argv += [*overrides, f'--modes={mode}', '--no-memory', '--alone']
    out = subprocess.run([sys.executable, os.path.abspath(script), *argv], capture_output=True, text=True, check=False).stdout
    found = [line.split()[-2] for line in out.splitlines() if line.startswith('peak memory')]
    return float(found[-1]) if found else None
