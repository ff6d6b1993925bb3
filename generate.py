"""Generate images with EDM's samplers from a network snapshot (.pkl, .safetensors or URL); torchrun-aware."""

import os
import time

import click
import numpy as np
import PIL.Image
import torch
import tqdm

import dnnlib
from torch_utils import cpu_features, distributed as dist
from training import sampler
from training.snapshot import load_network

#----------------------------------------------------------------------------

def rank_batches(seeds, max_batch_size, rank, world_size):
    """EDM's split: equal batch counts per rank, batch b goes to rank b % world_size."""
    num_batches = ((len(seeds) - 1) // (max_batch_size * world_size) + 1) * world_size
    all_batches = torch.as_tensor(seeds, dtype=torch.int64).tensor_split(num_batches)
    return [b.tolist() for b in all_batches[rank::world_size]]


def image_path(outdir, seed, subdirs):
    """Where the image of `seed` goes: outdir/SSSSSS.png, or outdir/TTT000/SSSSSS.png with subdirs."""
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')


def save_png(image, path):
    """Save one uint8 HWC array (grey as L, colour as RGB) through a temporary name."""
    try:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    except OSError as err:
        raise dnnlib.util.write_error(os.path.dirname(path), err, 'Cannot create') from None
    pil = PIL.Image.fromarray(image[:, :, 0], 'L') if image.shape[2] == 1 else PIL.Image.fromarray(image, 'RGB')
    # The temporary name has no image extension, so a crash cannot leave a file that fid.py would count.
    with dnnlib.util.atomic_output(path) as tmp:
        pil.save(tmp, format='PNG')


def save_grid(paths, dest):
    """Tile the given PNGs (same size) into one near-square grid PNG, row-major, tiles at least 32 pixels."""
    images = [np.array(PIL.Image.open(p)) for p in paths]
    images = [im[:, :, None] if im.ndim == 2 else im for im in images]
    # Tiny images (8x8 digits) are enlarged by pixel repetition so the grid is readable at a glance.
    zoom = max(1, -(-32 // max(images[0].shape[:2])))
    images = [im.repeat(zoom, axis=0).repeat(zoom, axis=1) for im in images]
    h, w, c = images[0].shape
    cols = int(np.ceil(np.sqrt(len(images))))
    rows = (len(images) - 1) // cols + 1
    grid = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    save_png(grid, dest)

#----------------------------------------------------------------------------

def check_sampler_options(sigma_min=None, sigma_max=None, S_min=None, S_max=None, **_):
    """UserError for sampler options that are each valid but contradict each other."""
    if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
        raise dnnlib.util.UserError(f'--sigma_min={sigma_min:g} must be less than --sigma_max={sigma_max:g}')
    if S_min is not None and S_max is not None and S_min > S_max:
        raise dnnlib.util.UserError(f'--S_min={S_min:g} must not exceed --S_max={S_max:g}')


def resolve_network(network_pkl):
    """--network as given, or the newest network snapshot of a training run directory."""
    if dnnlib.util.is_url(network_pkl) or not os.path.isdir(network_pkl):
        return network_pkl
    from training import checkpoint # pylint: disable=import-outside-toplevel
    found = checkpoint.list_snapshots(network_pkl)
    if not found:
        raise dnnlib.util.UserError(f'--network: {network_pkl} is a directory without network-snapshot-*.pkl; give a snapshot file')
    dist.print0(f'Using the newest snapshot of {network_pkl}: {os.path.basename(found[-1][1])}')
    return found[-1][1]


def generate(network_pkl, outdir, seeds, subdirs=False, class_idx=None, max_batch_size=64, grid=None, device=None,
             bf16=False, compile=False, channels_last=False, **sampler_kwargs):
    """Write one PNG per seed (this rank's share of the seeds); rank 0 also writes the grid."""
    device = dist.get_device() if device is None else torch.device(device)
    check_sampler_options(**sampler_kwargs)
    # Outputs are checked before the network loads and sampling starts, not after the first batch.
    dnnlib.util.check_writable(outdir, is_dir=True, what='--outdir')
    if grid is not None:
        dnnlib.util.check_writable(grid, what='--grid')
    network_pkl = resolve_network(network_pkl)

    dist.print0(f'Loading network from "{network_pkl}"...')
    with dist.rank0_first():
        net = load_network(network_pkl, device=device, verbose=(dist.get_rank() == 0))
    try:
        sampler.check_class_idx(net, class_idx)
    except ValueError as e:
        raise dnnlib.util.UserError(f'--class: {e}') from None

    if bf16 or compile or channels_last:
        net = sampler.Denoiser(net, bf16=bf16, compile=compile, channels_last=channels_last)
    note = cpu_features.bf16_note(bf16, channels_last, device)
    if note:
        dist.print0(note)
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"...')
    batches = rank_batches(seeds, max_batch_size, dist.get_rank(), dist.get_world_size())
    for batch_idx, batch_seeds in enumerate(tqdm.tqdm(batches, unit='batch', disable=(dist.get_rank() != 0))):
        if not batch_seeds:
            continue
        start = time.time()
        images = sampler.sample_batch(net, batch_seeds, class_idx, device, **sampler_kwargs).numpy()
        if compile and batch_idx == 0: # Compilation happens inside the first batch; its cost is worth a line.
            dist.print0(f'torch.compile: first batch took {time.time() - start:.1f} s, compilation included')
        for seed, image in zip(batch_seeds, images):
            save_png(image, image_path(outdir, seed, subdirs))

    dist.barrier()
    if grid is not None and dist.get_rank() == 0:
        save_grid([image_path(outdir, s, subdirs) for s in seeds], grid)
        dist.print0(f'Grid of {len(seeds)} images written to "{grid}".')
    dist.print0('Done.')

#----------------------------------------------------------------------------

def _parse_seeds(ctx, param, value): # pylint: disable=unused-argument
    seeds = dnnlib.util.parse_int_list(value)
    if not seeds:
        raise dnnlib.util.UserError('--seeds: empty seed list')
    if len(set(seeds)) != len(seeds):
        raise dnnlib.util.UserError('--seeds: the list repeats a seed')
    return seeds


@click.command()
@click.option('--network', 'network_pkl',  help='Network pickle or .safetensors', metavar='PATH|URL',               type=str, required=True)
@click.option('--outdir',                  help='Where to save the output images', metavar='DIR',                   type=str, required=True)
@click.option('--seeds',                   help='Random seeds (e.g. 1,2,5-10)', metavar='LIST',                     type=str, default='0-63', show_default=True, callback=_parse_seeds)
@click.option('--subdirs',                 help='Create subdirectory for every 1000 seeds',                         is_flag=True)
@click.option('--class', 'class_idx',      help='Class label  [default: random]', metavar='INT',                    type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT',                                type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--grid',                    help='Also tile all images into one PNG  [alone: OUTDIR-grid.png]', metavar='[PNG]', type=str, default=None, is_flag=False, flag_value='')
@click.option('--bf16',                    help='bfloat16 autocast in the network (images change slightly)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--compile',                 help='torch.compile the denoiser (changes rounding only)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--channels_last',           help='Feed the network NHWC batches (changes rounding only; with --bf16 on AMX CPUs)', metavar='BOOL', type=bool, default=False, show_default=True)

@click.option('--steps', 'num_steps',      help='Number of sampling steps', metavar='INT',                          type=click.IntRange(min=1), default=18, show_default=True)
@click.option('--sigma_min',               help='Lowest noise level  [default: varies]', metavar='FLOAT',           type=dnnlib.util.FiniteFloat(min=0, min_open=True))
@click.option('--sigma_max',               help='Highest noise level  [default: varies]', metavar='FLOAT',          type=dnnlib.util.FiniteFloat(min=0, min_open=True))
@click.option('--rho',                     help='Time step exponent', metavar='FLOAT',                              type=dnnlib.util.FiniteFloat(min=0, min_open=True), default=7, show_default=True)
@click.option('--S_churn', 'S_churn',      help='Stochasticity strength', metavar='FLOAT',                          type=dnnlib.util.FiniteFloat(min=0), default=0, show_default=True)
@click.option('--S_min', 'S_min',          help='Stoch. min noise level', metavar='FLOAT',                          type=dnnlib.util.FiniteFloat(min=0), default=0, show_default=True)
@click.option('--S_max', 'S_max',          help='Stoch. max noise level', metavar='FLOAT',                          type=dnnlib.util.FiniteFloat(min=0, allow_inf=True), default='inf', show_default=True)
@click.option('--S_noise', 'S_noise',      help='Stoch. noise inflation', metavar='FLOAT',                          type=dnnlib.util.FiniteFloat(min=0), default=1, show_default=True)

@click.option('--solver',                  help='Ablate ODE solver', metavar='euler|heun',                          type=click.Choice(['euler', 'heun']))
@click.option('--disc', 'discretization',  help='Ablate time step discretization {t_i}', metavar='vp|ve|iddpm|edm', type=click.Choice(['vp', 've', 'iddpm', 'edm']))
@click.option('--schedule',                help='Ablate noise schedule sigma(t)', metavar='vp|ve|linear',           type=click.Choice(['vp', 've', 'linear']))
@click.option('--scaling',                 help='Ablate signal scaling s(t)', metavar='vp|none',                    type=click.Choice(['vp', 'none']))
def main(**kwargs):
    """Generate images with EDM's samplers, one PNG per seed.

    The image of a seed depends only on the seed and the sampler options, never on --batch or the
    number of processes (up to the rounding of the network's kernels, which other batch shapes and
    CPUs may change: at most one grey level on a few pixels).

    Examples:

    \b
    # 64 images from a snapshot into out/*.png, plus a grid out-grid.png
    python generate.py --outdir=out --seeds=0-63 --grid \\
        --network=training-runs/00000-run/network-snapshot-000100.safetensors

    \b
    # 1000 images on 2 processes (GPUs, or CPU with gloo)
    torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
    """
    dist.init()
    if kwargs['grid'] == '': # Bare --grid: a sibling of the image folder, so that fid.py never reads it as a sample.
        kwargs['grid'] = os.path.normpath(kwargs['outdir']) + '-grid.png'
    generate(**kwargs)
    dist.shutdown() # Only on success: after an error the other ranks may never reach this barrier.

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
