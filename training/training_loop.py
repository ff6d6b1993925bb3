"""The distributed training loop: gradient accumulation, EMA, ticks, snapshots and exact resume (EDM semantics)."""

import copy
import importlib
import json
import os
import pickle
import time

import psutil
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import lifetime
from torch_utils import misc
from torch_utils import training_stats
from training import checkpoint

#----------------------------------------------------------------------------
# Setup.

def split_batch(batch_size, batch_gpu):
    """(per-rank batch, per-round batch, accumulation rounds) for a global batch; UserError when it does not divide."""
    world = dist.get_world_size()
    if batch_size % world != 0:
        raise dnnlib.util.UserError(f'--batch={batch_size} is not divisible by the number of processes ({world})')
    batch_gpu_total = batch_size // world
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    if batch_gpu_total % batch_gpu != 0:
        raise dnnlib.util.UserError(f'--batch={batch_size} is not divisible by processes x --batch-gpu ({world} x {batch_gpu})')
    return batch_gpu_total, batch_gpu, batch_gpu_total // batch_gpu

def _data_loader_options(data_loader_kwargs, device):
    """DataLoader options valid for this device and worker count (pinning needs CUDA; prefetch needs workers)."""
    opts = dict(data_loader_kwargs)
    if device.type != 'cuda':
        opts.pop('pin_memory', None)
    if opts.get('num_workers', 0) == 0:
        opts.pop('prefetch_factor', None)
    return opts

def _make_data_iterator(dataset_obj, data_loader_kwargs, seed, batch_gpu, start_idx, device):
    """Endless batch iterator; the item order depends only on (seed, global position), never on workers."""
    sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=dist.get_rank(), num_replicas=dist.get_world_size(),
                                   seed=seed, start_idx=start_idx)
    # iter() draws the workers' base seed from the global torch RNG, as in EDM: the network built next then gets
    # EDM's initial weights for the same seed. Resume stays exact because setup replays this draw before the
    # stored RNG states are restored.
    # Workers die with this process even when it is killed before the first batch (torch_utils/lifetime.py).
    loader = torch.utils.data.DataLoader(dataset=dataset_obj, sampler=sampler, batch_size=batch_gpu,
                                         **lifetime.data_loader_kwargs(_data_loader_options(data_loader_kwargs, device)))
    return iter(loader)

def _build_network(network_kwargs, dataset_obj, device, batch_gpu):
    """The network sized for the dataset, in training mode on the device; rank 0 prints its summary."""
    net = dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=dataset_obj.resolution,
                                              img_channels=dataset_obj.num_channels, label_dim=dataset_obj.label_dim)
    net.train().requires_grad_(True).to(device)
    if dist.get_rank() == 0:
        with torch.no_grad():
            images = torch.zeros([batch_gpu, net.img_channels, net.img_resolution, net.img_resolution], device=device)
            sigma = torch.ones([batch_gpu], device=device)
            labels = torch.zeros([batch_gpu, net.label_dim], device=device)
            misc.print_module_summary(net, [images, sigma, labels], max_nesting=2)
    return net

def _load_transfer(net, ema, resume_pkl):
    """Copy the EMA weights of an EDM-style snapshot pickle into net and ema (transfer learning)."""
    dist.print0(f'Loading network weights from "{resume_pkl}"...')
    with dist.rank0_first(), dnnlib.util.open_url(resume_pkl, verbose=(dist.get_rank() == 0)) as f:
        data = pickle.load(f)
    if not isinstance(data, dict) or not isinstance(data.get('ema'), torch.nn.Module):
        raise dnnlib.util.UserError(f'--transfer: {resume_pkl} holds no "ema" network')
    misc.copy_params_and_buffers(src_module=data['ema'], dst_module=net, require_all=False)
    misc.copy_params_and_buffers(src_module=data['ema'], dst_module=ema, require_all=False)

def setup_training(dataset_kwargs, data_loader_kwargs, network_kwargs, loss_kwargs, optimizer_kwargs, augment_kwargs,
                   seed, batch_size, batch_gpu, device, start_nimg=0, bf16=False, loss_scaling=1, compile=False,
                   channels_last=False):
    """Build everything one training step needs (dataset iterator, nets, loss, optimizer), as an EasyDict."""
    t = dnnlib.EasyDict(device=device, batch_size=batch_size, optimizer_kwargs=dict(optimizer_kwargs),
                        bf16=bf16, loss_scaling=loss_scaling)
    t.batch_gpu_total, t.batch_gpu, t.num_rounds = split_batch(batch_size, batch_gpu)

    dist.print0('Loading dataset...')
    t.dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    t.data_iterator = _make_data_iterator(t.dataset_obj, data_loader_kwargs, seed, t.batch_gpu,
                                          start_nimg // dist.get_world_size(), device)

    dist.print0('Constructing network...')
    t.net = _build_network(network_kwargs, t.dataset_obj, device, t.batch_gpu)

    dist.print0('Setting up optimizer...')
    t.loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    t.optimizer = dnnlib.util.construct_class_by_name(params=t.net.parameters(), **optimizer_kwargs)
    t.augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    t.ddp = t.net
    if channels_last:
        t.ddp = ChannelsLast(t.ddp)
    if compile:
        # Only the training forward is compiled; t.net and t.ema stay plain modules, so snapshots are unchanged.
        # Dropout then draws eager PyTorch's random stream, so that compiling changes rounding and nothing else.
        importlib.import_module('torch._inductor.config').fallback_random = True
        t.ddp = torch.compile(t.ddp)
    if dist.get_world_size() > 1: # Outermost, so that accumulation rounds can skip the all-reduce (misc.ddp_sync).
        t.ddp = torch.nn.parallel.DistributedDataParallel(t.ddp, device_ids=[device] if device.type == 'cuda' else None)
    t.ema = copy.deepcopy(t.net).eval().requires_grad_(False)
    t.nonfinite_steps = torch.zeros([], dtype=torch.int64, device=device)
    return t

class ChannelsLast(torch.nn.Module):
    """Calls the wrapped network on an NHWC (channels_last) copy of its input, after any augmentation.

    Convolutions follow their input's layout, so the activations go NHWC while the stored weights (and snapshots) stay as
    they are; the rounding of the convolutions changes, nothing else.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, *args, **kwargs):
        return self.net(x.contiguous(memory_format=torch.channels_last), *args, **kwargs)

#----------------------------------------------------------------------------
# One training step.

def _next_batch(t):
    """Next local batch: images in [-1, 1] float32, labels, and the dataset's extra fields, all on the device."""
    try:
        images, labels, *rest = next(t.data_iterator)
    except dnnlib.util.UserError as err: # Raised in a worker: torch wraps it with the worker's traceback.
        raise dnnlib.util.UserError(dnnlib.util.worker_error_message(err)) from None
    images = images.to(t.device).to(torch.float32) / 127.5 - 1
    labels = labels.to(t.device)
    extras = {key: value.to(t.device) if isinstance(value, torch.Tensor) else value for key, value in (rest[0] if rest else {}).items()}
    return images, labels, extras

def accumulate_gradients(t):
    """Forward/backward over all accumulation rounds; returns a device bool: every loss value was finite."""
    t.optimizer.zero_grad(set_to_none=True)
    finite = torch.ones([], dtype=torch.bool, device=t.device)
    for round_idx in range(t.num_rounds):
        with misc.ddp_sync(t.ddp, (round_idx == t.num_rounds - 1)):
            images, labels, extras = _next_batch(t)
            with torch.autocast(device_type=t.device.type, dtype=torch.bfloat16, enabled=t.bf16):
                loss = t.loss_fn(net=t.ddp, images=images, labels=labels, augment_pipe=t.augment_pipe, **extras)
            training_stats.report('Loss/loss', loss)
            finite &= torch.isfinite(loss).all()
            loss.sum().mul(t.loss_scaling / t.batch_gpu_total).backward()
    return finite

def _parameters(t):
    """(net parameters, EMA parameters) as lists, built once: walking the module tree every step costs time."""
    if 'parameters' not in t:
        t.parameters = (list(t.net.parameters()), list(t.ema.parameters()))
    return t.parameters

def update_weights(t, cur_nimg, lr_rampup_kimg):
    """Ramp the learning rate, zero non-finite gradient entries, take the optimizer step."""
    for g in t.optimizer.param_groups:
        g['lr'] = t.optimizer_kwargs['lr'] * min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)
    training_stats.report0('Training/lr', t.optimizer.param_groups[0]['lr']) # A Python float: no device sync.
    for param in _parameters(t)[0]:
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
    t.optimizer.step()

@torch.no_grad()
def update_ema(t, cur_nimg, ema_halflife_kimg, ema_rampup_ratio):
    """EMA with a half-life counted in images, optionally ramped up to ema_rampup_ratio x images seen."""
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    ema_beta = 0.5 ** (t.batch_size / max(ema_halflife_nimg, 1e-8))
    # EDM's p_ema.copy_(p_net.lerp(p_ema, beta)), same bits: on CUDA as two multi-tensor kernels (fewer launches),
    # elsewhere written straight into p_ema (the CPU has no fused kernels, and this skips a temporary per tensor).
    net_params, ema_params = _parameters(t)
    if ema_params and ema_params[0].is_cuda:
        torch._foreach_copy_(ema_params, torch._foreach_lerp([p.detach() for p in net_params], ema_params, ema_beta))
    else:
        for p_net, p_ema in zip(net_params, ema_params):
            torch.lerp(p_net.detach(), p_ema, ema_beta, out=p_ema)

def train_step(t, cur_nimg, lr_rampup_kimg, ema_halflife_kimg, ema_rampup_ratio):
    """One optimizer step over the global batch, plus the EMA update; tracks consecutive non-finite losses."""
    finite = accumulate_gradients(t)
    update_weights(t, cur_nimg, lr_rampup_kimg)
    update_ema(t, cur_nimg, ema_halflife_kimg, ema_rampup_ratio)
    t.nonfinite_steps = torch.where(finite, torch.zeros_like(t.nonfinite_steps), t.nonfinite_steps + 1)

def weights_finite(t):
    """Whether every weight of the net and its EMA is finite on every rank (a collective call)."""
    net_params, ema_params = _parameters(t)
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(p).all() for p in net_params + ema_params]).all() if net_params else torch.ones([], dtype=torch.bool)
    flag = ok.to(torch.int64)
    if dist.get_world_size() > 1:
        flag = flag.to(dist.get_sync_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag)

def _max_nonfinite_steps(t):
    """Consecutive non-finite steps, the largest over ranks (a collective call)."""
    count = t.nonfinite_steps.clone()
    if dist.get_world_size() > 1:
        count = count.to(dist.get_sync_device())
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count)

#----------------------------------------------------------------------------
# Maintenance: status line, snapshots, state dumps.

def _status_line(cur_tick, cur_nimg, tick_start_nimg, start_time, tick_start_time, tick_end_time, maintenance_time, device):
    """EDM's one-line tick report; every figure is also reported to training_stats."""
    r0 = training_stats.report0
    cuda = device.type == 'cuda'
    gpumem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fields = [
        f"tick {r0('Progress/tick', cur_tick):<5d}",
        f"kimg {r0('Progress/kimg', cur_nimg / 1e3):<9.1f}",
        f"time {dnnlib.util.format_time(r0('Timing/total_sec', tick_end_time - start_time)):<12s}",
        f"sec/tick {r0('Timing/sec_per_tick', tick_end_time - tick_start_time):<7.1f}",
        f"sec/kimg {r0('Timing/sec_per_kimg', (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3):<7.2f}",
        f"maintenance {r0('Timing/maintenance_sec', maintenance_time):<6.1f}",
        f"cpumem {r0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30):<6.2f}",
        f"gpumem {r0('Resources/peak_gpu_mem_gb', gpumem):<6.2f}",
        f"reserved {r0('Resources/peak_gpu_mem_reserved_gb', reserved):<6.2f}",
    ]
    return ' '.join(fields)

#----------------------------------------------------------------------------

def training_loop(
    run_dir             = '.',      # Output directory (rank 0; None elsewhere).
    dataset_kwargs      = {},       # Options for the training set.
    data_loader_kwargs  = {},       # Options for torch.utils.data.DataLoader.
    network_kwargs      = {},       # Options for the network and its preconditioning.
    loss_kwargs         = {},       # Options for the loss.
    optimizer_kwargs    = {},       # Options for the optimizer (class_name, lr, ...).
    augment_kwargs      = None,     # Options for the augmentation pipe, None = none.
    seed                = 0,        # Global random seed.
    batch_size          = 512,      # Global batch per optimizer step.
    batch_gpu           = None,     # Per-rank batch per accumulation round, None = whole per-rank batch.
    total_kimg          = 200000,   # Training duration in thousands of images.
    total_iters         = None,     # Training duration in optimizer steps; overrides total_kimg.
    ema_halflife_kimg   = 500,      # EMA half-life in thousands of images.
    ema_rampup_ratio    = 0.05,     # EMA ramp-up coefficient, None = no ramp-up.
    lr_rampup_kimg      = 10000,    # Learning-rate ramp-up duration.
    loss_scaling        = 1,        # Loss scaling factor.
    kimg_per_tick       = 50,       # Interval of status lines.
    snapshot_ticks      = 50,       # Network snapshot interval in ticks, None = off.
    state_dump_ticks    = 500,      # Training-state interval in ticks, None = off.
    resume_pkl          = None,     # Initial weights from this snapshot pickle (transfer learning).
    resume_state_dump   = None,     # Continue exactly from this training-state file.
    resume_state        = None,     # That file's contents, when the caller has already read and checked them.
    cudnn_benchmark     = True,     # torch.backends.cudnn.benchmark.
    bf16                = False,    # bfloat16 autocast around the loss.
    compile             = False,    # torch.compile the network's training forward.
    channels_last       = False,    # Feed the network NHWC (channels_last) batches.
    tf32                = False,    # Allow TF32 matmuls and convolutions on CUDA.
    max_nonfinite_steps = 100,      # Stop after this many consecutive steps with a NaN/Inf loss.
    device              = None,     # Compute device, None = this rank's CUDA device or the CPU.
    loggers             = (),       # Also send each tick's statistics to these sinks (training/loggers.py).
):
    """Train a network; writes status lines, stats.jsonl, snapshots and training states into run_dir."""
    options = {k: v for k, v in locals().items() if k != 'resume_state'} # The run config the loggers record.
    start_time = time.time()
    device = torch.device(device) if device is not None else dist.get_device()
    checkpoint.seed_rank(seed)
    _set_backends(cudnn_benchmark, tf32)
    if dist.get_rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
    compared_kwargs = dict(network_kwargs=network_kwargs, loss_kwargs=loss_kwargs, dataset_kwargs=dataset_kwargs)
    state = resume_state
    if resume_state_dump and state is None:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        state = checkpoint.load_training_state(resume_state_dump)
        checkpoint.check_resume_compatible(state, **compared_kwargs)

    progress = dnnlib.EasyDict(cur_nimg=0, cur_tick=0, last_snapshot='', stats_jsonl=None, start_time=start_time)
    if state:
        progress.update(cur_nimg=state['cur_nimg'], cur_tick=state['cur_tick'], last_snapshot=state['last_snapshot'])
    t = setup_training(dataset_kwargs, data_loader_kwargs, network_kwargs, loss_kwargs, optimizer_kwargs, augment_kwargs,
                       seed, batch_size, batch_gpu, device, start_nimg=progress.cur_nimg, bf16=bf16,
                       loss_scaling=loss_scaling, compile=compile, channels_last=channels_last)
    if resume_pkl is not None:
        _load_transfer(t.net, t.ema, resume_pkl)
    if state:
        checkpoint.restore_training_state(t, state) # Last: setup drew random numbers that the uninterrupted run did not.
    del state

    plan = dnnlib.EasyDict(run_dir=run_dir, dataset_kwargs=dataset_kwargs, compared_kwargs=compared_kwargs, seed=seed,
                           snapshot_ticks=snapshot_ticks, state_dump_ticks=state_dump_ticks,
                           total_nimg=total_iters * batch_size if total_iters is not None else total_kimg * 1000)
    dist.print0(f'Training for {total_kimg if total_iters is None else format(plan.total_nimg / 1e3, "g")} kimg...')
    dist.print0()
    if progress.cur_nimg >= plan.total_nimg:
        dist.print0(f'Already trained for {progress.cur_nimg / 1e3:g} kimg; nothing to do.')
        return
    plan.sinks = None
    if loggers and dist.get_rank() == 0:
        from training import loggers as logger_sinks # pylint: disable=import-outside-toplevel
        plan.sinks = logger_sinks.open_sinks(loggers, run_dir, options, start_step=progress.cur_nimg,
                                             resume_dir=os.path.dirname(os.path.abspath(resume_state_dump)) if resume_state_dump else None)
    training_stats.default_collector.update() # The first tick's statistics count this run's steps only.
    check_every = max(1, min(16, max_nonfinite_steps // 4)) # Reading the counter syncs the device: not every step.
    progress.tick_start_nimg = progress.cur_nimg
    progress.tick_start_time = time.time()
    progress.maintenance_time = progress.tick_start_time - start_time
    dist.update_progress(progress.cur_nimg // 1000, plan.total_nimg // 1000)
    report_first_step = compile # Compilation happens inside the first step; its cost is worth a line.
    while True:
        step_start = time.time()
        train_step(t, progress.cur_nimg, lr_rampup_kimg, ema_halflife_kimg, ema_rampup_ratio)
        if report_first_step:
            dist.print0(f'torch.compile: first step took {time.time() - step_start:.1f} s, compilation included')
            report_first_step = False
        progress.cur_nimg += batch_size
        done = (progress.cur_nimg >= plan.total_nimg)
        at_tick = done or progress.cur_tick == 0 or progress.cur_nimg >= progress.tick_start_nimg + kimg_per_tick * 1000
        # Checked on global step numbers, so that a resumed run stops exactly where the uninterrupted one would.
        if at_tick or (progress.cur_nimg // batch_size) % check_every == 0:
            nonfinite = _max_nonfinite_steps(t)
            if nonfinite >= max_nonfinite_steps:
                raise dnnlib.util.UserError(f'The loss was NaN/Inf for {max_nonfinite_steps} consecutive steps (at kimg '
                                            f'{progress.cur_nimg / 1e3:.3f}); stopping. Last good snapshot: {progress.last_snapshot or "none"}')
            if nonfinite > 0 and not at_tick and not weights_finite(t): # Non-finite weights never recover: stop now.
                raise _diverged(progress)
        if at_tick and _end_tick(t, progress, plan, done):
            break
    if progress.stats_jsonl is not None:
        progress.stats_jsonl.close()
    if plan.sinks is not None:
        plan.sinks.close()
    dist.print0()
    dist.print0('Exiting...')

def _set_backends(cudnn_benchmark, tf32=False):
    """EDM's numerics: no TF32 (unless asked for) and no reduced-precision reductions."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

def _diverged(progress):
    """The one-line error for non-finite weights; nothing is written after it."""
    return dnnlib.util.UserError(f'Training diverged: the network weights hold NaN/Inf at kimg {progress.cur_nimg / 1e3:.3f} '
                                 f'(try a lower --lr); stopping without writing a snapshot. Last good snapshot: '
                                 f'{progress.last_snapshot or "none"}')

def _end_tick(t, progress, plan, done):
    """Status line, snapshot, training state and stats.jsonl at the end of a tick; returns True when training is over.

    `t` is the training setup (nets, optimizer, data), `progress` the counters and timers that change every tick,
    `plan` what stays fixed for the run (output folder, snapshot and dump intervals, the configs to store).
    """
    tick_end_time = time.time()
    dist.print0(_status_line(progress.cur_tick, progress.cur_nimg, progress.tick_start_nimg, progress.start_time, progress.tick_start_time, tick_end_time,
                             progress.maintenance_time, t.device))
    if (not done) and dist.should_stop():
        done = True
        dist.print0()
        dist.print0('Aborting...')
    if not weights_finite(t): # Never write a snapshot or state of a diverged net: the last good ones stay as they are.
        raise _diverged(progress)

    if (plan.snapshot_ticks is not None) and (done or progress.cur_tick % plan.snapshot_ticks == 0):
        path = checkpoint.save_snapshot(t, plan.run_dir, progress.cur_nimg, plan.dataset_kwargs)
        if int(t.nonfinite_steps) == 0:
            progress.last_snapshot = path
    if (plan.state_dump_ticks is not None) and (done or progress.cur_tick % plan.state_dump_ticks == 0) and progress.cur_tick != 0:
        checkpoint.save_training_state(t, plan.run_dir, progress.cur_nimg, progress.cur_tick + 1, plan.seed, plan.compared_kwargs, progress.last_snapshot)

    training_stats.default_collector.update()
    if dist.get_rank() == 0:
        if progress.stats_jsonl is None:
            progress.stats_jsonl = open(os.path.join(plan.run_dir, 'stats.jsonl'), 'at')
        progress.stats_jsonl.write(json.dumps(dict(training_stats.default_collector.as_dict(), timestamp=time.time())) + '\n')
        progress.stats_jsonl.flush()
        if plan.get('sinks') is not None:
            plan.sinks.log(training_stats.default_collector.as_dict(), step=progress.cur_nimg)
    dist.update_progress(progress.cur_nimg // 1000, plan.total_nimg // 1000)

    progress.cur_tick += 1
    progress.tick_start_nimg = progress.cur_nimg
    progress.tick_start_time = time.time()
    progress.maintenance_time = progress.tick_start_time - tick_end_time
    return done

#----------------------------------------------------------------------------
