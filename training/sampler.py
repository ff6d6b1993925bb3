"""EDM samplers (deterministic/stochastic Heun, ablation sampler) and per-seed random generators."""

import numpy as np
import torch

#----------------------------------------------------------------------------

class StackedRandomGenerator:
    """One CPU torch.Generator per seed; draws are made per seed and stacked along the batch.

    Generators live on the CPU so that an image depends only on its seed, never on the device
    it is sampled on; the stacked draws are moved to the requested device afterwards.
    """

    def __init__(self, device, seeds):
        self.device = torch.device(device)
        self.generators = [torch.Generator().manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _check_batch(self, size):
        if size[0] != len(self.generators):
            raise ValueError(f'batch dimension {size[0]} does not match {len(self.generators)} seeds')

    def randn(self, size, dtype=torch.float32, device=None, **kwargs):
        """Standard normal draws of shape `size`, row i taken from generator i."""
        self._check_batch(size)
        rows = [torch.randn(list(size[1:]), generator=gen, dtype=dtype, **kwargs) for gen in self.generators]
        return _to_device(torch.stack(rows), self.device if device is None else device)

    def randn_like(self, input):
        """Standard normal draws shaped, typed and placed like `input`."""
        return self.randn(input.shape, dtype=input.dtype, device=input.device)

    def randint(self, *args, size, device=None, **kwargs):
        """Integer draws as torch.randint(*args), row i taken from generator i."""
        self._check_batch(size)
        rows = [torch.randint(*args, size=list(size[1:]), generator=gen, **kwargs) for gen in self.generators]
        return _to_device(torch.stack(rows), self.device if device is None else device)


def _to_device(tensor, device):
    """Move CPU draws to `device`; to CUDA through pinned memory, so the copy does not stall the host."""
    device = torch.device(device)
    if device.type == 'cuda':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

#----------------------------------------------------------------------------

class Denoiser:
    """The network as the samplers call it, optionally under bfloat16 autocast, torch.compile and/or on NHWC batches.

    Attributes the samplers read (sigma_min, round_sigma, img_channels, ...) come from the wrapped network.
    bf16 changes the images slightly; compile and channels_last change rounding only (docs/performance.md states
    them, tests bound them). channels_last is what AMX CPUs' bfloat16 convolutions want.
    """

    def __init__(self, net, bf16=False, compile=False, channels_last=False):
        self.net = net
        self.bf16 = bf16
        self.channels_last = channels_last
        self.forward = torch.compile(net) if compile else net

    def __getattr__(self, name): # Only reached for names not set in __init__.
        return getattr(self.net, name)

    def __call__(self, x, sigma, class_labels=None):
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.forward(x, sigma, class_labels).contiguous()

#----------------------------------------------------------------------------

def edm_time_steps(net, num_steps=18, sigma_min=0.002, sigma_max=80, rho=7, device='cpu'):
    """EDM's rho-spaced noise levels (float64), clamped to the net's range, followed by a final 0."""
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    frac = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    t_steps = (hi + frac * (lo - hi)) ** rho
    t_steps = torch.as_tensor(net.round_sigma(t_steps), dtype=torch.float64, device=device)
    return torch.cat([t_steps, t_steps.new_zeros([1])])


def _churn_gamma(t_cur, num_steps, S_churn, S_min, S_max):
    # The stochasticity window is tested on the grid noise level, as in EDM.
    if S_min <= t_cur <= S_max:
        return min(S_churn / num_steps, np.sqrt(2) - 1)
    return 0


def edm_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    """EDM's Algorithm 2: Heun steps in float64, optional churn; returns the float64 final state."""
    t_steps = edm_time_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    t_host = t_steps.tolist() # Churn decisions on host floats: no device sync inside the loop.
    x = latents.to(torch.float64) * t_steps[0]
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        gamma = _churn_gamma(t_host[i], num_steps, S_churn, S_min, S_max)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        # The noise is drawn at every step, also when gamma is 0, so the random stream of
        # every seed stays aligned with EDM's.
        x_hat = x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x)

        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_next = (x - net(x, t_next, class_labels).to(torch.float64)) / t_next
            x = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
    return x

#----------------------------------------------------------------------------
# Ablation sampler: the general time-step / schedule / scaling family of EDM's Table 1.

def _vp_sigma(beta_d, beta_min):
    return lambda t: (np.e ** (0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5


def _schedule_fns(schedule, beta_d, beta_min):
    """Return sigma(t), sigma'(t) and sigma^-1 for a named noise schedule."""
    if schedule == 'vp':
        sigma = _vp_sigma(beta_d, beta_min)
        deriv = lambda t: 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))
        inv = lambda s: ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    elif schedule == 've':
        sigma = lambda t: t.sqrt()
        deriv = lambda t: 0.5 / t.sqrt()
        inv = lambda s: s ** 2
    elif schedule == 'linear':
        sigma = lambda t: t
        deriv = lambda t: 1
        inv = lambda s: s
    else:
        raise ValueError(f'unknown schedule {schedule!r}')
    return sigma, deriv, inv


def _scaling_fns(scaling, sigma, sigma_deriv):
    """Return s(t) and s'(t) for a named signal scaling."""
    if scaling == 'vp':
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    elif scaling == 'none':
        s = lambda t: 1
        s_deriv = lambda t: 0
    else:
        raise ValueError(f'unknown scaling {scaling!r}')
    return s, s_deriv


def _iddpm_sigmas(M, C_1, C_2, device):
    """The M+1 noise levels u_j of the improved DDPM cosine schedule."""
    u = torch.zeros(M + 1, dtype=torch.float64, device=device)
    alpha_bar = lambda j: (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
    for j in torch.arange(M, 0, -1, device=device):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u


def _sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M, beta_d, beta_min, device):
    """Noise levels sigma_i of a named time-step discretization (float64, without the final 0)."""
    idx = torch.arange(num_steps, dtype=torch.float64, device=device)
    frac = idx / max(num_steps - 1, 1)
    if discretization == 'vp':
        return _vp_sigma(beta_d, beta_min)(1 + frac * (epsilon_s - 1))
    if discretization == 've':
        return (sigma_max ** 2 * (sigma_min ** 2 / sigma_max ** 2) ** frac).sqrt()
    if discretization == 'iddpm':
        u = _iddpm_sigmas(M, C_1, C_2, device)
        u = u[(u >= sigma_min) & (u <= sigma_max)]
        return u[((len(u) - 1) / max(num_steps - 1, 1) * idx).round().to(torch.int64)]
    if discretization == 'edm':
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + frac * (lo - hi)) ** rho
    raise ValueError(f'unknown discretization {discretization!r}')


def ablation_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=None, sigma_max=None, rho=7,
    solver='heun', discretization='edm', schedule='linear', scaling='none',
    epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    """EDM's generalised sampler: euler|heun solver, vp|ve|iddpm|edm steps, vp|ve|linear sigma(t), vp|none s(t)."""
    if solver not in ('euler', 'heun'):
        raise ValueError(f'unknown solver {solver!r}')
    if discretization not in ('vp', 've', 'iddpm', 'edm'):
        raise ValueError(f'unknown discretization {discretization!r}')
    device = latents.device

    # Default noise range of each discretization, then clamp to what the net supports.
    vp_default = _vp_sigma(beta_d=19.1, beta_min=0.1)
    if sigma_min is None:
        sigma_min = {'vp': vp_default(epsilon_s), 've': 0.02, 'iddpm': 0.002, 'edm': 0.002}[discretization]
    if sigma_max is None:
        sigma_max = {'vp': vp_default(1), 've': 100, 'iddpm': 81, 'edm': 80}[discretization]
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # VP parameters that make sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max.
    beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * beta_d

    sigma_steps = _sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M, beta_d, beta_min, device)
    sigma, sigma_deriv, sigma_inv = _schedule_fns(schedule, beta_d, beta_min)
    s, s_deriv = _scaling_fns(scaling, sigma, sigma_deriv)

    def slope(x, t, denoised):
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    t_steps = sigma_inv(torch.as_tensor(net.round_sigma(sigma_steps), dtype=torch.float64, device=device))
    t_steps = torch.cat([t_steps, t_steps.new_zeros([1])])

    x = latents.to(torch.float64) * (sigma(t_steps[0]) * s(t_steps[0]))
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        gamma = _churn_gamma(sigma(t_cur), num_steps, S_churn, S_min, S_max)
        t_hat = sigma_inv(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)))
        noise_std = (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(t_hat) * S_noise
        x_hat = s(t_hat) / s(t_cur) * x + noise_std * randn_like(x)

        h = t_next - t_hat
        d_cur = slope(x_hat, t_hat, net(x_hat / s(t_hat), sigma(t_hat), class_labels).to(torch.float64))
        if solver == 'euler' or i == num_steps - 1:
            x = x_hat + h * d_cur
        else:
            x_prime, t_prime = x_hat + alpha * h * d_cur, t_hat + alpha * h
            d_prime = slope(x_prime, t_prime, net(x_prime / s(t_prime), sigma(t_prime), class_labels).to(torch.float64))
            x = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x

#----------------------------------------------------------------------------

ABLATION_KEYS = ('solver', 'discretization', 'schedule', 'scaling')


def images_to_uint8(images):
    """Map [-1, 1] NCHW images to uint8 NHWC as EDM does: x*127.5+128, clipped, truncated."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def sample_batch(net, seeds, class_idx=None, device='cpu', **sampler_kwargs):
    """Sample one batch, one image per seed; returns uint8 NHWC on the CPU.

    Draw order per seed (EDM's): latents, then the random class (conditional nets), then one
    draw per sampler step. `class_idx` fixes the class but the random class is still drawn.
    Sampler options left as None take their defaults; any of solver/discretization/schedule/
    scaling selects the ablation sampler.
    """
    device = torch.device(device)
    sampler_kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    rnd = StackedRandomGenerator(device, seeds)
    shape = [len(seeds), net.img_channels, net.img_resolution, net.img_resolution]
    latents = rnd.randn(shape, device=device)
    class_labels = None
    if net.label_dim:
        picks = rnd.randint(net.label_dim, size=[len(seeds)], device=device)
        class_labels = torch.eye(net.label_dim, device=device)[picks]
        if class_idx is not None:
            class_labels = torch.zeros_like(class_labels)
            class_labels[:, class_idx] = 1
    sampler_fn = ablation_sampler if any(k in sampler_kwargs for k in ABLATION_KEYS) else edm_sampler
    with torch.no_grad():
        images = sampler_fn(net, latents, class_labels, randn_like=rnd.randn_like, **sampler_kwargs)
    if not torch.isfinite(images).all(): # NaN would become black pixels: refuse rather than write garbage.
        import dnnlib # pylint: disable=import-outside-toplevel
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise dnnlib.util.UserError(f'Sampling produced NaN/Inf in {bad} of {len(seeds)} images (seeds {seeds[0]}..{seeds[-1]}): '
                                    'the network or the sampler options (--sigma_min/--sigma_max/--S_*) give non-finite output')
    return images_to_uint8(images).cpu()


def check_class_idx(net, class_idx):
    """Raise ValueError when `class_idx` cannot be used with `net`."""
    if class_idx is None:
        return
    if not net.label_dim:
        raise ValueError('a class was requested but the network is unconditional (label_dim = 0)')
    if not 0 <= class_idx < net.label_dim:
        raise ValueError(f'class {class_idx} is out of range for a network with {net.label_dim} classes')


def generate_images(net, seeds, class_idx=None, batch_size=64, device='cpu', **sampler_kwargs):
    """Sample one image per seed with EDM's sampler; returns uint8 NHWC [len(seeds), H, W, C] in seed order.

    The image of a seed depends only on the seed and the options, not on batch_size.
    """
    check_class_idx(net, class_idx)
    seeds = [int(s) for s in seeds]
    chunks = [sample_batch(net, seeds[i:i + batch_size], class_idx, device, **sampler_kwargs)
              for i in range(0, len(seeds), batch_size)]
    if not chunks:
        return torch.zeros([0, net.img_resolution, net.img_resolution, net.img_channels], dtype=torch.uint8)
    return torch.cat(chunks)

#----------------------------------------------------------------------------
