"""sigma_tn advice for a training set: its distance scale (ambient/metrics/distance_scale.py), the rule's
recommendation (ambient/method/advisor.py), and the files `python -m ambient.advise` writes: advice.json, advice.md,
histogram.png and, when asked, sigma_tn_per_image.json.
"""

import json
import math
import os

import numpy as np
import torch

import dnnlib
from ambient.experiments import pareto
from ambient.method import advisor
from ambient.metrics import distance_scale
from ambient.metrics.memorization import DINOV2_ARCHS, detector_info, featurize
from training.dataset import load_images
from training.detectors import load_detector

PER_IMAGE_FILE = 'sigma_tn_per_image.json'
MAX_GROUPS_SHOWN = 5 # groups listed in advice.md and the summary (all are in advice.json)

#----------------------------------------------------------------------------
# Inputs.

def default_dest(data):
    """`<data-stem>-advice/` beside the data set."""
    path = os.path.normpath(os.path.abspath(data))
    stem = os.path.splitext(os.path.basename(path))[0] if os.path.isfile(path) else os.path.basename(path)
    return os.path.join(os.path.dirname(path), f'{stem}-advice')


def read_images(data):
    """uint8 NCHW images and their file names (as dataset.json names them), or UserError."""
    if not os.path.exists(data):
        raise dnnlib.util.UserError(f'--data: dataset not found: {data}')
    try:
        images, info = load_images(data)
    except ValueError as err: # np.stack of images of different sizes or channels
        raise dnnlib.util.UserError(f'Cannot stack the images of {data} ({err}); all images must have one shape '
                                    '(convert them with dataset_tool.py --resolution)') from None
    return images, info.names


def load_dinov2(detector_path=None, arch=None, download=False):
    """The memorization metric's DINOv2 detector (ambient preprocessing), or UserError saying how to get the weights."""
    arch = arch or 'vitg14'
    if arch not in DINOV2_ARCHS:
        raise dnnlib.util.UserError(f'Unknown DINOv2 arch {arch!r}; choose {"|".join(DINOV2_ARCHS)}')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    detector = load_detector('dinov2', path=detector_path, device=device, option='--detector-path',
                             arch=f'dinov2_{arch}', preprocess='ambient', download=download)
    return detector, arch


def feature_scale(detector, arch, images, batch=64, chunk=None):
    """Distance scale in the detector's features (the memorization metric's extraction; cosine neighbours)."""
    feats = featurize(detector, torch.from_numpy(images), batch=batch)
    scale = distance_scale.measure_features(feats, chunk=chunk)
    scale['detector'] = detector_info(detector, arch)
    return scale

#----------------------------------------------------------------------------
# The advice.

def _groups_with_names(groups, names):
    return [[names[i] for i in g] for g in groups]


def advise(data, detector='pixel', detector_path=None, arch=None, download=False, per_image=False, chunk=None):
    """Measure a data set and recommend sigma_tn: (advice, extras).

    advice: the JSON-able dict advice.json holds. extras: `nearest` (each image's nearest distance, for the histogram)
    and `per_image` ({file name: sigma_tn} of advisor.per_image when asked, else None). The recommendation always
    comes from the pixel scale (sigma_tn is pixel noise); detector='dinov2' adds the scale in DINOv2 features under
    `feature_scale`.
    """
    if detector not in ('pixel', 'dinov2'):
        raise dnnlib.util.UserError(f'Unknown detector {detector!r}; choose pixel|dinov2')
    if detector != 'dinov2' and (detector_path is not None or arch is not None):
        raise dnnlib.util.UserError('--detector-path and --arch apply only to --detector=dinov2')
    images, names = read_images(data)
    dinov2 = load_dinov2(detector_path, arch, download) if detector == 'dinov2' else None # before the long work
    scale = distance_scale.measure(images, chunk=chunk)
    rec = advisor.recommend(scale)
    out = dict(
        data=os.fspath(data), num_images=scale['N'], num_distinct=scale['num_distinct'], shape=scale['shape'], dim=scale['d'],
        scale=dict(units=scale['units'], median_nn=scale['median_nn'], median_nn_per_sqrt_d=rec['per_sqrt_d'],
                   quantiles=scale['quantiles'],
                   quantiles_per_sqrt_d={k: {p: v / math.sqrt(scale['d']) for p, v in q.items()}
                                         for k, q in scale['quantiles'].items()},
                   near_duplicate_fraction=scale['near_duplicate_fraction'],
                   near_duplicate_threshold=scale['near_duplicate_threshold']),
        duplicate_groups=scale['duplicate_groups'], near_duplicate_groups=scale['near_duplicate_groups'],
        duplicate_group_files=_groups_with_names(scale['duplicate_groups'], names),
        near_duplicate_group_files=_groups_with_names(scale['near_duplicate_groups'], names),
        recommendation=rec, rule=dict(advisor.RULE), explanation=rec['explanation'],
        detector='pixel', feature_scale=None, per_image_file=None, pilot=None,
    )
    if detector == 'dinov2':
        fs = feature_scale(*dinov2, images, chunk=chunk)
        out['detector'] = 'dinov2'
        out['feature_scale'] = dict(detector=fs['detector'], units=fs['units'], median_nn=fs['median_nn'],
                                    median_similarity=fs['median_similarity'], quantiles=fs['quantiles'],
                                    note='sigma_tn is pixel noise: the recommendation comes from the pixel scale')
    # Kept beside the JSON fields, not in them: the per-sample arrays and the per-image map.
    extras = dict(nearest=scale['nearest'],
                  per_image=advisor.per_image(scale, names) if per_image else None)
    return out, extras

#----------------------------------------------------------------------------
# Text.

def _fmt(x, digits=3):
    return advisor.fmt(x, digits)


def summary_lines(advice):
    """The few lines the CLI prints."""
    s, rec = advice['scale'], advice['recommendation']
    q = s['quantiles']['nearest']
    c, h, w = advice['shape']
    lines = [f'{advice["data"]}: {advice["num_images"]} images of {c}x{h}x{w} (d={advice["dim"]}), pixels in [-1, 1]',
             f'Distance to the nearest other image: median {_fmt(q["p50"])} (p10 {_fmt(q["p10"])}, p90 {_fmt(q["p90"])}; '
             f'{_fmt(s["median_nn_per_sqrt_d"], 2)} per sqrt(d)); exact duplicates: {_groups_text(advice["duplicate_groups"])}; '
             f'near duplicates (< {_fmt(s["near_duplicate_threshold"], 2)}): {_groups_text(advice["near_duplicate_groups"])}']
    fs = advice.get('feature_scale')
    if fs:
        qf = fs['quantiles']['similarity']
        lines.append(f'DINOv2 {fs["detector"].get("arch")} features: cosine similarity to the nearest other image median '
                     f'{_fmt(fs["median_similarity"])} (p10 {_fmt(qf["p10"])}, p90 {_fmt(qf["p90"])}), distance between '
                     f'unit features median {_fmt(fs["median_nn"])}; the recommendation is pixel noise, from the pixel scale')
    lines += [f'Recommended sigma_tn = {advisor.fmt(rec["recommended"])} (range {advisor.fmt(rec["range"][0])} to '
              f'{advisor.fmt(rec["range"][1])})', rec['explanation']]
    return lines


def _groups_text(groups):
    if not groups:
        return 'none'
    sizes = sorted((len(g) for g in groups), reverse=True)
    return f'{len(groups)} group(s) of {sum(sizes)} images (largest {sizes[0]})'


def pilot_lines(pilot):
    """What the CLI prints after a pilot sweep."""
    if pilot is None:
        return []
    front = pilot['front_sigma_tn']
    runs = ', '.join(f'{advisor.fmt(r["sigma_tn"])} ({r["role"]})' for r in pilot['runs'])
    lines = [f'Pilot sweep in {pilot["outdir"]}: sigma_tn {runs}']
    if pilot['quality_metric'] is None:
        lines.append('No Pareto front: the pilot measured no quality (give --heldout with labelled held-out images)')
    else:
        lines.append(f'On the Pareto front ({pilot["quality_metric"]} vs memorized fraction): sigma_tn '
                     + ', '.join(advisor.fmt(x) for x in front))
    return lines


def report_markdown(advice, histogram_name='histogram.png'):
    """advice.md: the quantile table, the recommendation and its sentence, the histogram, groups, pilot."""
    s, rec = advice['scale'], advice['recommendation']
    c, h, w = advice['shape']
    qn, qs = s['quantiles']['nearest'], s['quantiles']['second']
    root_d = math.sqrt(advice['dim'])
    lines = ['# sigma_tn advice', '',
             f'Data: `{advice["data"]}`, {advice["num_images"]} images of {c}x{h}x{w} (d = {advice["dim"]}). Distances are '
             f'{s["units"]}.', '',
             f'**Recommended sigma_tn = {advisor.fmt(rec["recommended"])}** (range {advisor.fmt(rec["range"][0])} to '
             f'{advisor.fmt(rec["range"][1])}).', '', rec['explanation'], '',
             f'Rule (`ambient/method/advisor.py`, RULE): sigma_tn = c * m / sqrt(d) with m the median nearest-neighbour '
             f'distance, c = {advice["rule"]["recommended"]:g} (range {advice["rule"]["lo"]:g} to '
             f'{advice["rule"]["hi"]:g}).', '',
             '| quantile | nearest other image | second nearest | nearest / sqrt(d) |', '|---|---|---|---|']
    for p in qn:
        lines.append(f'| {p} | {_fmt(qn[p])} | {_fmt(qs[p])} | {_fmt(qn[p] / root_d)} |')
    lines += ['', f'![nearest-neighbour distances]({histogram_name})', '',
              f'Histogram of each image\'s distance to its nearest other image divided by sqrt(d): an image left of a '
              f'line has a nearest neighbour closer than the noise norm of that sigma_tn.', '']
    for what, key in [('Exact duplicates (distance 0)', 'duplicate_group_files'),
                      (f'Near duplicates (distance < {_fmt(s["near_duplicate_threshold"], 2)}, '
                       f'{s["near_duplicate_fraction"]:g} x the median)', 'near_duplicate_group_files')]:
        groups = advice[key]
        lines.append(f'{what}: {_groups_text(groups)}.')
        for g in groups[:MAX_GROUPS_SHOWN]:
            lines.append(f'- {", ".join(f"`{n}`" for n in g)}')
        if len(groups) > MAX_GROUPS_SHOWN:
            lines.append(f'- ... ({len(groups) - MAX_GROUPS_SHOWN} more in advice.json)')
        lines.append('')
    fs = advice.get('feature_scale')
    if fs:
        qd = fs['quantiles']['nearest']
        lines += [f'## DINOv2 features ({fs["detector"].get("arch")})', '', fs['note'] + '.', '',
                  '| quantile | distance between unit features | cosine similarity at that distance |', '|---|---|---|']
        lines += [f'| {p} | {_fmt(qd[p])} | {_fmt(1 - qd[p] ** 2 / 2)} |' for p in qd] + ['']
    if advice.get('per_image_file'):
        lines += [f'Per-image sigma_tn: `{advice["per_image_file"]}` (advisor.per_image, rule `nn`).', '']
    pilot = advice.get('pilot')
    if pilot:
        lines += ['## Pilot sweep', '', f'Runs in `{pilot["outdir"]}` (one training seed).', '',
                  f'| sigma_tn | role | {pilot["quality_metric"] or "quality"} | memorized fraction | Pareto front |',
                  '|---|---|---|---|---|']
        for r in pilot['runs']:
            fd = '-' if r['fd'] is None else _fmt(r['fd'])
            mem = '-' if r['ratio_fraction'] is None else f'{100 * r["ratio_fraction"]:.1f}%'
            lines.append(f'| {advisor.fmt(r["sigma_tn"])} | {r["role"]} | {fd} | {mem} | {"yes" if r["on_front"] else ""} |')
        lines += [''] + pilot_lines(pilot)[1:] + ['']
    return '\n'.join(lines)


def histogram_png(nearest, dim, advice, path):
    """histogram.png: nearest-neighbour distances / sqrt(d), vertical lines at lo, recommended and hi sigma_tn."""
    plt = pareto.pyplot()
    x = np.asarray(nearest, dtype=np.float64) / math.sqrt(dim)
    rec = advice['recommendation']
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(x, bins=min(50, max(10, len(x) // 5)), color='0.6', edgecolor='0.3', lw=0.4)
    for value, label, style in [(rec['range'][0], 'lo', ':'), (rec['recommended'], 'recommended', '-'),
                                (rec['range'][1], 'hi', '--')]:
        ax.axvline(value, color='C3', ls=style, lw=1.4, label=f'{label}: sigma_tn = {advisor.fmt(value)}')
    ax.axvline(rec['per_sqrt_d'], color='k', lw=0.8, label=f'median / sqrt(d) = {advisor.fmt(rec["per_sqrt_d"])}')
    ax.set_xlabel('distance to nearest other training image / sqrt(d)  (= sigma_tn with that noise norm)')
    ax.set_ylabel('images')
    ax.set_title(f'{advice["num_images"]} images, d = {dim}')
    ax.legend(fontsize=8)
    pareto.save_figure(fig, path)


def write_outputs(dest, advice, extras):
    """histogram.png, advice.md, sigma_tn_per_image.json (when computed) and advice.json (last), each atomically."""
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as err:
        raise dnnlib.util.write_error(dest, err, 'Cannot create') from None
    # An advice.json (or per-image file) of an earlier run must not vouch for a half-replaced set of files.
    for stale in ('advice.json', PER_IMAGE_FILE):
        if os.path.isfile(os.path.join(dest, stale)):
            os.remove(os.path.join(dest, stale))
    written = ['advice.json', 'advice.md', 'histogram.png']
    histogram_png(extras['nearest'], advice['dim'], advice, os.path.join(dest, 'histogram.png'))
    if extras.get('per_image') is not None:
        advice['per_image_file'] = PER_IMAGE_FILE
        dnnlib.util.atomic_write_bytes(os.path.join(dest, PER_IMAGE_FILE), _json_bytes(extras['per_image']))
        written.append(PER_IMAGE_FILE)
    dnnlib.util.atomic_write_bytes(os.path.join(dest, 'advice.md'), (report_markdown(advice) + '\n').encode())
    dnnlib.util.atomic_write_bytes(os.path.join(dest, 'advice.json'), _json_bytes(advice))
    return written


def _json_bytes(obj):
    return (json.dumps(obj, indent=2, default=_plain) + '\n').encode()


def _plain(x):
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f'{type(x).__name__} is not JSON serialisable')

#----------------------------------------------------------------------------
