"""Table 3's evaluation of a text-to-image model: generate for the training captions, then memorization
(mean and 95th percentile of the top-1 similarity to the training set), a CLIP image-text score and an FID.

Memorization reuses `ambient.metrics.memorization.compute_memorization` (DINOv2 by default, as the paper), the Frechet
distance `training.metrics` (Inception by default). The CLIP score is the mean cosine similarity of CLIP's
image and text embeddings (Table 3's scale, e.g. 0.306), from a CLIPModel loaded by hub id or local path.
"""

import json
import os
import tempfile

import numpy as np
import PIL.Image
import torch

import dnnlib
from ambient.metrics import memorization
from ambient.t2i import data as t2i_data
from ambient.t2i import models
from training import detectors, metrics

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def generate(pipe, captions, resolution, seed=0, num_inference_steps=50, guidance_scale=7.5, batch_size=8, device='cpu'):
    """uint8 NCHW images, one per caption; image i uses a generator seeded with seed + i."""
    pipe.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        gens = [torch.Generator(device='cpu').manual_seed(seed + start + k) for k in range(len(chunk))]
        images = pipe(chunk, height=resolution, width=resolution, num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, generator=gens, output_type='np').images
        out.append(torch.from_numpy((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2))
    return torch.cat(out)


@torch.no_grad()
def clip_score(images, captions, clip_model, device='cpu', batch_size=32):
    """Mean cosine similarity between CLIP embeddings of uint8 NCHW images and their captions."""
    from transformers import CLIPModel, CLIPTokenizer # pylint: disable=import-outside-toplevel
    model = models.load_component(CLIPModel, clip_model, what='the CLIP model').to(device).eval()
    tokenizer = models.load_component(CLIPTokenizer, clip_model, what='the CLIP tokenizer')
    size = model.config.vision_config.image_size
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    scores = []
    for i in range(0, len(captions), batch_size):
        x = images[i:i + batch_size].to(device, torch.float32) / 255
        x = torch.nn.functional.interpolate(x, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1)
        img = model.get_image_features(pixel_values=(x - mean) / std)
        ids = tokenizer(captions[i:i + batch_size], padding=True, truncation=True, return_tensors='pt').to(device)
        txt = model.get_text_features(**ids)
        img, txt = [getattr(v, 'pooler_output', v) for v in (img, txt)]
        scores.append(torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1).cpu())
    return float(torch.cat(scores).mean())


def frechet(images_a, images_b, detector, device='cpu', batch_size=64):
    """Frechet distance between two uint8 NCHW image sets in the detector's features."""
    stats = []
    for images in (images_a, images_b):
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        dim = detector.feature_dim or detector(images[:1].to(device)).shape[1]
        stats.append(metrics.stats_from_batches(batches, detector, dim, device=device))
    return metrics.frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1])


def evaluate(model, train_data_dir, outdir, lora_weights=None, resolution=512, caption_column='text',
             max_captions=None, seed=0, num_inference_steps=50, guidance_scale=7.5, batch_size=8,
             detector='dinov2', detector_path=None, fid_detector='inception', fid_detector_path=None,
             clip_model='openai/clip-vit-large-patch14', fid_reference_dir=None, device=None):
    """Generate for the training captions into outdir/images, measure, write outdir/metrics.json; returns the metrics."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    items = t2i_data.read_metadata(train_data_dir, caption_column, max_captions)
    captions = [c for _, c in items]
    pipe = models.load_pipeline(model, lora_weights).to(device)
    images = generate(pipe, captions, resolution, seed, num_inference_steps, guidance_scale, batch_size, device)
    del pipe
    os.makedirs(outdir, exist_ok=True)
    with dnnlib.util.atomic_output(os.path.join(outdir, 'images')) as tmp:
        os.makedirs(tmp)
        for i, img in enumerate(images):
            PIL.Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(tmp, f'{i:06d}.png'))
    train_images = t2i_data.load_images_uint8(items, resolution)
    result = dict(model=str(model), lora_weights=lora_weights, num_images=int(images.shape[0]))
    with tempfile.TemporaryDirectory() as train_dir: # The training images as seen in training, for the NN search.
        for i, img in enumerate(train_images):
            PIL.Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(train_dir, f'{i:06d}.png'))
        det = memorization.make_detector(detector, path=detector_path, device=device)
        mem = memorization.compute_memorization(images, train_dir, detector=det, cache_dir=os.path.join(outdir, 'cache'),
                                                verbose=False)
    result.update(similarity_mean=mem.metrics['similarity_mean'], similarity_p95=mem.metrics['similarity_p95'],
                  memorization_detector=detector)
    result['clip_score'] = clip_score(images, captions, clip_model, device) if clip_model else None
    if fid_detector:
        ref = train_images if fid_reference_dir is None else t2i_data.load_images_uint8(
            t2i_data.read_metadata(fid_reference_dir, caption_column), resolution)
        fdet = detectors.load_detector(fid_detector, path=fid_detector_path, device=device, option='--fid_detector_path')
        result.update(fid=frechet(images, ref, fdet, device), fid_detector=fid_detector)
    dnnlib.util.atomic_write_bytes(os.path.join(outdir, 'metrics.json'), json.dumps(result, indent=2).encode())
    return result
