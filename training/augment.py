"""EDM's augmentation pipeline: ADA-style pixel blitting, geometric warps and colour transforms, with labels.

Every augmentation is drawn per sample and applied identically to all channels of that sample, so a caller
can push several same-shaped tensors through ONE draw by concatenating them along the channel axis (for
example a clean image and its fixed noisy copy) and splitting the result again. Geometric operations do not
look at channels at all. Colour operations see the channels as consecutive RGB triplets when their count is a
multiple of 3 and otherwise as independent luminance (L) channels; for 3 and 1 channels this is exactly EDM.

What the operations do to additive white Gaussian noise riding on an image (matters for fixed noisy copies):
- xflip, yflip, rotate_int: exact pixel permutations, so white noise stays white.
- translate_int: each output pixel is one input pixel (mirrored at the border), so the per-pixel mean and
  variance are kept; pixels reflected across the border repeat, so noise there is no longer independent.
- scale, rotate_frac, aniso, translate_frac: resampling through the 2x wavelet up/down-sampling and bilinear
  interpolation low-passes the noise, which lowers its variance (to about 0.6 of it for unit-strength draws
  on 64x64 noise) and correlates neighbouring pixels. Once any of them is enabled, every image goes through
  that path; samples whose drawn transform is the identity come back unchanged up to about 1e-5.
- brightness: adds a constant, the noise is untouched.
- lumaflip, hue: orthogonal maps of RGB, so white noise stays white for RGB triplets. On L channels lumaflip
  negates the image and hue (like saturation) leaves it unchanged.
- contrast, saturation: scale the noise (saturation only its chroma part).
"""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

# This module is pickled with its source and may run inside NVIDIA's EDM checkout: it depends only on numpy,
# torch and torch_utils.{persistence, misc.constant}.

# Low-pass decomposition filter of the Symlet-6 wavelet; it anti-aliases the 2x up/down-sampling around warps.
SYM6 = [
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
]


def batched_matrix(rows, device=None):
    """Stack a matrix given as rows of numbers and/or same-shaped tensors into a [..., R, C] float tensor."""
    entries = [v for row in rows for v in row]
    tensors = [v for v in entries if isinstance(v, torch.Tensor)]
    if not tensors:
        return misc.constant(np.asarray(rows), device=device)
    like = tensors[0]
    entries = [v if isinstance(v, torch.Tensor) else misc.constant(v, shape=like.shape, device=like.device) for v in entries]
    return torch.stack(entries, dim=-1).reshape(like.shape + (len(rows), -1))


def translate2d(tx, ty, device=None):
    """Homogeneous 2D translation by (tx, ty)."""
    return batched_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device=device)


def scale2d(sx, sy, device=None):
    """Homogeneous 2D scaling by (sx, sy)."""
    return batched_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device=device)


def rotate2d(theta):
    """Homogeneous 2D rotation by theta (radians)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return batched_matrix([[c, torch.sin(-theta), 0], [s, c, 0], [0, 0, 1]])


def translate3d(tx, ty, tz):
    """Homogeneous 3D translation (a colour offset)."""
    return batched_matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]])


def scale3d(sx, sy, sz):
    """Homogeneous 3D scaling (a colour gain)."""
    return batched_matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])


def rotate3d(axis, theta):
    """Homogeneous 3D rotation by theta around the unit vector axis (Rodrigues' formula)."""
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    s, c = torch.sin(theta), torch.cos(theta)
    k = 1 - c
    return batched_matrix([
        [x*x*k+c,   x*y*k-z*s, x*z*k+y*s, 0],
        [y*x*k+z*s, y*y*k+c,   y*z*k-x*s, 0],
        [z*x*k-y*s, z*y*k+x*s, z*z*k+c,   0],
        [0,         0,         0,         1],
    ])


def mirror_index(i, n):
    """Fold integer coordinates into [0, n) by reflecting at the borders (the edge pixel is not repeated)."""
    return (n - 1) - ((n - 1) - i % (2 * n - 2)).abs()


def depthwise_conv(images, taps, dim, **kwargs):
    """Convolve every channel with the same 1D filter along dim (2 = height, 3 = width)."""
    weight = misc.constant(taps, dtype=images.dtype, device=images.device).tile([images.shape[1], 1, 1])
    weight = weight.unsqueeze(2 if dim == 3 else 3)
    return torch.nn.functional.conv2d(images, weight, groups=images.shape[1], **kwargs)


def interleave_zeros(images, dim):
    """Insert a zero after every sample along dim (2 or 3), dropping the trailing one: length n -> 2n - 1."""
    stacked = torch.stack([images, torch.zeros_like(images)], dim=dim + 1)
    shape = list(images.shape)
    shape[dim] *= 2
    return stacked.reshape(shape).narrow(dim, 0, shape[dim] - 1)


def warp(images, G_inv):
    """Resample images [N, C, H, W] through the per-sample inverse pixel-space transforms G_inv [N, 3, 3].

    G_inv maps output pixel coordinates (origin at the image centre) to input coordinates. The image is
    reflect-padded far enough to cover the warped corners, upsampled 2x with the Symlet-6 filter, sampled
    bilinearly, then filtered and decimated back to H x W.
    """
    N, C, H, W = images.shape
    device = images.device
    taps = np.asarray(SYM6, dtype=np.float32)
    border = len(taps) // 4

    # Padding: how far the warped image corners reach beyond the frame, plus room for the filter.
    cx, cy = (W - 1) / 2, (H - 1) / 2
    corners = batched_matrix([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=device)
    corners = (G_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, N * 4]
    reach = torch.cat([-corners, corners]).max(dim=1).values  # [left, top, right, bottom]
    reach = reach + misc.constant([border * 2 - cx, border * 2 - cy] * 2, device=device)
    reach = reach.max(misc.constant([0, 0] * 2, device=device))
    reach = reach.min(misc.constant([W - 1, H - 1] * 2, device=device))
    px0, py0, px1, py1 = reach.ceil().to(torch.int32).tolist()
    images = torch.nn.functional.pad(images, [px0, px1, py0, py1], mode='reflect')
    G_inv = translate2d((px0 - px1) / 2, (py0 - py1) / 2, device=device) @ G_inv

    # 2x upsampling; pixel centres move, so conjugate G_inv with the scaling and the half-pixel shift.
    up_taps = np.ascontiguousarray(taps[None, None, ::-1])
    up_pad = (len(taps) + 1) // 2
    images = depthwise_conv(interleave_zeros(images, 3), up_taps, dim=3, padding=[0, up_pad])
    images = depthwise_conv(interleave_zeros(images, 2), up_taps, dim=2, padding=[up_pad, 0])
    G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d(1 / 2, 1 / 2, device=device)
    G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d(0.5, 0.5, device=device)

    # Bilinear resampling in normalised [-1, 1] coordinates, onto a 2x grid with `border` pixels of margin.
    out_shape = [N, C, (H + border * 2) * 2, (W + border * 2) * 2]
    to_input = scale2d(2 / images.shape[3], 2 / images.shape[2], device=device)
    from_output = scale2d(1 / (2 / out_shape[3]), 1 / (2 / out_shape[2]), device=device)
    G_inv = to_input @ G_inv @ from_output
    grid = torch.nn.functional.affine_grid(theta=G_inv[:, :2, :], size=out_shape, align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Anti-aliased 2x decimation, then drop the margin.
    down_taps = taps[None, None, :]
    down_pad = (len(taps) - 1) // 2
    images = depthwise_conv(images, down_taps, dim=3, stride=[1, 2], padding=[0, down_pad])[:, :, :, border:-border]
    images = depthwise_conv(images, down_taps, dim=2, stride=[2, 1], padding=[down_pad, 0])[:, :, border:-border, :]
    return images


def recolour(images, M):
    """Apply per-sample homogeneous colour transforms M [N, 4, 4] to RGB triplets, or to L channels."""
    N, C, H, W = images.shape
    if C % 3 == 0:
        rgb = images.reshape([N, C // 3, 3, H * W])
        rgb = M[:, None, :3, :3] @ rgb + M[:, None, :3, 3:]
        return rgb.reshape([N, C, H, W])
    # A luminance channel is R = G = B: it takes the mean output of the three rows.
    M = M[:, :3, :].mean(dim=1, keepdim=True)
    gain, offset = M[:, :, :3].sum(dim=2, keepdim=True), M[:, :, 3:]
    return (images.reshape([N, C, H * W]) * gain + offset).reshape([N, C, H, W])


@persistence.persistent_class
class AugmentPipe:
    """EDM's augmentation pipeline; every option is a probability multiplier (0 = off) or a strength.

    Calling it on images [N, C, H, W] returns (augmented images, labels [N, D]). The labels describe the
    drawn augmentation, one group per enabled option in this order: xflip (1), yflip (1), rotate_int (2),
    translate_int (2), scale (1), rotate_frac (2), aniso (2), translate_frac (2), brightness (1),
    contrast (1), lumaflip (1), hue (2), saturation (1). EDM's default config (xflip, yflip, scale,
    rotate_frac, aniso, translate_frac) gives D = 9. Random numbers come from the global torch generator of
    the images' device, in EDM's order, so a seed gives the same augmentation as EDM. See the module
    docstring for stacking several tensors along channels and for the effect on white noise.
    """

    def __init__(self, p=1,
        xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
        scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1, aniso_std=0.2,
        aniso_rotate_prob=0.5, translate_frac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
        hue_max=1, saturation_std=1,
    ):
        self.p = float(p)  # global multiplier of every probability below
        # Pixel blitting.
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)  # relative to the image size
        # General geometric transforms.
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)  # log2 units
        self.rotate_frac_max = float(rotate_frac_max)  # 1 = a full turn
        self.aniso_std = float(aniso_std)  # log2 units
        self.aniso_rotate_prob = float(aniso_rotate_prob)  # not scaled by p
        self.translate_frac_std = float(translate_frac_std)  # relative to the image size
        # Colour transforms.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)  # log2 units
        self.hue_max = float(hue_max)  # 1 = a full turn
        self.saturation_std = float(saturation_std)  # log2 units

    @staticmethod
    def _keep(w, prob, shape):
        """Keep each sample's draw w with probability prob, else zero it (one torch.rand of `shape`)."""
        chosen = torch.rand(shape, device=w.device) < prob
        return torch.where(chosen, w, torch.zeros_like(w))

    def _blit(self, images, labels):
        """Flips, quarter turns and integer translations: exact pixel copies."""
        N, C, H, W = images.shape
        device = images.device
        per_sample = [N, 1, 1, 1]
        if self.xflip > 0:
            w = self._keep(torch.randint(2, per_sample, device=device), self.xflip * self.p, per_sample)
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)
        if self.yflip > 0:
            w = self._keep(torch.randint(2, per_sample, device=device), self.yflip * self.p, per_sample)
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)
        if self.rotate_int > 0:
            # Quarter turn k = flips and a transpose; the labels are the two flip bits.
            w = self._keep(torch.randint(4, per_sample, device=device), self.rotate_int * self.p, per_sample)
            flip_x, flip_y = (w == 1) | (w == 2), (w == 2) | (w == 3)
            images = torch.where(flip_x, images.flip(3), images)
            images = torch.where(flip_y, images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [flip_x, flip_y]
        if self.translate_int > 0:
            w = torch.rand([2] + per_sample, device=device) * 2 - 1
            w = self._keep(w, self.translate_int * self.p, [1] + per_sample)
            tx = w[0].mul(W * self.translate_int_max).round().to(torch.int64)
            ty = w[1].mul(H * self.translate_int_max).round().to(torch.int64)
            # EDM's convention: content moves right by tx and up by ty.
            cols = mirror_index(torch.arange(W, device=device).reshape(1, 1, 1, W) - tx, W)
            rows = mirror_index(torch.arange(H, device=device).reshape(1, 1, H, 1) + ty, H)
            images = images.gather(3, cols.expand(N, C, H, W)).gather(2, rows.expand(N, C, H, W))
            labels += [tx.div(W * self.translate_int_max), ty.div(H * self.translate_int_max)]
        return images, labels

    def _sample_geometry(self, N, H, W, device, labels):
        """Draw the general geometric transforms; returns G_inv [N, 3, 3] (output -> input), or None if none is enabled."""
        G_inv = None

        def then(T):
            nonlocal G_inv
            G_inv = T if G_inv is None else G_inv @ T

        if self.scale > 0:
            w = self._keep(torch.randn([N], device=device), self.scale * self.p, [N])
            s = w.mul(self.scale_std).exp2()
            then(scale2d(1 / s, 1 / s))
            labels.append(w)
        if self.rotate_frac > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * (np.pi * self.rotate_frac_max)
            w = self._keep(w, self.rotate_frac * self.p, [N])
            then(rotate2d(w))
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            # Stretch by s along an axis at angle r (r = 0 with probability 1 - aniso_rotate_prob), shrink across it.
            w = torch.randn([N], device=device)
            r = (torch.rand([N], device=device) * 2 - 1) * np.pi
            w = self._keep(w, self.aniso * self.p, [N])
            r = self._keep(r, self.aniso_rotate_prob, [N])
            s = w.mul(self.aniso_std).exp2()
            then(rotate2d(-r))
            then(scale2d(1 / s, 1 / (1 / s)))  # 1 / (1 / s), not s: EDM's rounding
            then(rotate2d(r))
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = self._keep(torch.randn([2, N], device=device), self.translate_frac * self.p, [1, N])
            then(translate2d(-w[0].mul(W * self.translate_frac_std), -w[1].mul(H * self.translate_frac_std)))
            labels += [w[0], w[1]]
        return G_inv

    def _sample_colour(self, N, device, labels):
        """Draw the colour transforms; returns M [N, 4, 4] acting on homogeneous RGB, or None if none is enabled."""
        I_4 = torch.eye(4, device=device)
        luma_axis = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3), device=device)
        luma_proj = luma_axis.ger(luma_axis)
        M = None

        def then(T):
            nonlocal M
            M = T if M is None else T @ M

        if self.brightness > 0:
            w = self._keep(torch.randn([N], device=device), self.brightness * self.p, [N])
            b = w * self.brightness_std
            then(translate3d(b, b, b))
            labels.append(w)
        if self.contrast > 0:
            w = self._keep(torch.randn([N], device=device), self.contrast * self.p, [N])
            c = w.mul(self.contrast_std).exp2()
            then(scale3d(c, c, c))
            labels.append(w)
        if self.lumaflip > 0:
            w = self._keep(torch.randint(2, [N, 1, 1], device=device), self.lumaflip * self.p, [N, 1, 1])
            then(I_4 - 2 * luma_proj * w)  # Householder reflection of the luma axis
            labels.append(w)
        if self.hue > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * (np.pi * self.hue_max)
            w = self._keep(w, self.hue * self.p, [N])
            then(rotate3d(luma_axis, w))
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = self._keep(torch.randn([N, 1, 1], device=device), self.saturation * self.p, [N, 1, 1])
            then(luma_proj + (I_4 - luma_proj) * w.mul(self.saturation_std).exp2())
            labels.append(w)
        return M

    def __call__(self, images):
        """Augment images [N, C, H, W]; returns (images, labels [N, D] float32)."""
        N, C, H, W = images.shape
        device = images.device
        labels = [torch.zeros([N, 0], device=device)]
        images, labels = self._blit(images, labels)
        G_inv = self._sample_geometry(N, H, W, device, labels)
        if G_inv is not None:
            images = warp(images, G_inv)
        M = self._sample_colour(N, device, labels)
        if M is not None:
            images = recolour(images, M)
        labels = torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1)
        return images, labels
