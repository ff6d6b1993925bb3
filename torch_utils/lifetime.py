"""Helper processes (DataLoader workers, stage subprocesses) that die with the process that started them."""

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1 # From <linux/prctl.h>.
_prctl = None # libc's prctl, resolved once in the parent (see preexec_die_with_parent).

def _libc_prctl():
    """libc's prctl on Linux, else None."""
    global _prctl # pylint: disable=global-statement
    if _prctl is None and sys.platform.startswith('linux'):
        try:
            fn = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True).prctl
            fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            fn.restype = ctypes.c_int
            _prctl = fn
        except (OSError, AttributeError):
            _prctl = False
    return _prctl or None

def set_parent_death_signal(sig=signal.SIGKILL):
    """Have the kernel send sig to this process when its parent dies; False where unsupported (not Linux)."""
    prctl = _libc_prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0

def _parent_is_gone(proc):
    """Whether the psutil.Process being watched has exited (a zombie counts as exited)."""
    import psutil # pylint: disable=import-outside-toplevel
    try:
        # is_running() also compares the creation time, so a reused pid does not count as the parent.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True

def start_watchdog(parent_pid, poll_s=1.0):
    """Start a daemon thread that ends this process (exit status 1) once parent_pid has exited."""
    import psutil # pylint: disable=import-outside-toplevel
    try:
        proc = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        os._exit(1) # pylint: disable=protected-access
    def watch():
        while not _parent_is_gone(proc):
            time.sleep(poll_s)
        os._exit(1) # pylint: disable=protected-access
    threading.Thread(target=watch, name='die-with-parent', daemon=True).start()

def die_with_parent(parent_pid, sig=signal.SIGKILL, pdeathsig=True):
    """End this process when parent_pid exits: a parent-death signal on Linux, a watchdog thread elsewhere."""
    # PR_SET_PDEATHSIG fires when the parent that forked us dies, so it only helps when parent_pid is that parent
    # (not under a forkserver, whose children are the server's); otherwise we fall back to the watchdog.
    if pdeathsig and os.getppid() == parent_pid and set_parent_death_signal(sig):
        # The parent may have died before prctl ran: the signal then never comes, and we were re-parented already.
        if os.getppid() != parent_pid:
            os._exit(1) # pylint: disable=protected-access
        return
    start_watchdog(parent_pid)

class WorkerInit:
    """DataLoader worker_init_fn: ties the worker's life to the process that started it, then runs user_fn (if any)."""

    def __init__(self, user_fn=None):
        self.user_fn = user_fn
        self._note_parent()

    def _note_parent(self):
        # The parent is the process that starts the workers, known for sure only when the worker is started: spawn and
        # forkserver pickle this object then (__getstate__), fork copies it as it was when built.
        self.parent_pid = os.getpid()
        # PR_SET_PDEATHSIG follows the *thread* that forked the worker: use it only when that is the main thread,
        # whose end is the end of the process; a worker started from another thread gets the watchdog.
        self.pdeathsig = threading.current_thread() is threading.main_thread()

    def __getstate__(self):
        self._note_parent()
        return dict(self.__dict__)

    def __call__(self, worker_id):
        # The worker may have been started long before this runs (spawn imports torch first). PyTorch's own watchdog
        # records os.getppid() when the worker loop starts, so a parent killed earlier leaves the worker waiting forever
        # for indices; die_with_parent catches that case by comparing with the pid noted in the parent.
        die_with_parent(self.parent_pid, signal.SIGKILL, pdeathsig=self.pdeathsig)
        if self.user_fn is not None:
            self.user_fn(worker_id)

def data_loader_kwargs(kwargs):
    """Copy of DataLoader keyword arguments whose workers die with this process; keeps any worker_init_fn too."""
    opts = dict(kwargs)
    if opts.get('num_workers', 0) > 0 and not isinstance(opts.get('worker_init_fn'), WorkerInit):
        # Adds no randomness: worker seeding (base_seed from the loader, then user_fn) is unchanged.
        opts['worker_init_fn'] = WorkerInit(opts.get('worker_init_fn'))
    return opts

def preexec_die_with_parent(sig=signal.SIGTERM):
    """subprocess preexec_fn giving the child a parent-death signal (Linux); None elsewhere (nothing to do there)."""
    # Resolve prctl and note our pid now, in the parent: between fork and exec the child should do as little as we can.
    if _libc_prctl() is None:
        return None
    parent_pid = os.getpid()
    def preexec():
        set_parent_death_signal(sig) # Kept across exec (not for set-uid programs).
        if os.getppid() != parent_pid: # The parent died before prctl ran.
            os._exit(1) # pylint: disable=protected-access
    return preexec
