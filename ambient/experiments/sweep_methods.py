"""The sweep's models: method specs ('edm', 'ambient:0.5', 'masking:0.2', 'noisy_only:0.5') and what follows from them.

A spec names a train.py loss family and its one swept parameter: sigma_tn for ambient and noisy_only, the mask's
erasure probability mask_p for masking (trained with train.py's default --mask_delta=0.1; --ambient-opt reaches
the ambient models only). Noisy copies and masks are drawn with the model's training seed. `--sigma_tn=0,0.5` is the shorthand for `--methods=edm,ambient:0.5`. Model folders of
EDM and ambient models keep their historical names (sigma_tn-0, sigma_tn-0.5); the baselines get masking-P and
noisy_only-S.
"""

import math

import dnnlib

FAMILIES = ('edm', 'ambient', 'masking', 'noisy_only')
MARKERS = {'edm': 'o', 'ambient': 's', 'masking': '^', 'noisy_only': 'D'}


def _num(v):
    return f'{float(v):g}'


def parse(spec):
    """Canonical spec string of 'edm', 'ambient:X' (X > 0; 'ambient:0' is edm), 'masking:P' (0 <= P < 1), 'noisy_only:X'."""
    if isinstance(spec, (int, float)):
        return 'edm' if float(spec) == 0 else f'ambient:{_num(spec)}'
    text = str(spec).strip().replace('-', '_')
    family, _, value = text.partition(':')
    family = {'noisy': 'noisy_only', 'noise': 'noisy_only', 'mask': 'masking'}.get(family, family)
    if family not in FAMILIES:
        raise dnnlib.util.UserError(f'Unknown method {spec!r}; give edm, ambient:SIGMA_TN, masking:MASK_P or noisy_only:SIGMA_TN')
    if family == 'edm':
        if value and float(value) != 0:
            raise dnnlib.util.UserError(f'Method {spec!r}: edm takes no parameter')
        return 'edm'
    try:
        x = float(value)
    except ValueError:
        raise dnnlib.util.UserError(f'Method {spec!r} needs a number after the colon, e.g. {family}:0.5') from None
    if not math.isfinite(x) or x < 0 or (family == 'masking' and x >= 1) or (family == 'noisy_only' and x == 0):
        raise dnnlib.util.UserError(f'Method {spec!r}: parameter out of range')
    if family == 'ambient' and x == 0:
        return 'edm'
    return f'{family}:{_num(x)}'


def parse_list(text):
    """'edm,ambient:0.5,masking:0.2' -> tuple of canonical specs, each once."""
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).split(',') if t.strip()]
    specs = tuple(parse(t) for t in items)
    if not specs:
        raise dnnlib.util.UserError('--methods: give at least one method')
    if len(set(specs)) != len(specs):
        raise dnnlib.util.UserError(f'--methods {text!r} names a method twice (it would plan the same run twice)')
    return specs


def family(spec):
    return parse(spec).partition(':')[0]


def param(spec):
    """The swept number (0 for edm)."""
    value = parse(spec).partition(':')[2]
    return float(value) if value else 0.0


def sigma_tn(spec):
    """sigma_tn of edm (0), ambient and noisy_only models; None for masking."""
    return None if family(spec) == 'masking' else param(spec)


def folder(spec):
    """Model folder name: sigma_tn-X for edm and ambient (as before), else FAMILY-X."""
    f = family(spec)
    return f'sigma_tn-{_num(param(spec))}' if f in ('edm', 'ambient') else f'{f}-{_num(param(spec))}'


def loss_args(spec, seed, ambient_opts=()):
    """train.py options of the model (noisy copies and masks drawn with the training seed)."""
    f, x = family(spec), _num(param(spec))
    if f == 'edm':
        return ['--loss=edm']
    if f == 'ambient':
        return ['--loss=ambient', f'--sigma_tn={x}', f'--noise_seed={seed}', *ambient_opts]
    if f == 'noisy_only':
        return ['--loss=noisy_only', f'--sigma_tn={x}', f'--noise_seed={seed}']
    return ['--loss=masking', f'--mask_p={x}', f'--mask_seed={seed}']


def label(spec):
    """Human label: 'EDM (sigma_tn=0)', 'ambient sigma_tn=0.5', 'masking p=0.2', 'noisy-only sigma_tn=0.5'."""
    f, x = family(spec), _num(param(spec))
    return {'edm': 'EDM (sigma_tn=0)', 'ambient': f'ambient sigma_tn={x}', 'masking': f'masking p={x}',
            'noisy_only': f'noisy-only sigma_tn={x}'}[f]


def short_label(spec):
    f, x = family(spec), _num(param(spec))
    return {'edm': 'EDM', 'ambient': f'sigma_tn={x}', 'masking': f'masking p={x}', 'noisy_only': f'noisy-only {x}'}[f]


def order(spec):
    """Sort key: EDM, ambient by sigma_tn, masking, noisy-only."""
    return (FAMILIES.index(family(spec)), param(spec))


def of_row(row):
    """The spec of a sweep row or group (rows written before methods existed have only sigma_tn)."""
    return row.get('method') or parse(row['sigma_tn'])
