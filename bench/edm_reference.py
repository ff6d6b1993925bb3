"""The benchmarks' yardstick: NVIDIA EDM's plain training step, sampler loop and generate.py, re-implemented as EDM runs them.

Written from EDM's published algorithm and its train/generate loops (github NVlabs/edm), not copied: per-parameter
loops for nan_to_num and the EMA, the model wrapped in DistributedDataParallel even for one process, one generator
per seed on the sampling device, tensor comparisons inside the sampler loop, PIL writes without temporary names.
Run as a script it is EDM's generate.py for the whole-process timing of bench/sample_speed.py.
"""

import os
import pickle
import sys
import tempfile

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) # run as a script from anywhere
import dnnlib # pylint: disable=wrong-import-position
from torch_utils import misc, training_stats # pylint: disable=wrong-import-position

#----------------------------------------------------------------------------
# Process group of one, as EDM's dist.init() makes for a single process.

def init_process_group():
    """A one-process gloo group (file store in a temp dir), unless one exists; True when EDM's DDP wrapper can be built."""
    if not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix='edm-ref-'), 'store')
        torch.distributed.init_process_group('gloo', init_method=f'file://{store}', rank=0, world_size=1)
    return True

#----------------------------------------------------------------------------
# Training step.

def edm_train_step_fn(t, lr, lr_rampup_kimg=10000, ema_halflife_kimg=500, ema_rampup_ratio=0.05, ddp=True):
    """EDM's per-step work on the nets, loss, optimizer and data of a training setup `t` (training_loop.setup_training)."""
    net, ema, optimizer = t.net, t.ema, t.optimizer
    wrapped = torch.nn.parallel.DistributedDataParallel(net) if ddp and init_process_group() else net
    state = dict(nimg=0)
    def step():
        optimizer.zero_grad(set_to_none=True)
        for round_idx in range(t.num_rounds):
            with misc.ddp_sync(wrapped, (round_idx == t.num_rounds - 1)):
                images, labels, *_ = next(t.data_iterator)
                images = images.to(t.device).to(torch.float32) / 127.5 - 1
                labels = labels.to(t.device)
                loss = t.loss_fn(net=wrapped, images=images, labels=labels, augment_pipe=t.augment_pipe)
                training_stats.report('Loss/loss', loss)
                loss.sum().mul(t.loss_scaling / t.batch_gpu_total).backward()
        for group in optimizer.param_groups:
            group['lr'] = lr * min(state['nimg'] / max(lr_rampup_kimg * 1000, 1e-8), 1)
        for param in net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        optimizer.step()
        halflife = ema_halflife_kimg * 1000
        if ema_rampup_ratio is not None:
            halflife = min(halflife, state['nimg'] * ema_rampup_ratio)
        beta = 0.5 ** (t.batch_size / max(halflife, 1e-8))
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, beta))
        state['nimg'] += t.batch_size
    return step

#----------------------------------------------------------------------------
# Sampling.

class SeedGenerators:
    """One torch.Generator per seed on the sampling device; draws stacked along the batch (EDM's StackedRandomGenerator)."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size, **kwargs):
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])


def edm_heun(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002, sigma_max=80,
             rho=7, S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):
    """Algorithm 2 of the EDM paper as EDM's example sampler runs it (float64 state, tensor noise levels)."""
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])
    x = latents.to(torch.float64) * t_steps[0]
    for k in range(num_steps):
        t_cur, t_next = t_steps[k], t_steps[k + 1]
        gamma = min(S_churn / num_steps, np.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x)
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x = x_hat + (t_next - t_hat) * d_cur
        if k < num_steps - 1:
            d_next = (x - net(x, t_next, class_labels).to(torch.float64)) / t_next
            x = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
    return x


def edm_sample_batch(net, seeds, device, num_steps=18):
    """One batch as EDM's generate.py makes it: per-seed latents (and class), the sampler, uint8 NHWC numpy."""
    rnd = SeedGenerators(device, seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = None
    if net.label_dim:
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(seeds)], device=device)]
    with torch.no_grad():
        images = edm_heun(net, latents, class_labels, randn_like=rnd.randn_like, num_steps=num_steps)
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def edm_generate(network_pkl, outdir, seeds, max_batch_size=64, device='cpu'):
    """EDM's generate.py for one process: load the 'ema' net, sample batch by batch, save each PNG with PIL."""
    import tqdm # pylint: disable=import-outside-toplevel
    init_process_group()
    device = torch.device(device)
    with dnnlib.util.open_url(network_pkl) as f:
        net = pickle.load(f)['ema'].to(device)
    num_batches = (len(seeds) - 1) // max_batch_size + 1
    os.makedirs(outdir, exist_ok=True)
    for batch_seeds in tqdm.tqdm(torch.as_tensor(seeds).tensor_split(num_batches), unit='batch'):
        batch_seeds = batch_seeds.tolist()
        for seed, image in zip(batch_seeds, edm_sample_batch(net, batch_seeds, device)):
            mode = 'L' if image.shape[2] == 1 else 'RGB'
            PIL.Image.fromarray(image[:, :, 0] if mode == 'L' else image, mode).save(os.path.join(outdir, f'{seed:06d}.png'))
    torch.distributed.barrier()


def main(argv):
    """python bench/edm_reference.py NETWORK_PKL OUTDIR SEEDS [BATCH]: EDM's generate.py, for whole-process timing."""
    if len(argv) not in (3, 4):
        print(main.__doc__, file=sys.stderr)
        return 2
    edm_generate(argv[0], argv[1], dnnlib.util.parse_int_list(argv[2]), int(argv[3]) if len(argv) == 4 else 64)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
