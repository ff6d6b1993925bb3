"""Evaluate a text-to-image model as in the paper's Table 3 (memorization, CLIP score, FID); docs/text_to_image.md.

  python -m ambient.evaluate_t2i --model=sd2-ambient --train_data_dir=laion10k --outdir=eval-sd2-ambient
"""

import json

import click

import dnnlib


@click.command(context_settings=dict(max_content_width=120))
@click.option('--model', help='Fine-tuned pipeline folder or hub id (the base model with --lora_weights)', required=True)
@click.option('--lora_weights', help='Folder with pytorch_lora_weights.safetensors', default=None)
@click.option('--train_data_dir', help='The training image folder (metadata.jsonl); its captions are the prompts', required=True)
@click.option('--outdir', help='Where images/ and metrics.json go', required=True)
@click.option('--resolution', type=click.IntRange(min=8), default=512, show_default=True)
@click.option('--caption_column', default='text', show_default=True)
@click.option('--max_captions', help='Use the first N captions only', type=click.IntRange(min=1), default=None)
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--num_inference_steps', type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--guidance_scale', type=dnnlib.util.FiniteFloat(min=0), default=7.5, show_default=True)
@click.option('--batch_size', type=click.IntRange(min=1), default=8, show_default=True)
@click.option('--detector', help='Memorization features', type=click.Choice(['dinov2', 'inception', 'pixel']), default='dinov2', show_default=True)
@click.option('--detector_path', help='Local weights of the memorization detector', default=None)
@click.option('--fid_detector', help="FID features ('' to skip)", type=click.Choice(['inception', 'dinov2', 'pixel', '']), default='inception', show_default=True)
@click.option('--fid_detector_path', help='Local weights of the FID detector', default=None)
@click.option('--fid_reference_dir', help='Image folder (metadata.jsonl) for FID; default the training set', default=None)
@click.option('--clip_model', help="CLIP hub id or folder ('' to skip)", default='openai/clip-vit-large-patch14', show_default=True)
def main(**opts):
    """Generate for the training captions, then similarity to the training set, CLIP score and FID."""
    from ambient.t2i import evaluate # pylint: disable=import-outside-toplevel
    result = evaluate.evaluate(**opts)
    click.echo(json.dumps(result, indent=2))


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
