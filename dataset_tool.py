"""Convert image collections into EDM's dataset format: a folder or zip of PNGs plus dataset.json."""

import functools
import io
import json
import os
import re
import zipfile

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

import dnnlib
from training.dataset_sources import open_source

UserError = dnnlib.util.UserError

#----------------------------------------------------------------------------
# Crop and resize, as EDM's dataset_tool.

def _resize(image, width, height):
    return np.array(PIL.Image.fromarray(image).resize((width, height), PIL.Image.Resampling.LANCZOS))

def _to_rgb(image):
    return image[:, :, np.newaxis].repeat(3, axis=2) if image.ndim == 2 else image

def _scale(width, height, image):
    if width is None or (image.shape[1] == width and image.shape[0] == height):
        return image
    return _resize(image, width, height)

def _center_crop(width, height, image):
    crop = min(image.shape[:2])
    top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return _resize(_to_rgb(image[top: top + crop, left: left + crop]), width, height)

def _center_crop_wide(width, height, image):
    crop_h = int(np.round(width * image.shape[0] / image.shape[1]))
    if image.shape[1] < width or crop_h < height:
        return None # Too small: skipped, as EDM does.
    top = (image.shape[0] - crop_h) // 2
    band = _resize(_to_rgb(image[top: top + crop_h]), width, height)
    canvas = np.zeros([width, width, 3], dtype=np.uint8)
    canvas[(width - height) // 2: (width - height) // 2 + height] = band
    return canvas

def _is_power_of_two(n):
    return n >= 1 and (n & (n - 1)) == 0

def make_transform(transform, resolution):
    """Image -> output image (or None to skip it) for --transform and --resolution=(W, H)."""
    width, height = resolution if resolution is not None else (None, None)
    if transform is None:
        if width is not None and (width != height or not _is_power_of_two(width)):
            raise UserError(f'--resolution must be square and a power of two, got {width}x{height}')
        return functools.partial(_scale, width, height)
    if width is None:
        raise UserError(f'--transform={transform} needs --resolution=WxH')
    if transform == 'center-crop':
        if width != height or not _is_power_of_two(width):
            raise UserError(f'--resolution must be square and a power of two, got {width}x{height}')
        return functools.partial(_center_crop, width, height)
    if transform == 'center-crop-wide':
        if not _is_power_of_two(width) or height > width:
            raise UserError(f'--transform=center-crop-wide needs a power-of-two width and height <= width, got {width}x{height}')
        return functools.partial(_center_crop_wide, width, height)
    raise UserError(f'Unknown --transform: {transform}')

def parse_resolution(value):
    """'WxH' or 'W,H' -> (W, H); tuples pass through."""
    if value is None or isinstance(value, tuple):
        return value
    match = re.match(r'^(\d+)[x,](\d+)$', str(value))
    if not match:
        raise UserError(f'Cannot parse --resolution={value}; expected WxH, e.g. 32x32')
    return int(match.group(1)), int(match.group(2))

#----------------------------------------------------------------------------
# Subsets.

def select_indices(num_images, labels, subset=None, seed=0, balanced=False):
    """Source indices to convert: all, or a seeded subset, optionally class-balanced.

    The subset is np.random.default_rng(seed).choice(num_images, subset, replace=False), sorted.
    Balanced: one default_rng(seed); for each class in ascending order, choice(that class's
    source indices, subset // num_classes, replace=False); the union sorted.
    """
    if subset is None:
        if balanced:
            raise UserError('--balanced needs --subset=N')
        return np.arange(num_images)
    if subset < 1:
        raise UserError(f'--subset must be positive, got {subset}')
    if subset > num_images:
        raise UserError(f'--subset={subset} is larger than the source ({num_images} images)')
    rng = np.random.default_rng(seed)
    if not balanced:
        return np.sort(rng.choice(num_images, size=subset, replace=False))
    if labels is None:
        raise UserError('--balanced needs class labels, and the source has none')
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise UserError('--balanced needs integer class labels')
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if subset % len(classes) != 0:
        raise UserError(f'--subset={subset} is not divisible by the {len(classes)} classes')
    per_class = subset // len(classes)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise UserError(f'--balanced: class {c} has {members.size} images, fewer than the {per_class} needed')
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))

#----------------------------------------------------------------------------
# Output: everything goes to a temporary name beside dest and is renamed into place at the end.

def _check_dest(dest):
    if dest == '':
        raise UserError('--dest must not be empty')
    is_zip = dest.lower().endswith('.zip')
    if os.path.isdir(dest):
        if os.listdir(dest):
            raise UserError(f'--dest {dest} already exists and is not empty')
        if is_zip:
            raise UserError(f'--dest {dest} is a folder, but its name asks for a zip')
    elif os.path.exists(dest):
        if os.path.getsize(dest) > 0:
            raise UserError(f'--dest {dest} already exists and is not empty')
        if not is_zip:
            raise UserError(f'--dest {dest} is a file; give a folder or a .zip name')
    return is_zip

def _make_parents(path):
    """Create path's missing parent folders; return them, deepest first, for cleanup."""
    created = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    for folder in reversed(created):
        os.mkdir(folder)
    return created

def _png_bytes(image):
    buf = io.BytesIO()
    PIL.Image.fromarray(image, 'L' if image.ndim == 2 else 'RGB').save(buf, format='png', compress_level=0, optimize=False)
    return buf.getvalue()

def _image_attrs(image):
    return dict(width=image.shape[1], height=image.shape[0], channels=image.shape[2] if image.ndim == 3 else 1)

def _check_image(attrs, first, name):
    """EDM's requirements: square power-of-two RGB or grayscale images, all alike."""
    if first is None:
        width, height = attrs['width'], attrs['height']
        if width != height:
            raise UserError(f'Images must be square after scale and crop, {name} is {width}x{height}; use --resolution or --transform')
        if not _is_power_of_two(width):
            raise UserError(f'Image size must be a power of two after scale and crop, {name} is {width}x{height}; use --resolution')
        if attrs['channels'] not in (1, 3):
            raise UserError(f'Images must be RGB or grayscale, {name} has {attrs["channels"]} channels')
    elif attrs != first:
        got = lambda a: f'{a["width"]}x{a["height"]}x{a["channels"]}'
        raise UserError(f'Image {name} is {got(attrs)} (WxHxC) but earlier images are {got(first)}; '
                        'all images must match (use --resolution to resize)')

def _write_all(source, indices, transform_image, write):
    """Transform, check and write the chosen images; return dataset.json's labels and the written source indices."""
    labels, written, first = [], [], None
    for out_idx, src_idx in enumerate(tqdm(indices, disable=None)):
        image = transform_image(source.load(int(src_idx)))
        if image is None:
            continue
        fname = f'{out_idx // 1000:05d}/img{out_idx:08d}.png'
        attrs = _image_attrs(image)
        _check_image(attrs, first, f'{source.describe(int(src_idx))} (output {fname})')
        first = first or attrs
        write(fname, _png_bytes(image))
        labels.append([fname, source.labels[src_idx]] if source.labels is not None else None)
        written.append(int(src_idx))
    return labels, written

def check_labels(src):
    """UserError unless the source's labels are what train.py --cond=1 accepts: all class integers >= 0, or all
    number lists of one length (checked before anything is written)."""
    if src.labels is None or all(x is None for x in src.labels):
        return
    is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)
    is_num = lambda x: (isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x))
    first = src.labels[0]
    for i, label in enumerate(src.labels):
        if is_int(first):
            ok = is_int(label) and label >= 0
            want = 'a class integer >= 0'
        else:
            ok = isinstance(label, list) and isinstance(first, list) and len(label) == len(first) and all(map(is_num, label))
            want = f'a list of {len(first)} finite numbers' if isinstance(first, list) else 'a class integer >= 0'
        if not ok:
            raise UserError(f'Label of {src.describe(i)} is {json.dumps(label)}, not {want}; '
                            'fix dataset.json (train.py --cond=1 needs such labels)')

def convert_dataset(source, dest, max_images=None, transform=None, resolution=None, subset=None, seed=0, balanced=False):
    """Convert source into an EDM dataset at dest (folder or .zip); return the number of images written."""
    PIL.Image.init()
    resolution = parse_resolution(resolution)
    transform_image = make_transform(transform, resolution)
    src = open_source(source)
    is_zip = _check_dest(dest)
    dnnlib.util.check_writable(os.path.normpath(dest), is_dir=not is_zip, what='--dest')
    check_labels(src)
    if max_images is not None and max_images < 1:
        raise UserError(f'--max-images must be positive, got {max_images}')
    num_images = src.num_images if max_images is None else min(src.num_images, max_images)
    indices = select_indices(num_images, src.labels, subset=subset, seed=seed, balanced=balanced)

    created = _make_parents(os.path.normpath(dest))
    try:
        with dnnlib.util.atomic_output(os.path.normpath(dest)) as tmp:
            if is_zip:
                with zipfile.ZipFile(tmp, mode='w', compression=zipfile.ZIP_STORED) as zf:
                    labels, written = _write_all(src, indices, transform_image, zf.writestr)
                    zf.writestr('dataset.json', json.dumps(_metadata(src, labels, written, subset, seed, balanced)))
            else:
                def write_file(fname, data):
                    path = os.path.join(tmp, fname)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, 'wb') as f:
                        f.write(data)
                os.mkdir(tmp)
                labels, written = _write_all(src, indices, transform_image, write_file)
                write_file('dataset.json', json.dumps(_metadata(src, labels, written, subset, seed, balanced)).encode('utf8'))
    except BaseException:
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise
    return len(written)

def _metadata(src, labels, written, subset, seed, balanced):
    """dataset.json: EDM's labels, plus the provenance of a --subset (extra keys EDM's loader ignores)."""
    meta = {'labels': labels if labels and all(x is not None for x in labels) else None}
    if subset is not None:
        meta.update(source=src.description, subset_seed=seed, subset_balanced=balanced, source_indices=written)
    return meta

#----------------------------------------------------------------------------
# Command line.

class _DefaultToConvert(click.Group):
    """Run `convert` when no subcommand is named, so EDM's `dataset_tool.py --source=... --dest=...` works."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] != '--help':
            args = ['convert', *args]
        return super().parse_args(ctx, args)

@click.group(cls=_DefaultToConvert)
def cli():
    """Dataset tool: build EDM-format datasets (PNG folder or zip plus dataset.json).

    `convert` is the default command: `python dataset_tool.py --source=... --dest=...`
    is the same as `python dataset_tool.py convert --source=... --dest=...`.
    """

@cli.command()
@click.option('--source',     help='Input directory, archive name, or "digits"', metavar='PATH', type=str, required=True)
@click.option('--dest',       help='Output directory or archive name', metavar='PATH',  type=str, required=True)
@click.option('--max-images', help='Maximum number of images to output', metavar='INT', type=int)
@click.option('--transform',  help='Input crop/resize mode', metavar='MODE',            type=click.Choice(['center-crop', 'center-crop-wide']))
@click.option('--resolution', help='Output resolution (e.g., 512x512)', metavar='WxH',  type=str, callback=lambda ctx, param, v: parse_resolution(v))
@click.option('--subset',     help='Keep a seeded random subset of N images', metavar='INT', type=int)
@click.option('--seed',       help='Seed of --subset', metavar='INT',                   type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--balanced',   help='Make --subset class-balanced', is_flag=True)
def convert(**kwargs):
    """Convert an image dataset into an EDM dataset folder or zip.

    The input format is guessed from --source:

    \b
    --source digits                     scikit-learn's 1797 real 8x8 grey digits (a folder: ./digits)
    --source cifar-10-python.tar.gz     CIFAR-10 training batches data_batch_1..5
    --source train-images-idx3-ubyte.gz MNIST training set (labels file beside it), padded to 32x32
    --source mnist/                     the same, from a folder holding the two .gz files
    --source path/                      all images below path/, recursively
    --source dataset.zip                all images in dataset.zip

    Labels come from dataset.json ({"labels": [[relpath, int], ...]}) at the source root, or
    else from the top-level folder names. The output (--dest folder or .zip) holds uncompressed
    PNGs named 00000/img00000000.png and dataset.json with the labels (null when there are none).
    Output images must be square with power-of-two sides, all alike; --resolution=WxH resizes
    (Lanczos), --transform=center-crop|center-crop-wide crops first (needs --resolution).
    --max-images keeps the first N source images.

    --subset=N --seed=S keeps np.random.default_rng(S).choice(M, N, replace=False), sorted, of the
    M source images (after --max-images). --balanced draws N/classes per class instead (classes in
    ascending order, one generator). dataset.json then also records "source", "subset_seed",
    "subset_balanced" and "source_indices" (the source index of each written image, in order).
    """
    convert_dataset(**kwargs)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cli()

#----------------------------------------------------------------------------
