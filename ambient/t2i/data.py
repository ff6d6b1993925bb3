"""Captioned image folders (the HF `imagefolder` convention) and their cached VAE latents.

A training folder holds images and `metadata.jsonl`, one JSON object per line with `file_name` (relative path)
and the caption column (`text` by default). Item i is line i of metadata.jsonl: its fixed ambient noise is
`ambient.method.dataset.fixed_noise(noise_seed, i, latent_shape)`, a pure function of (noise_seed, i).
"""

import hashlib
import json
import os

import numpy as np
import PIL.Image
import torch

import dnnlib
from ambient.method.dataset import fixed_noise

METADATA = 'metadata.jsonl'


def read_metadata(train_data_dir, caption_column='text', max_train_samples=None):
    """[(path, caption)] in metadata.jsonl order; UserError for a missing folder, file, column or image."""
    path = os.path.join(train_data_dir, METADATA)
    if not os.path.isdir(train_data_dir):
        raise dnnlib.util.UserError(f'--train_data_dir {train_data_dir!r} is not a folder')
    if not os.path.isfile(path):
        raise dnnlib.util.UserError(f'{path} not found: an image folder needs metadata.jsonl with "file_name" and "{caption_column}"')
    items = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise dnnlib.util.UserError(f'{path}:{lineno}: not JSON ({err.msg})') from None
            for key in ('file_name', caption_column):
                if not isinstance(row, dict) or not isinstance(row.get(key), str):
                    raise dnnlib.util.UserError(f'{path}:{lineno}: needs a string "{key}"')
            image = os.path.join(train_data_dir, row['file_name'])
            if not os.path.isfile(image):
                raise dnnlib.util.UserError(f'{path}:{lineno}: image {image} not found')
            items.append((image, row[caption_column]))
    if max_train_samples is not None:
        items = items[:max_train_samples]
    if not items:
        raise dnnlib.util.UserError(f'{path} lists no images')
    return items


def load_image(path, resolution):
    """RGB float32 CHW in [-1, 1]: shorter side resized to `resolution` (bilinear), then centre-cropped."""
    try:
        with PIL.Image.open(path) as img:
            img = img.convert('RGB')
    except (OSError, PIL.UnidentifiedImageError) as err:
        raise dnnlib.util.UserError(f'Cannot read image {path} ({err.__class__.__name__})') from None
    w, h = img.size
    scale = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), PIL.Image.BILINEAR)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1


def load_images_uint8(items, resolution):
    """uint8 NCHW tensor of the items' images, preprocessed as for training (for memorization / FID)."""
    return torch.stack([((load_image(p, resolution) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for p, _ in items])


def cache_key(items, model, resolution):
    """What the cached latents depend on: the image files (names, sizes, times), the VAE and the resolution."""
    h = hashlib.sha256()
    for path, _ in items:
        st = os.stat(path)
        h.update(f'{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
    h.update(f'{model}|{resolution}'.encode())
    return h.hexdigest()


@torch.no_grad()
def encode_latents(vae, items, resolution, device, batch_size=8, dtype=torch.float32):
    """Scaled VAE latents (posterior mean times `scaling_factor`) of every item, float32 on the CPU."""
    out = []
    for i in range(0, len(items), batch_size):
        x = torch.stack([load_image(p, resolution) for p, _ in items[i:i + batch_size]]).to(device, dtype)
        out.append((vae.encode(x).latent_dist.mode() * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def cached_latents(cache_path, vae, items, model, resolution, device, batch_size=8, dtype=torch.float32, log=print):
    """The latents from `cache_path` when its key matches, else computed once and written there atomically."""
    import safetensors.torch # pylint: disable=import-outside-toplevel
    key = cache_key(items, model, resolution)
    if os.path.isfile(cache_path):
        with safetensors.safe_open(cache_path, 'pt') as f:
            if (f.metadata() or {}).get('key') == key:
                return f.get_tensor('latents')
    log(f'Encoding {len(items)} training images with the VAE (cached in {cache_path})...')
    latents = encode_latents(vae, items, resolution, device, batch_size, dtype)
    with dnnlib.util.atomic_output(cache_path) as tmp:
        safetensors.torch.save_file({'latents': latents.contiguous()}, tmp, metadata={'key': key})
    return latents


def tn_noise(noise_seed, indices, shape):
    """The fixed unit noise of items `indices` ([B] ints), stacked to [B, *shape] float32."""
    return torch.stack([torch.from_numpy(fixed_noise(noise_seed, int(i), shape)) for i in indices])


def batch_indices(seed, step, global_batch, num_items):
    """Item indices of a global batch: epochs of seeded permutations, a pure function of (seed, step)."""
    pos = torch.arange(step * global_batch, (step + 1) * global_batch)
    out = torch.empty_like(pos)
    for epoch in pos.div(num_items, rounding_mode='floor').unique().tolist():
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch))
        sel = pos.div(num_items, rounding_mode='floor') == epoch
        out[sel] = perm[pos[sel] % num_items]
    return out
