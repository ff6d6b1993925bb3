"""Helpers the networks and the trainer share: cached constants, a resumable infinite sampler, parameter copying, DDP checks, module summary."""

import contextlib
import re

import numpy as np
import torch

#----------------------------------------------------------------------------

_constant_cache = dict()

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    """A cached constant tensor (same signature as EDM's misc.constant, which augment pipes call)."""
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor, _ = torch.broadcast_tensors(tensor, torch.empty(shape))
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor

#----------------------------------------------------------------------------

class InfiniteSampler(torch.utils.data.Sampler):
    """Endless, seeded, windowed-shuffle sampler over a dataset, split across ranks (EDM's order).

    The global sequence of indices depends only on (dataset size, seed, window_size); rank r takes
    every position p with p % num_replicas == r. Hence N ranks see, per global batch, exactly the items
    one rank would. `start_idx` skips the first start_idx items of this rank by replaying the shuffle,
    which makes resuming exact without storing the sampler.
    """

    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5, start_idx=0):
        assert len(dataset) > 0
        assert num_replicas > 0 and 0 <= rank < num_replicas
        assert 0 <= window_size <= 1 and start_idx >= 0
        super().__init__()
        self.size = len(dataset)
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size
        self.start_idx = start_idx

    def __iter__(self):
        order = np.arange(self.size)
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))
        skip = self.start_idx * self.num_replicas # Global positions already consumed by all ranks.
        if window >= 2:
            order = _replay_window_shuffle(order, rnd, window, skip)
        pos = skip
        while True:
            i = pos % order.size
            if pos % self.num_replicas == self.rank:
                yield int(order[i])
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            pos += 1

def _replay_window_shuffle(order, rnd, window, count, chunk=1 << 16):
    """Apply the first `count` swaps of the windowed shuffle; same result and RNG state as stepping one by one."""
    # RandomState.randint(window, size=k) yields the same values as k scalar calls, so draw in chunks.
    items = order.tolist()
    size = len(items)
    for start in range(0, count, chunk):
        offsets = rnd.randint(window, size=min(chunk, count - start)).tolist()
        i = start % size
        for r in offsets:
            j = (i - r) % size
            items[i], items[j] = items[j], items[i]
            i = i + 1 if i + 1 < size else 0
    return np.array(items, dtype=order.dtype)

#----------------------------------------------------------------------------

def params_and_buffers(module):
    """All parameters followed by all buffers of a module."""
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())

def named_params_and_buffers(module):
    """(name, tensor) pairs for all parameters followed by all buffers."""
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    """Copy tensors by name from src_module into dst_module (missing names are an error when require_all)."""
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src_tensors:
            if require_all:
                raise KeyError(f'copy_params_and_buffers: "{name}" missing in the source module')
            continue
        tensor.copy_(src_tensors[name])

@contextlib.contextmanager
def ddp_sync(module, sync):
    """Context in which a DistributedDataParallel module all-reduces gradients only when sync is True."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

def check_ddp_consistency(module, ignore_regex=None):
    """Assert every parameter and buffer is identical on all ranks (NaN-tolerant)."""
    assert isinstance(module, torch.nn.Module)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        assert (tensor == other).all(), fullname

#----------------------------------------------------------------------------

def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    """Print a table of submodules with parameter/buffer counts and output shapes for one forward pass."""
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    entries = []
    nesting = [0]
    def pre_hook(_mod, _inputs):
        nesting[0] += 1
    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            entries.append((mod, [t for t in outs if isinstance(t, torch.Tensor)]))
    hooks = [m.register_forward_pre_hook(pre_hook) for m in module.modules()]
    hooks += [m.register_forward_hook(post_hook) for m in module.modules()]
    outputs = module(*inputs)
    for hook in hooks:
        hook.remove()

    # Attribute each tensor to the first (innermost) entry that owns it, so totals are not double counted.
    seen = set()
    rows = [['Module', 'Parameters', 'Buffers', 'Output shape', 'Datatype'], ['---'] * 5]
    names = {mod: name for name, mod in module.named_modules()}
    total_params = total_buffers = 0
    for mod, outs in entries:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        seen.update(id(t) for t in params + buffers)
        if skip_redundant and mod is not module and not (params or buffers):
            continue
        n_params = sum(t.numel() for t in params)
        n_buffers = sum(t.numel() for t in buffers)
        total_params += n_params
        total_buffers += n_buffers
        name = '<top-level>' if mod is module else names.get(mod, type(mod).__name__)
        shapes = [str(list(t.shape)) for t in outs] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in outs] or ['-']
        rows.append([name, str(n_params) if n_params else '-', str(n_buffers) if n_buffers else '-', shapes[0], dtypes[0]])
        for shape, dtype in zip(shapes[1:], dtypes[1:]):
            rows.append([name + ':', '-', '-', shape, dtype])
    rows += [['---'] * 5, ['Total', str(total_params), str(total_buffers), '-', '-']]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (w - len(cell)) for cell, w in zip(row, widths)))
    print()
    return outputs
