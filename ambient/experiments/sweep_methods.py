"""The sweep's models: method specs ('edm', 'ambient:0.5', 'masking:0.2', 'noisy_only:0.5', 'per_image:FILE') and what follows from them.

A spec names a train.py loss family and its one swept parameter: sigma_tn for ambient and noisy_only, the mask's
erasure probability mask_p for masking (trained with train.py's default --mask_delta=0.1; --ambient-opt reaches
the ambient models only). Noisy copies and masks are drawn with the model's training seed. `--sigma_tn=0,0.5` is the shorthand for `--methods=edm,ambient:0.5`. Model folders of
EDM and ambient models keep their historical names (sigma_tn-0, sigma_tn-0.5); the baselines get masking-P and
noisy_only-S. 'per_image:FILE' is the ambient method with train.py --sigma_tn_per_image=FILE (the advisor's
sigma_tn_per_image.json); its folder is per_image-<file stem> and its swept number the median of the file's values.
"""

import functools
import math
import os

import dnnlib
from ambient.method import dataset as method_dataset

FAMILIES = ('edm', 'ambient', 'masking', 'noisy_only', 'per_image')
MARKERS = {'edm': 'o', 'ambient': 's', 'masking': '^', 'noisy_only': 'D', 'per_image': 'P'}


def _num(v):
    return f'{float(v):g}'


def parse(spec):
    """Canonical spec string of 'edm', 'ambient:X' (X > 0; 'ambient:0' is edm), 'masking:P' (0 <= P < 1), 'noisy_only:X'."""
    if isinstance(spec, (int, float)):
        return 'edm' if float(spec) == 0 else f'ambient:{_num(spec)}'
    family, _, value = str(spec).strip().partition(':')
    family = family.replace('-', '_')
    family = {'noisy': 'noisy_only', 'noise': 'noisy_only', 'mask': 'masking', 'ambient_per_image': 'per_image'}.get(family, family)
    if family not in FAMILIES:
        raise dnnlib.util.UserError(f'Unknown method {spec!r}; give edm, ambient:SIGMA_TN, masking:MASK_P, '
                                    'noisy_only:SIGMA_TN or per_image:FILE')
    if family == 'per_image':
        if not value or not os.path.isfile(value):
            raise dnnlib.util.UserError(f'Method {spec!r}: per_image needs an existing sigma_tn file, e.g. per_image:sigma_tn_per_image.json')
        return f'per_image:{os.path.abspath(value)}'
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
    """The swept number (0 for edm; the median of the file's values for per_image)."""
    f, _, value = parse(spec).partition(':')
    if f == 'per_image':
        return _file_median(value)
    return float(value) if value else 0.0


@functools.lru_cache(maxsize=None)
def _file_median(path):
    """Median sigma_tn of a per-image file (JSON object or CSV file,sigma_tn), as train.py reads it."""
    return float(method_dataset.sigma_tn_record(path)[0]['median'])


def sigma_tn(spec):
    """sigma_tn of edm (0), ambient and noisy_only models; None for masking."""
    return None if family(spec) == 'masking' else param(spec)


def _stem(spec):
    return os.path.splitext(os.path.basename(parse(spec).partition(':')[2]))[0]


def folder(spec):
    """Model folder name: sigma_tn-X for edm and ambient (as before), per_image-STEM, else FAMILY-X."""
    f = family(spec)
    if f == 'per_image':
        return f'per_image-{_stem(spec)}'
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
    if f == 'per_image':
        return ['--loss=ambient', f'--sigma_tn_per_image={parse(spec).partition(":")[2]}', f'--noise_seed={seed}', *ambient_opts]
    return ['--loss=masking', f'--mask_p={x}', f'--mask_seed={seed}']


def label(spec):
    """Human label: 'EDM (sigma_tn=0)', 'ambient sigma_tn=0.5', 'masking p=0.2', 'noisy-only sigma_tn=0.5'."""
    f, x = family(spec), _num(param(spec))
    if f == 'per_image':
        return f'ambient per-image sigma_tn ({_stem(spec)}, median {float(x):.3g})'
    return {'edm': 'EDM (sigma_tn=0)', 'ambient': f'ambient sigma_tn={x}', 'masking': f'masking p={x}',
            'noisy_only': f'noisy-only sigma_tn={x}'}[f]


def short_label(spec):
    f, x = family(spec), _num(param(spec))
    if f == 'per_image':
        return f'per-image {_stem(spec)}'
    return {'edm': 'EDM', 'ambient': f'sigma_tn={x}', 'masking': f'masking p={x}', 'noisy_only': f'noisy-only {x}'}[f]


def order(spec):
    """Sort key: EDM, ambient by sigma_tn, masking, noisy-only."""
    return (FAMILIES.index(family(spec)), param(spec))


def of_row(row):
    """The spec of a sweep row or group (rows written before methods existed have only sigma_tn)."""
    return row.get('method') or parse(row['sigma_tn'])
