"""Tests for torch_utils.cpu_features: what the CPU offers for bfloat16, from its flags (never from this machine's)."""

from torch_utils import cpu_features

SAPPHIRE_RAPIDS = frozenset('avx512f avx512_bf16 amx_bf16 amx_tile amx_int8'.split())
EPYC_GENOA = frozenset('avx512f avx512_bf16'.split())
ICE_LAKE = frozenset('avx512f avx512_vnni'.split())


def test_kinds_from_flags():
    assert cpu_features.bf16_kind(SAPPHIRE_RAPIDS) == 'amx_bf16'
    assert cpu_features.bf16_kind(EPYC_GENOA) == 'avx512_bf16'
    assert cpu_features.bf16_kind(ICE_LAKE) == 'none'
    assert cpu_features.bf16_kind(frozenset({'amx_bf16'})) == 'none' # AMX needs its tiles too
    assert cpu_features.native_bf16(EPYC_GENOA) and not cpu_features.native_bf16(ICE_LAKE)


def test_this_cpu_is_described_in_one_line():
    flags = cpu_features.cpu_flags()
    assert isinstance(flags, frozenset)
    line = cpu_features.describe()
    assert '\n' not in line and cpu_features.bf16_kind() in line and cpu_features.cpu_name() in line


def test_bf16_note(monkeypatch):
    for flags, cl, expected in [(ICE_LAKE, False, 'emulated'), (ICE_LAKE, True, 'emulated'), (SAPPHIRE_RAPIDS, False, 'channels_last'),
                                (SAPPHIRE_RAPIDS, True, None), (EPYC_GENOA, False, None)]:
        monkeypatch.setattr(cpu_features, 'cpu_flags', lambda flags=flags: flags)
        note = cpu_features.bf16_note(True, cl, 'cpu')
        assert (note is None) if expected is None else (expected in note)
        assert cpu_features.bf16_note(False, cl, 'cpu') is None
        assert cpu_features.bf16_note(True, cl, 'cuda') is None
