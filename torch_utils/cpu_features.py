"""What this CPU offers for reduced-precision arithmetic: AMX, AVX512-BF16, or neither (the one place that asks)."""

import functools
import platform

import torch

AMX = 'amx_bf16'
AVX512_BF16 = 'avx512_bf16'
NONE = 'none'


def _cpuinfo_field(name):
    """The value of the first /proc/cpuinfo line starting with name (None where it cannot be read)."""
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='ignore') as f:
            for line in f:
                if line.startswith(name):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo lists them (an empty set where it cannot be read)."""
    return frozenset((_cpuinfo_field('flags') or '').split())


@functools.lru_cache(maxsize=None)
def cpu_name():
    """The CPU's model name ('unknown' where it cannot be read)."""
    return _cpuinfo_field('model name') or platform.processor() or 'unknown'


def bf16_kind(flags=None):
    """'amx_bf16' (AMX tiles: bfloat16 matmul and convolution several times float32), 'avx512_bf16' (about 2x),
    or 'none' (bfloat16 is emulated and slower than float32)."""
    flags = cpu_flags() if flags is None else flags
    if AMX in flags and 'amx_tile' in flags:
        return AMX
    if AVX512_BF16 in flags:
        return AVX512_BF16
    return NONE


def native_bf16(flags=None):
    """True where bfloat16 matrix products run natively (AMX or AVX512-BF16)."""
    return bf16_kind(flags) != NONE


def describe():
    """One line naming the CPU, its bfloat16 support and the thread count, for the first line of a benchmark."""
    return (f'CPU: {cpu_name()}; bf16: {bf16_kind()}; torch {torch.__version__}, {torch.get_num_threads()} threads, '
            f'oneDNN {"on" if torch.backends.mkldnn.is_available() else "off"}')


def bf16_note(bf16, channels_last, device):
    """A line for users of --bf16 on this CPU (None where there is nothing to say): emulated bfloat16 is slower than
    float32; AMX wants NHWC batches."""
    if not bf16 or torch.device(device).type != 'cpu':
        return None
    kind = bf16_kind()
    if kind == NONE:
        return ('Note: this CPU has no native bfloat16 (neither AMX nor AVX512-BF16): --bf16 is emulated here and runs '
                'slower than float32.')
    if kind == AMX and not channels_last:
        return 'Note: this CPU has AMX: add --channels_last=1 to --bf16 for its fast NHWC bfloat16 kernels.'
    return None
