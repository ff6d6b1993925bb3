"""Helpers shared by the speed benchmarks: the --modes list, and the peak memory of one path measured alone in a fresh process."""

import os
import resource
import subprocess
import sys

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


def child_peak_memory(script, argv):
    """Run `python script argv` (one path, --alone) and return the peak memory it reports in GB, None if it failed."""
    out = subprocess.run([sys.executable, os.path.abspath(script), *argv], capture_output=True, text=True, check=False).stdout
    found = [line.split()[-2] for line in out.splitlines() if line.startswith('peak memory')]
    return float(found[-1]) if found else None
