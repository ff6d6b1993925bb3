"""EDM-compatible U-Nets (DDPM++, NCSN++, ADM) and the VP/VE/iDDPM/EDM preconditioners."""

# Parameter names, buffers, initialisation order and numerics follow NVIDIA's EDM, so EDM state_dicts load
# with strict=True and a given seed yields EDM's initial weights. This module's source travels inside network
# pickles and may be executed inside EDM's checkout: import only numpy, torch and torch_utils.persistence.

import numpy as np
import torch
from torch.nn.functional import silu
from torch_utils import persistence

# mode -> (uniform draw?, numerator of the variance rule, fan_out counts?)
_INIT_RULES = {
    'xavier_uniform': (True, 6, True),
    'xavier_normal': (False, 2, True),
    'kaiming_uniform': (True, 3, False),
    'kaiming_normal': (False, 1, False),
}


def weight_init(shape, mode, fan_in, fan_out):
    """Draw an initial tensor of `shape` by the Xavier/Kaiming rule named by `mode`."""
    if mode not in _INIT_RULES:
        raise ValueError(f'Unknown init mode "{mode}"')
    uniform, numerator, uses_fan_out = _INIT_RULES[mode]
    fan = fan_in + fan_out if uses_fan_out else fan_in
    scale = float(np.sqrt(numerator / fan))
    noise = torch.rand(*shape) * 2 - 1 if uniform else torch.randn(*shape)
    return scale * noise


def _fir_filter_2d(taps):
    """Normalised separable 2-D filter [1, 1, K, K] built from 1-D taps."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


def _nhwc(x):
    """An NHWC (channels_last) batch, as --channels_last feeds the network."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _nhwc_bf16(x):
    """A bfloat16 NHWC batch: the --bf16 --channels_last fast path (AMX CPUs), which some layers route differently."""
    return x.dtype == torch.bfloat16 and _nhwc(x)


def _upsample2x(x, f, padding):
    """Depthwise transposed FIR convolution with stride 2 (filter gain 4 keeps the mean)."""
    channels = x.shape[1]
    if f.shape[-1] == 2 and padding == 0 and _nhwc_bf16(x):
        # The 2x2 box filter at stride 2 copies each pixel into a 2x2 block: nearest-neighbour upsampling,
        # the same values, without the slow depthwise NHWC bfloat16 kernel.
        return torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
    return torch.nn.functional.conv_transpose2d(x, (f * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)


def _downsample2x(x, f, padding):
    """Depthwise FIR convolution with stride 2."""
    channels = x.shape[1]
    if f.shape[-1] == 2 and padding == 0 and _nhwc_bf16(x):
        # The 2x2 box filter at stride 2 is a 2x2 average (summed in another order: bfloat16 path only).
        return torch.nn.functional.avg_pool2d(x, 2)
    return torch.nn.functional.conv2d(x, f.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)


def _drop_labels(labels, p, training):
    """Classifier-free-guidance dropout: zero whole label rows with probability p while training."""
    if not (training and p):
        return labels
    keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


@persistence.persistent_class
class Linear(torch.nn.Module):
    """Fully connected layer with EDM's initialisation."""

    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y


@persistence.persistent_class
class Conv2d(torch.nn.Module):
    """Square convolution with optional 2x FIR up/downsampling; kernel=0 means resampling only."""

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False,
                 resample_filter=(1, 1), fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        if up and down:
            raise ValueError('Conv2d cannot upsample and downsample at once')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        self.register_buffer('resample_filter', _fir_filter_2d(resample_filter) if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        fused = self.fused_resample and w is not None
        if fused and self.up:
            # NCSN++ order: resample at full padding, then an unpadded conv.
            x = _upsample2x(x, f, padding=w_pad + f_pad)
            x = torch.nn.functional.conv2d(x, w)
        elif fused and self.down:
            x = torch.nn.functional.conv2d(x, w, padding=w_pad + f_pad)
            x = _downsample2x(x, f, padding=0)
        else:
            if self.up:
                x = _upsample2x(x, f, padding=f_pad)
            if self.down:
                x = _downsample2x(x, f, padding=f_pad)
            if w is not None:
                if self.bias is not None and x.dtype == torch.bfloat16:
                    # bfloat16 only (train.py/generate.py --bf16): the bias joins the convolution's float32
                    # accumulator, one pass and one rounding fewer. float32/float16 keep EDM's separate addition.
                    return torch.nn.functional.conv2d(x, w, self.bias.to(x.dtype), padding=w_pad)
                x = torch.nn.functional.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    """Group normalisation with at most num_groups groups of at least min_channels_per_group channels."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        # PyTorch's NHWC bfloat16 group norm is several times slower than its NCHW one on small images with few
        # channels per group (measured on CPUs: 16x16, 4-8 channels per group); there two layout copies cost less.
        # Same arithmetic.
        via_nchw = _nhwc_bf16(x) and x.shape[2] * x.shape[3] <= 256 and x.shape[1] // self.num_groups <= 8
        y = torch.nn.functional.group_norm(x.contiguous() if via_nchw else x, num_groups=self.num_groups,
                                           weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps)
        return y.contiguous(memory_format=torch.channels_last) if via_nchw else y


class AttentionOp(torch.autograd.Function):
    """Attention weights softmax(q^T k / sqrt(C)) over keys, computed in float32.

    Inputs, outputs and saved tensors keep the caller's dtype (float16 under use_fp16) to save memory;
    the backward pass also works in float32.
    """

    @staticmethod
    def forward(ctx, q, k):
        k_scaled = k / np.sqrt(k.shape[1])
        logits = torch.bmm(q.to(torch.float32).transpose(1, 2), k_scaled.to(torch.float32))
        w = logits.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        w32 = w.to(torch.float32)
        dw32 = dw.to(torch.float32)
        dlogits = w32 * (dw32 - (dw32 * w32).sum(dim=2, keepdim=True))
        dq = torch.bmm(k.to(torch.float32), dlogits.transpose(1, 2)).to(q.dtype) / np.sqrt(k.shape[1])
        dk = torch.bmm(q.to(torch.float32), dlogits).to(k.dtype) / np.sqrt(k.shape[1])
        return dq, dk


@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    """Residual block shared by DDPM++, NCSN++ and ADM: optional resampling and self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True,
                 init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Construction order fixes the RNG draws of the initialisation; keep it.
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down,
                            resample_filter=resample_filter, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip = None
        if out_channels != in_channels or up or down:
            # Same width with resample_proj off: a weightless resample is enough.
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1,
                              **(init if init_attn is None else init_attn))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(chunks=2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(torch.nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            h = self._attend(h)
        return h

    def _attend(self, x):
        """Multi-head self-attention over pixels; qkv channels are grouped per head as [c, {q,k,v}]."""
        n, c, height, width = x.shape
        qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, height * width)
        q, k, v = qkv.unbind(2)
        w = AttentionOp.apply(q, k)
        a = torch.bmm(v, w.transpose(1, 2)).reshape(n, c, height, width)
        if _nhwc(x):
            # Keep NHWC batches NHWC (--channels_last): the convolutions after this block run faster so. NCHW
            # batches are untouched.
            a = a.contiguous(memory_format=torch.channels_last)
        return (self.proj(a) + x) * self.skip_scale


@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    """Sinusoidal noise-level embedding [cos, sin] (DDPM++ uses endpoint=True, ADM endpoint=False)."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponents
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    """Random Fourier-feature noise-level embedding [cos, sin] used by NCSN++."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        angles = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """DDPM++ / NCSN++ U-Net of Song et al. (score SDE), with EDM's module tree."""

    def __init__(self,
                 img_resolution,                # Image resolution at input/output.
                 in_channels,                   # Channels at input.
                 out_channels,                  # Channels at output.
                 label_dim=0,                   # Number of class labels; 0 = unconditional.
                 augment_dim=0,                 # Augmentation label size; 0 = no augmentation labels.
                 model_channels=128,            # Base channel count.
                 channel_mult=(1, 2, 2, 2),     # Channel multiplier per resolution level.
                 channel_mult_emb=4,            # Embedding width relative to model_channels.
                 num_blocks=4,                  # Residual blocks per resolution level.
                 attn_resolutions=(16,),        # Resolutions that get self-attention.
                 dropout=0.10,                  # Dropout inside residual blocks.
                 label_dropout=0,               # Class-label dropout for classifier-free guidance.
                 embedding_type='positional',   # 'positional' (DDPM++) or 'fourier' (NCSN++).
                 channel_mult_noise=1,          # Noise embedding width relative to model_channels: 1 DDPM++, 2 NCSN++.
                 encoder_type='standard',       # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++).
                 decoder_type='standard',       # 'standard' or 'skip'.
                 resample_filter=(1, 1),        # FIR taps: [1,1] DDPM++, [1,3,3,1] NCSN++.
                 ):
        if embedding_type not in ('fourier', 'positional'):
            raise ValueError(f'Unknown embedding_type "{embedding_type}"')
        if encoder_type not in ('standard', 'skip', 'residual'):
            raise ValueError(f'Unknown encoder_type "{encoder_type}"')
        if decoder_type not in ('standard', 'skip'):
            raise ValueError(f'Unknown decoder_type "{decoder_type}"')
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
                            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        self.enc = torch.nn.ModuleDict()
        cout = self._build_encoder(img_resolution, in_channels, model_channels, channel_mult, num_blocks,
                                   attn_resolutions, encoder_type, resample_filter, init, block_kwargs)
        skip_channels = [m.out_channels for name, m in self.enc.items() if 'aux' not in name]
        self.dec = torch.nn.ModuleDict()
        self._build_decoder(img_resolution, out_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                            decoder_type, resample_filter, init_zero, block_kwargs, cout, skip_channels)

    def _build_encoder(self, img_resolution, in_channels, model_channels, channel_mult, num_blocks,
                       attn_resolutions, encoder_type, resample_filter, init, block_kwargs):
        """Fill self.enc; return the channel count at the bottom of the U."""
        cout = in_channels
        caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=cout, out_channels=model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{tag}_aux_down'] = Conv2d(in_channels=caux, out_channels=caux, kernel=0, down=True,
                                                         resample_filter=resample_filter)
                    self.enc[f'{tag}_aux_skip'] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                elif encoder_type == 'residual':
                    self.enc[f'{tag}_aux_residual'] = Conv2d(in_channels=caux, out_channels=cout, kernel=3, down=True,
                                                             resample_filter=resample_filter, fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                          attention=(res in attn_resolutions), **block_kwargs)
        return cout

    def _build_decoder(self, img_resolution, out_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                       decoder_type, resample_filter, init_zero, block_kwargs, cout, skip_channels):
        """Fill self.dec, consuming the encoder's skip widths from the end."""
        skip_channels = list(skip_channels)
        top = len(channel_mult) - 1
        for level in range(top, -1, -1):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == top:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * channel_mult[level]
                # Only the last block of a level attends.
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout, attention=attn, **block_kwargs)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < top:
                    self.dec[f'{tag}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0,
                                                       up=True, resample_filter=resample_filter)
                self.dec[f'{tag}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f'{tag}_aux_conv'] = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels):
        """Mapping network: noise (+ label, + augment) embedding through two SiLU layers."""
        emb = self.map_noise(noise_labels)
        half = emb.shape[1] // 2
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)  # Song et al. order the halves [sin, cos].
        if self.map_label is not None:
            labels = _drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        return silu(self.map_layer1(emb))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels)

        skips = []
        aux = x
        for name, block in self.enc.items():
            if name.endswith('_aux_down'):
                aux = block(aux)
            elif name.endswith('_aux_skip'):
                x = x + block(aux)
                skips[-1] = x
            elif name.endswith('_aux_residual'):
                x = (x + block(aux)) / np.sqrt(2)
                skips[-1] = aux = x
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = None
        head = None
        for name, block in self.dec.items():
            if name.endswith('_aux_up'):
                out = block(out)
            elif name.endswith('_aux_norm'):
                head = block(x)
            elif name.endswith('_aux_conv'):
                head = block(silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """ADM U-Net of Dhariwal & Nichol, with EDM's module tree."""

    def __init__(self,
                 img_resolution,                # Image resolution at input/output.
                 in_channels,                   # Channels at input.
                 out_channels,                  # Channels at output.
                 label_dim=0,                   # Number of class labels; 0 = unconditional.
                 augment_dim=0,                 # Augmentation label size; 0 = no augmentation labels.
                 model_channels=192,            # Base channel count.
                 channel_mult=(1, 2, 3, 4),     # Channel multiplier per resolution level.
                 channel_mult_emb=4,            # Embedding width relative to model_channels.
                 num_blocks=3,                  # Residual blocks per resolution level.
                 attn_resolutions=(32, 16, 8),  # Resolutions that get self-attention.
                 dropout=0.10,                  # Dropout inside residual blocks.
                 label_dropout=0,               # Class-label dropout for classifier-free guidance.
                 ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                    init_mode='kaiming_normal', init_weight=np.sqrt(label_dim))

        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=cout, out_channels=model_channels * mult, kernel=3, **init)
                cout = model_channels * mult
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=cout, out_channels=cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                          attention=(res in attn_resolutions), **block_kwargs)
        skip_channels = [m.out_channels for m in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        top = len(channel_mult) - 1
        for level in range(top, -1, -1):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == top:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=cout, out_channels=cout, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=cout, out_channels=cout, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=cout, out_channels=cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * channel_mult[level]
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=cin, out_channels=cout,
                                                          attention=(res in attn_resolutions), **block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def _embed(self, noise_labels, class_labels, augment_labels):
        """Mapping network: the label enters after map_layer1, before the final SiLU."""
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(class_labels, self.label_dropout, self.training))
        return silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embed(noise_labels, class_labels, augment_labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


def _build_model(model_type, **kwargs):
    """Construct the U-Net named by model_type."""
    architectures = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}
    if model_type not in architectures:
        raise ValueError(f'Unknown model_type "{model_type}"; expected one of {sorted(architectures)}')
    return architectures[model_type](**kwargs)


def _prepare_inputs(net, x, sigma, class_labels, force_fp32):
    """Casts shared by all preconditioners: float32 x, sigma as [-1,1,1,1], labels, and the model dtype."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
    if net.label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, net.label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, net.label_dim)
    use_fp16 = net.use_fp16 and not force_fp32 and x.device.type == 'cuda'
    return x, sigma, class_labels, (torch.float16 if use_fp16 else torch.float32)


def _run_model(model, x_in, c_noise, class_labels, dtype, model_kwargs):
    """Evaluate the raw network F at the given dtype."""
    F_x = model(x_in.to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    # Under autocast (e.g. train.py --bf16) the output dtype is autocast's choice, not ours.
    if F_x.dtype != dtype and not torch.is_autocast_enabled(x_in.device.type):
        raise RuntimeError(f'Network returned {F_x.dtype}, expected {dtype}')
    return F_x


@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    """Variance-preserving preconditioning (Song et al. 2021), as in EDM."""

    def __init__(self,
                 img_resolution,            # Image resolution.
                 img_channels,              # Colour channels.
                 label_dim=0,               # Number of class labels; 0 = unconditional.
                 use_fp16=False,            # Run the model in float16 on CUDA?
                 beta_d=19.9,               # Extent of the noise schedule.
                 beta_min=0.1,              # Initial slope of the noise schedule.
                 M=1000,                    # Timesteps of the original DDPM formulation.
                 epsilon_t=1e-5,            # Smallest t used in training.
                 model_type='SongUNet',     # Underlying U-Net class name.
                 **model_kwargs,            # Passed to the U-Net.
                 ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        F_x = _run_model(self.model, c_in * x, c_noise, class_labels, dtype, model_kwargs)
        return x - sigma * F_x.to(torch.float32)  # c_skip = 1, c_out = -sigma

    def sigma(self, t):
        """Noise level at time t of the VP schedule."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """Time t at which the VP schedule reaches sigma."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def round_sigma(self, sigma):
        """Any sigma is representable."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    """Variance-exploding preconditioning (Song et al. 2021), as in EDM."""

    def __init__(self,
                 img_resolution,            # Image resolution.
                 img_channels,              # Colour channels.
                 label_dim=0,               # Number of class labels; 0 = unconditional.
                 use_fp16=False,            # Run the model in float16 on CUDA?
                 sigma_min=0.02,            # Smallest supported noise level.
                 sigma_max=100,             # Largest supported noise level.
                 model_type='SongUNet',     # Underlying U-Net class name.
                 **model_kwargs,            # Passed to the U-Net.
                 ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_noise = (0.5 * sigma).log()
        F_x = _run_model(self.model, x, c_noise, class_labels, dtype, model_kwargs)  # c_in = 1
        return x + sigma * F_x.to(torch.float32)  # c_skip = 1, c_out = sigma

    def round_sigma(self, sigma):
        """Any sigma is representable."""
        return torch.as_tensor(sigma)


@persistence.persistent_class
class iDDPMPrecond(torch.nn.Module):
    """Improved-DDPM preconditioning (Nichol & Dhariwal 2021) on its discrete sigma grid `u`, as in EDM."""

    def __init__(self,
                 img_resolution,            # Image resolution.
                 img_channels,              # Colour channels.
                 label_dim=0,               # Number of class labels; 0 = unconditional.
                 use_fp16=False,            # Run the model in float16 on CUDA?
                 C_1=0.001,                 # Timestep adjustment at low noise levels.
                 C_2=0.008,                 # Timestep adjustment at high noise levels.
                 M=1000,                    # Timesteps of the original DDPM formulation.
                 model_type='DhariwalUNet', # Underlying U-Net class name.
                 **model_kwargs,            # Passed to the U-Net.
                 ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # The model also predicts variances: twice the channels, of which only the first half is used.
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels * 2, label_dim=label_dim, **model_kwargs)
        self.register_buffer('u', self._sigma_grid())
        self.sigma_min = float(self.u[M - 1])
        self.sigma_max = float(self.u[0])

    def _sigma_grid(self):
        """u[j], j = 0..M: the noise level of DDPM step j, built backwards from u[M] = 0 in float32."""
        u = torch.zeros(self.M + 1)
        for j in range(self.M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=self.C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        return u

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        F_x = _run_model(self.model, c_in * x, c_noise, class_labels, dtype, model_kwargs)
        return x - sigma * F_x[:, :self.img_channels].to(torch.float32)  # c_skip = 1, c_out = -sigma

    def alpha_bar(self, j):
        """Cosine-schedule alpha_bar at DDPM step j."""
        j = torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        """Snap sigma to the nearest grid value in u (or return its index)."""
        sigma = torch.as_tensor(sigma)
        # cdist rather than an exact |a-b| keeps EDM's tie-breaking on near-equal distances.
        dist = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        index = dist.argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    """EDM preconditioning (Karras et al. 2022)."""

    def __init__(self,
                 img_resolution,                # Image resolution.
                 img_channels,                  # Colour channels.
                 label_dim=0,                   # Number of class labels; 0 = unconditional.
                 use_fp16=False,                # Run the model in float16 on CUDA?
                 sigma_min=0,                   # Smallest supported noise level.
                 sigma_max=float('inf'),        # Largest supported noise level.
                 sigma_data=0.5,                # Expected standard deviation of the data.
                 model_type='DhariwalUNet',     # Underlying U-Net class name.
                 **model_kwargs,                # Passed to the U-Net.
                 ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                  out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = _run_model(self.model, c_in * x, c_noise, class_labels, dtype, model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        """Any sigma is representable."""
        return torch.as_tensor(sigma)
