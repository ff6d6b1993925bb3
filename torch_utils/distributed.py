"""The distributed context: one process, or torchrun's ranks over NCCL (CUDA) or gloo (CPU)."""

import contextlib
import datetime
import os
import signal

import torch

from torch_utils import lifetime

#----------------------------------------------------------------------------

def init():
    """Join the process group described by torchrun's environment; a plain single process needs nothing."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if 'TORCHELASTIC_RUN_ID' in os.environ:
        # torchrun starts each rank in a session of its own: a SIGKILLed launcher would leave the ranks running.
        lifetime.die_with_parent(os.getppid(), signal.SIGTERM)
    if torch.cuda.is_available() and 'LOCAL_RANK' in os.environ:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    if world_size <= 1 or torch.distributed.is_initialized():
        return
    # EDM always picks NCCL off Windows, which fails on CPU-only machines: choose by device instead.
    backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    kwargs = dict(backend=backend, timeout=datetime.timedelta(minutes=30))
    if backend == 'nccl':
        kwargs['device_id'] = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
    torch.distributed.init_process_group(**kwargs)

def is_distributed():
    """True when running as one of several ranks."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()

def get_rank():
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0

def get_world_size():
    """Number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1

def get_device():
    """The device this rank computes on: its CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')

def get_sync_device():
    """Device on which cross-rank reductions run: CUDA for NCCL, CPU for gloo, None when single process."""
    if not is_distributed():
        return None
    return torch.device('cuda', torch.cuda.current_device()) if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')

def barrier():
    """Wait for all ranks (no-op in a single process)."""
    if is_distributed():
        torch.distributed.barrier()

@contextlib.contextmanager
def rank0_first():
    """Run the block on rank 0 before the other ranks, so that a download or a cache fill happens once."""
    if get_rank() != 0:
        barrier()
    try:
        yield
    finally:
        # Also after an error: the other ranks must not wait forever; they then meet the error themselves.
        if get_rank() == 0:
            barrier()

def shutdown():
    """Leave the process group cleanly; all ranks meet first, or gloo may abort at exit."""
    if is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

def should_stop():
    """Hook for cluster schedulers asking the run to stop; never true here."""
    return False

def update_progress(cur, total): # pylint: disable=unused-argument
    """Hook for cluster schedulers tracking progress; nothing to do here."""
    return None

def print0(*args, **kwargs):
    """print() on rank 0 only."""
    if get_rank() == 0:
        print(*args, **kwargs)
