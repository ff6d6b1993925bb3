"""Tiny randomly initialised Stable Diffusion components and a tiny captioned data set, built offline.

For tests and the offline demo: `write_tiny_pipeline(path)` saves a StableDiffusionPipeline folder (tiny
UNet2DConditionModel, AutoencoderKL, CLIPTextModel, a character-level CLIPTokenizer, DDPMScheduler) that
`--pretrained_model_name_or_path` loads; `write_digits_folder(path)` writes scikit-learn's digits upsampled to
RGB with captions "a handwritten digit 3" in the imagefolder convention. Nothing is downloaded.
"""

import json
import os

import numpy as np
import PIL.Image

import dnnlib

CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789'


def tiny_tokenizer(max_length=32):
    """A CLIPTokenizer with one token per character (and its end-of-word form), no merges."""
    from transformers import CLIPTokenizer # pylint: disable=import-outside-toplevel
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + '</w>'] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_pipeline(prediction_type='epsilon', resolution=32, seed=0):
    """A randomly initialised StableDiffusionPipeline small enough for CPU tests (VAE downsamples by 2)."""
    import torch # pylint: disable=import-outside-toplevel
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel # pylint: disable=import-outside-toplevel
    from transformers import CLIPTextConfig, CLIPTextModel # pylint: disable=import-outside-toplevel
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=32))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=('DownEncoderBlock2D',) * 2,
                        up_block_types=('UpDecoderBlock2D',) * 2, block_out_channels=(16, 32), latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=resolution)
    unet = UNet2DConditionModel(
        sample_size=resolution // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'), up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    scheduler = DDPMScheduler(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False,
                              steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_tiny_pipeline(path, prediction_type='epsilon', resolution=32, seed=0):
    """Save tiny_pipeline() as a local "pretrained" folder (atomically) and return its path."""
    pipe = tiny_pipeline(prediction_type, resolution, seed)
    with dnnlib.util.atomic_output(path) as tmp:
        pipe.save_pretrained(tmp)
    return path


def write_digits_folder(path, num_images=20, resolution=32, seed=0):
    """scikit-learn's 8x8 digits, upsampled to RGB `resolution`, with metadata.jsonl captions "a handwritten digit D"."""
    from sklearn.datasets import load_digits # pylint: disable=import-outside-toplevel
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:num_images]
    with dnnlib.util.atomic_output(path) as tmp:
        os.makedirs(tmp)
        rows = []
        for k, i in enumerate(order):
            img = (digits.images[i] / 16 * 255).astype(np.uint8)
            pil = PIL.Image.fromarray(img).resize((resolution, resolution), PIL.Image.NEAREST).convert('RGB')
            name = f'{k:05d}.png'
            pil.save(os.path.join(tmp, name))
            rows.append(dict(file_name=name, text=f'a handwritten digit {digits.target[i]}'))
        with open(os.path.join(tmp, 'metadata.jsonl'), 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows)
    return path
