"""Train a diffusion model with EDM's recipe (Karras et al. 2022), optionally with another loss family such as ambient."""

import json
import os
import re
import warnings

import click
import torch

import dnnlib
from ambient.method.loss import AUG_ORDERS as AMBIENT_AUG_ORDERS, SPLITS as AMBIENT_SPLITS # The option lists' one source.
from torch_utils import cpu_features, distributed as dist

# Loss families: `edm` is the preconditioner's native loss; the others name a configure(c, opts) -> tag function,
# imported only when chosen.
LOSS_FAMILIES = {'edm': None, 'ambient': 'ambient.method.config.configure',
                 'masking': 'ambient.baselines.config.configure_masking', # Table 2 baselines
                 'noisy_only': 'ambient.baselines.config.configure_noisy_only'}
FAMILY_OPTIONS = ('sigma_tn', 'sigma_tn_per_image', 'ambient_split', 'noise_seed', 'ambient_aug_order', 'ambient_augment',
                  'mask_p', 'mask_delta', 'mask_seed', 'mask_samples')

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}
PRECONDITIONERS = {
    'vp':  ('training.networks.VPPrecond', 'training.loss.VPLoss'),
    've':  ('training.networks.VEPrecond', 'training.loss.VELoss'),
    'edm': ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
}
OPTIMIZERS = {'adam': 'torch.optim.Adam', 'adamw': 'torch.optim.AdamW'}
FAST_PATHS = ('compile', 'channels_last', 'fused', 'tf32') # BOOL options that leave the default path exact when off.

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides') # Spurious DDP warning (as EDM).

#----------------------------------------------------------------------------
# Option parsing.

def parse_int_list(s):
    """'1,2,5-10' -> [1, 2, 5, 6, 7, 8, 9, 10] (click converter); every entry positive."""
    values = dnnlib.util.parse_int_list(s)
    if not values or any(v < 1 for v in values):
        raise dnnlib.util.UserError(f'Invalid list "{s}": expected positive integers, e.g. 1,2,2')
    return values

def parse_betas(s):
    """'0.9,0.999' -> [0.9, 0.999] (click converter)."""
    if isinstance(s, (list, tuple)):
        return list(s)
    try:
        betas = [float(x) for x in s.split(',')]
    except ValueError:
        betas = []
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise dnnlib.util.UserError(f'--betas must be two numbers in [0, 1), e.g. 0.9,0.999; got "{s}"')
    return betas

#----------------------------------------------------------------------------
# Configuration: the keyword arguments of training_loop.training_loop().

def network_config(opts):
    """network_kwargs for --arch/--precond and the network options."""
    kwargs = dnnlib.EasyDict(ARCHITECTURES[opts.arch])
    kwargs.class_name = PRECONDITIONERS[opts.precond][0]
    if opts.cbase is not None:
        kwargs.model_channels = opts.cbase
    if opts.cres is not None:
        kwargs.channel_mult = opts.cres
    if opts.blocks is not None:
        kwargs.num_blocks = opts.blocks
    if opts.attn is not None:
        kwargs.attn_resolutions = opts.attn
    if opts.augment:
        kwargs.augment_dim = 9
    kwargs.update(dropout=opts.dropout, use_fp16=opts.fp16)
    return kwargs

def optimizer_config(opts):
    """optimizer_kwargs for --optimizer/--lr/--betas/--eps/--wd (EDM's Adam by default)."""
    kwargs = dnnlib.EasyDict(class_name=OPTIMIZERS[opts.optimizer], lr=opts.lr, betas=opts.betas, eps=opts.eps)
    if opts.wd or opts.optimizer == 'adamw': # AdamW's own default decay would otherwise apply silently.
        kwargs.weight_decay = opts.wd
    if opts.get('fused'):
        kwargs.fused = True # One kernel per step over all tensors; rounding differs slightly from the per-tensor loop.
    return kwargs

def _describe_dataset(c, opts):
    """Open the dataset once to validate it; fixes resolution and size in c.dataset_kwargs; returns its name."""
    try:
        dataset_obj = dnnlib.util.construct_class_by_name(**c.dataset_kwargs)
    except IOError as err:
        raise dnnlib.util.UserError(f'--data: {err}') from None
    if opts.cond and not dataset_obj.has_labels:
        raise dnnlib.util.UserError('--cond=True requires labels specified in dataset.json')
    # Every image is checked here, before the run directory exists, not later inside a DataLoader worker.
    if hasattr(dataset_obj, 'validate'):
        dataset_obj.validate(decode=opts.cache)
    c.dataset_kwargs.resolution = dataset_obj.resolution
    c.dataset_kwargs.max_size = len(dataset_obj)
    _check_network(c.network_kwargs, dataset_obj)
    return dataset_obj.name

def _check_network(network_kwargs, dataset_obj):
    """Construct the network once on the meta device (no memory, no weights): bad sizes fail here, in one line."""
    label_dim = dataset_obj.label_dim if dataset_obj.has_labels and getattr(dataset_obj, '_use_labels', True) else 0
    try:
        # The sizes are the U-Net's; VP/VE/iDDPM preconditioners compute schedule constants with .item(), which the
        # meta device cannot, so the check wraps the same U-Net in EDM's preconditioner.
        kwargs = dict(network_kwargs)
        if str(kwargs.get('class_name', '')).startswith('training.networks.') and kwargs['class_name'].endswith('Precond'):
            kwargs['class_name'] = 'training.networks.EDMPrecond'
        with torch.device('meta'), torch.no_grad():
            net = dnnlib.util.construct_class_by_name(**kwargs, img_resolution=dataset_obj.resolution,
                                                      img_channels=dataset_obj.num_channels, label_dim=label_dim)
            res = dataset_obj.resolution
            net.eval()(torch.zeros([1, dataset_obj.num_channels, res, res]), torch.ones([1]), torch.zeros([1, label_dim]))
    except dnnlib.util.UserError:
        raise
    except Exception as e: # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise dnnlib.util.UserError(f'Cannot build the network for {dataset_obj.resolution}x{dataset_obj.resolution} images '
                                    f'with --cbase={network_kwargs.get("model_channels")} --cres={",".join(map(str, network_kwargs.get("channel_mult", [])))} '
                                    f'(check --cbase/--cres/--attn/--blocks): {first}') from None

def _apply_loss_family(c, opts):
    """Let a non-native loss family edit c; returns its run-directory tag ('' for edm)."""
    given = [name for name in FAMILY_OPTIONS if opts.get(name) is not None]
    if opts.get('sigma_tn_per_image') is not None and opts.loss != 'ambient':
        raise dnnlib.util.UserError('--sigma_tn_per_image requires --loss=ambient')
    if opts.loss == 'edm':
        if given:
            raise dnnlib.util.UserError(f'--{given[0]} requires --loss=ambient (or masking / noisy_only)')
        return ''
    func_name = LOSS_FAMILIES[opts.loss]
    try:
        configure = dnnlib.util.get_obj_by_name(func_name)
    except (ImportError, AttributeError) as e:
        raise dnnlib.util.UserError(f'--loss={opts.loss}: cannot load {func_name}: {e}') from None
    tag = configure(c, opts)
    return str(tag) if tag else opts.loss

def _pick_seed(opts, state):
    """--seed, else the resumed run's seed, else a fresh random one agreed by all ranks."""
    if state is not None:
        if opts.seed is not None and opts.seed != state['seed']:
            raise dnnlib.util.UserError(f'--seed={opts.seed} differs from the resumed run\'s seed {state["seed"]}')
        return int(state['seed'])
    if opts.seed is not None:
        return opts.seed
    seed = torch.tensor(int.from_bytes(os.urandom(4), 'little') % (1 << 31), dtype=torch.int64)
    if dist.is_distributed():
        seed = seed.to(dist.get_sync_device())
        torch.distributed.broadcast(seed, src=0)
    return int(seed)

def _check_transfer(path):
    """UserError unless --transfer unpickles to a snapshot dict with an "ema" network (read before any output)."""
    import pickle # pylint: disable=import-outside-toplevel
    with dist.rank0_first(), dnnlib.util.open_url(path, verbose=(dist.get_rank() == 0)) as f:
        try:
            data = pickle.load(f)
        except Exception as e: # pylint: disable=broad-except
            raise dnnlib.util.UserError(f'--transfer: {path} is not a network snapshot pickle '
                                        f'({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise dnnlib.util.UserError(f'--transfer: {path} holds no "ema" network')

def _resume_config(c, opts):
    """Transfer/resume options as (training_loop() arguments, training state being resumed or None)."""
    from training import checkpoint # Imported late: the options above need no network code.
    if opts.transfer is not None:
        if opts.resume is not None:
            raise dnnlib.util.UserError('--transfer and --resume cannot be specified at the same time')
        if not dnnlib.util.is_url(opts.transfer, allow_file_urls=True) and not os.path.isfile(opts.transfer):
            raise dnnlib.util.UserError(f'--transfer: no such file: {opts.transfer}')
        return dnnlib.EasyDict(resume_pkl=opts.transfer, ema_rampup_ratio=None), None
    if opts.resume is None:
        return dnnlib.EasyDict(), None
    resume_state_dump = checkpoint.find_training_state(opts.resume)
    dist.print0(f'Loading training state from "{resume_state_dump}"...')
    state = checkpoint.load_training_state(resume_state_dump)
    checkpoint.check_resume_compatible(state, network_kwargs=c.network_kwargs, loss_kwargs=c.loss_kwargs,
                                          dataset_kwargs=c.dataset_kwargs)
    return dnnlib.EasyDict(resume_state_dump=resume_state_dump), state

def build_config(opts):
    """All training_loop() arguments for the parsed options: (config, run description, loaded training state or None).

    Raises UserError on bad input. The state of --resume is read and checked here, once, and handed to the loop.
    """
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data,
                                       use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = network_config(opts)
    c.loss_kwargs = dnnlib.EasyDict(class_name=PRECONDITIONERS[opts.precond][1])
    c.optimizer_kwargs = optimizer_config(opts)
    if opts.augment:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment)
        c.augment_kwargs.update(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    dataset_name = _describe_dataset(c, opts)
    tag = _apply_loss_family(c, opts)

    c.total_kimg = max(int(opts.duration * 1000), 1)
    if opts.iters is not None:
        c.total_iters = opts.iters
    c.ema_halflife_kimg = int(opts.ema * 1000)
    if opts.lr_rampup is not None:
        c.lr_rampup_kimg = opts.lr_rampup
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu, loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    if opts.bf16:
        if opts.fp16:
            raise dnnlib.util.UserError('--fp16 and --bf16 cannot be combined')
        c.bf16 = True
    # Recorded only when chosen, so that a plain run's training_options.json stays EDM's (--fused: optimizer_kwargs).
    c.update({name: True for name in FAST_PATHS if name != 'fused' and opts.get(name)})
    from training import loggers, training_loop
    c_loggers = loggers.parse_names(opts.get('logger'))
    loggers.check_available(c_loggers) # A missing package fails now, in one line, not after the first tick.
    if c_loggers:
        c.loggers = c_loggers # Only when chosen: a plain run's training_options.json stays EDM's.
    training_loop.split_batch(opts.batch, opts.batch_gpu) # Fail now rather than after creating the run directory.
    resume_kwargs, state = _resume_config(c, opts)
    c.seed = _pick_seed(opts, state)
    c.update(resume_kwargs) # After the seed, as EDM orders training_options.json.

    cond_str = 'cond' if c.dataset_kwargs.use_labels else 'uncond'
    dtype_str = 'fp16' if opts.fp16 else ('bf16' if opts.bf16 else 'fp32')
    desc = f'{dataset_name}-{cond_str}-{opts.arch}-{opts.precond}-gpus{dist.get_world_size()}-batch{opts.batch}-{dtype_str}'
    if tag:
        desc += f'-{tag}'
    if opts.desc is not None:
        desc += f'-{opts.desc}'
    return c, desc, state

#----------------------------------------------------------------------------
# Output directory.

def pick_run_dir(outdir, desc, nosubdir):
    """outdir itself, or outdir/<next id>-<desc> as EDM numbers runs."""
    if nosubdir:
        return outdir
    prev_ids = []
    if os.path.isdir(outdir):
        prev_ids = [int(m.group()) for x in os.listdir(outdir)
                    if os.path.isdir(os.path.join(outdir, x)) and (m := re.match(r'^\d+', x))]
    return os.path.join(outdir, f'{max(prev_ids, default=-1) + 1:05d}-{desc}')

def _check_outdir(outdir):
    """UserError when outdir cannot be created or written (checked without creating anything)."""
    dnnlib.util.check_writable(outdir, is_dir=True, what='--outdir')
    parent = os.path.abspath(outdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise dnnlib.util.UserError(f'--outdir: cannot create or write {outdir} ({parent} is not a writable directory)')

def _all_ranks_ok(ok):
    """True when `ok` holds on every rank (a collective call when distributed)."""
    if not dist.is_distributed():
        return ok
    flag = torch.tensor(int(ok), device=dist.get_sync_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)

def create_run_dir(c):
    """Rank 0 creates the run directory and writes training_options.json atomically."""
    error = None
    if dist.get_rank() == 0:
        try:
            os.makedirs(c.run_dir, exist_ok=True)
            data = json.dumps(c, indent=2).encode()
            dnnlib.util.atomic_write_bytes(os.path.join(c.run_dir, 'training_options.json'), data)
        except OSError as e:
            error = f'--outdir: cannot create {c.run_dir}: {e.strerror or e}'
    if not _all_ranks_ok(error is None):
        raise dnnlib.util.UserError(error or '--outdir: rank 0 could not create the run directory')

def _print_options(c, opts):
    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    dist.print0(f'Dataset path:            {c.dataset_kwargs.path}')
    dist.print0(f'Class-conditional:       {c.dataset_kwargs.use_labels}')
    dist.print0(f'Network architecture:    {opts.arch}')
    dist.print0(f'Preconditioning & loss:  {opts.precond}')
    dist.print0(f'Loss family:             {opts.loss}')
    dist.print0(f'Number of GPUs:          {dist.get_world_size()}')
    dist.print0(f'Batch size:              {c.batch_size}')
    dist.print0(f'Mixed-precision:         {"fp16" if c.network_kwargs.use_fp16 else ("bf16" if opts.bf16 else "off")}')
    fast = [name for name in FAST_PATHS if opts.get(name)]
    if fast:
        dist.print0(f'Fast paths:              {", ".join(fast)}')
    note = cpu_features.bf16_note(opts.bf16, opts.get('channels_last'), dist.get_device())
    if note:
        dist.print0(note)
    dist.print0()

#----------------------------------------------------------------------------

@click.command()

# Main options.
@click.option('--outdir',        help='Where to save the results', metavar='DIR',                   type=str, required=True)
@click.option('--data',          help='Path to the dataset', metavar='ZIP|DIR',                     type=str, required=True)
@click.option('--cond',          help='Train class-conditional model', metavar='BOOL',              type=bool, default=False, show_default=True)
@click.option('--arch',          help='Network architecture', metavar='ddpmpp|ncsnpp|adm',          type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond',       help='Preconditioning & loss function', metavar='vp|ve|edm',       type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True)
@click.option('--loss',          help='Loss family (edm = native loss of --precond)', metavar='|'.join(sorted(LOSS_FAMILIES)), type=click.Choice(sorted(LOSS_FAMILIES)), default='edm', show_default=True)

# Loss-family options (passed to the family's configure function).
@click.option('--sigma_tn',      help='Ambient: noise level of the fixed noisy copies', metavar='FLOAT', type=dnnlib.util.FiniteFloat(min=0))
@click.option('--sigma_tn_per_image', help='Ambient: each image\'s noise level instead, {file name: sigma_tn} as JSON or CSV (file,sigma_tn)', metavar='FILE', type=str)
@click.option('--ambient_split', help='Ambient: how sigma is split around sigma_tn', metavar='|'.join(AMBIENT_SPLITS), type=click.Choice(AMBIENT_SPLITS))
@click.option('--noise_seed',    help='Ambient: seed of the fixed noisy copies', metavar='INT',     type=click.IntRange(min=0))
@click.option('--ambient_aug_order', help='Ambient: augment the noisy copy, or augment clean then add noise', metavar='|'.join(AMBIENT_AUG_ORDERS), type=click.Choice(AMBIENT_AUG_ORDERS))
@click.option('--ambient_augment', help='Ambient/noisy_only: noise-preserving augmentations only (safe) or EDM\'s full set  [default: safe]', metavar='safe|edm', type=click.Choice(['safe', 'edm']))
@click.option('--mask_p',        help='Masking: erasure probability of each image\'s fixed mask A', metavar='FLOAT', type=dnnlib.util.FiniteFloat(min=0, max=1, max_open=True))
@click.option('--mask_delta',    help='Masking: extra erasure probability during training  [default: 0.1]', metavar='FLOAT', type=dnnlib.util.FiniteFloat(min=0, max=1, max_open=True))
@click.option('--mask_seed',     help='Masking: seed of the fixed masks  [default: 0]', metavar='INT', type=click.IntRange(min=0))
@click.option('--mask_samples',  help='Masking: masks averaged per denoiser call when sampling  [default: 1]', metavar='INT', type=click.IntRange(min=1))

# Hyperparameters.
@click.option('--duration',      help='Training duration', metavar='MIMG',                          type=dnnlib.util.FiniteFloat(min=0, min_open=True), default=200, show_default=True)
@click.option('--iters',         help='Training duration in optimizer steps (overrides --duration)', metavar='INT', type=click.IntRange(min=1))
@click.option('--batch',         help='Total batch size', metavar='INT',                            type=click.IntRange(min=1), default=512, show_default=True)
@click.option('--batch-gpu',     help='Limit batch size per GPU', metavar='INT',                    type=click.IntRange(min=1))
@click.option('--cbase',         help='Channel multiplier  [default: varies]', metavar='INT',       type=click.IntRange(min=1))
@click.option('--cres',          help='Channels per resolution  [default: varies]', metavar='LIST', type=parse_int_list)
@click.option('--blocks',        help='Residual blocks per resolution  [default: varies]', metavar='INT', type=click.IntRange(min=1))
@click.option('--attn',          help='Resolutions with self-attention  [default: varies]', metavar='LIST', type=parse_int_list)
@click.option('--lr',            help='Learning rate', metavar='FLOAT',                             type=dnnlib.util.FiniteFloat(min=0, min_open=True, max=1e6), default=10e-4, show_default=True)
@click.option('--lr_rampup',     help='Learning-rate ramp-up  [default: 10000]', metavar='KIMG',    type=dnnlib.util.FiniteFloat(min=0))
@click.option('--ema',           help='EMA half-life', metavar='MIMG',                              type=dnnlib.util.FiniteFloat(min=0), default=0.5, show_default=True)
@click.option('--dropout',       help='Dropout probability', metavar='FLOAT',                       type=dnnlib.util.FiniteFloat(min=0, max=1), default=0.13, show_default=True)
@click.option('--augment',       help='Augment probability', metavar='FLOAT',                       type=dnnlib.util.FiniteFloat(min=0, max=1), default=0.12, show_default=True)
@click.option('--xflip',         help='Enable dataset x-flips', metavar='BOOL',                     type=bool, default=False, show_default=True)
@click.option('--optimizer',     help='Optimizer', metavar='adam|adamw',                            type=click.Choice(sorted(OPTIMIZERS)), default='adam', show_default=True)
@click.option('--wd',            help='Weight decay', metavar='FLOAT',                              type=dnnlib.util.FiniteFloat(min=0), default=0, show_default=True)
@click.option('--betas',         help='Adam betas', metavar='FLOAT,FLOAT',                          type=parse_betas, default='0.9,0.999', show_default=True)
@click.option('--eps',           help='Adam epsilon', metavar='FLOAT',                              type=dnnlib.util.FiniteFloat(min=0, min_open=True), default=1e-8, show_default=True)

# Performance-related.
@click.option('--fp16',          help='Enable mixed-precision training', metavar='BOOL',            type=bool, default=False, show_default=True)
@click.option('--bf16',          help='Enable bfloat16 autocast (changes numerics)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--compile',       help='torch.compile the training forward (changes rounding only)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--channels_last', help='NHWC activations (changes rounding only)', metavar='BOOL',   type=bool, default=False, show_default=True)
@click.option('--fused',         help='Fused optimizer step (changes rounding only)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--tf32',          help='Allow TF32 on CUDA (changes numerics)', metavar='BOOL',      type=bool, default=False, show_default=True)
@click.option('--ls',            help='Loss scaling', metavar='FLOAT',                              type=dnnlib.util.FiniteFloat(min=0, min_open=True), default=1, show_default=True)
@click.option('--bench',         help='Enable cuDNN benchmarking', metavar='BOOL',                  type=bool, default=True, show_default=True)
@click.option('--cache',         help='Cache dataset in CPU memory', metavar='BOOL',                type=bool, default=True, show_default=True)
@click.option('--workers',       help='DataLoader worker processes', metavar='INT',                 type=click.IntRange(min=1), default=1, show_default=True)

# I/O-related.
@click.option('--desc',          help='String to include in result dir name', metavar='STR',        type=str)
@click.option('--nosubdir',      help='Do not create a subdirectory for results',                   is_flag=True)
@click.option('--tick',          help='How often to print progress', metavar='KIMG',                type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--snap',          help='How often to save snapshots', metavar='TICKS',               type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--dump',          help='How often to dump state', metavar='TICKS',                   type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--seed',          help='Random seed  [default: random]', metavar='INT',              type=click.IntRange(min=0, max=2**31 - 1))
@click.option('--transfer',      help='Transfer learning from network pickle', metavar='PKL|URL',   type=str)
@click.option('--resume',        help='Resume from previous training state', metavar='PT|DIR',      type=str)
@click.option('-n', '--dry-run', help='Print training options and exit',                            is_flag=True)
@click.option('--logger',        help='Also log each tick to TensorBoard / W&B (repeatable)  [default: none]', metavar='tensorboard|wandb|none', type=click.Choice(['tensorboard', 'wandb', 'none']), multiple=True)

def main(**kwargs):
    """Train a diffusion model using the techniques of "Elucidating the Design Space of Diffusion-Based
    Generative Models" (EDM), optionally with Ambient Diffusion's loss (--loss=ambient).

    --duration is in millions of images as in EDM; --iters N stops after N optimizer steps instead.
    --resume accepts a training-state-*.pt file or a run directory (its newest state) and continues
    bit-exactly; the network, loss and dataset options must match the resumed run.

    Examples:

    \b
    # Train DDPM++ model for class-conditional CIFAR-10 using 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp

    \b
    # Ambient: noisy copies at sigma_tn=0.2 (single process, CPU or one GPU)
    python train.py --outdir=training-runs --data=datasets/cifar10-32x32.zip --loss=ambient --sigma_tn=0.2

    \b
    # Ambient with each image's own sigma_tn: {"00000/img00000000.png": 0.2, ...} (JSON) or file,sigma_tn (CSV)
    python train.py --outdir=training-runs --data=datasets/cifar10-32x32.zip --loss=ambient --sigma_tn_per_image=tn.json
    """
    opts = dnnlib.EasyDict(kwargs)
    dist.init()
    c, desc, state = build_config(opts)
    c.run_dir = pick_run_dir(opts.outdir, desc, opts.nosubdir) if dist.get_rank() == 0 else None
    _check_outdir(opts.outdir)
    _print_options(c, opts)
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    if c.get('resume_pkl') is not None:
        _check_transfer(c.resume_pkl) # Read before the run directory exists (a dry run does not load it).
    dist.print0('Creating output directory...')
    create_run_dir(c)
    logger = None
    if dist.get_rank() == 0:
        logger = dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    torch.multiprocessing.set_start_method('spawn', force=True)
    from training import training_loop
    try:
        training_loop.training_loop(**c, resume_state=state)
    finally:
        if logger is not None:
            logger.close()
    dist.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
