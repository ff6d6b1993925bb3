"""Fine-tune Stable Diffusion (full or LoRA) with Ambient Diffusion's high-noise trick; docs/text_to_image.md.

  python -m ambient.finetune_t2i --pretrained_model_name_or_path=stabilityai/stable-diffusion-2-base \\
      --train_data_dir=laion10k --output_dir=sd2-ambient --ambient_timestep=50
  accelerate launch --multi_gpu -m ambient.finetune_t2i ...     # several GPUs
"""

import click

import dnnlib

FF = dnnlib.util.FiniteFloat


@click.command(context_settings=dict(max_content_width=120))
@click.option('--pretrained_model_name_or_path', help='Stable Diffusion folder or hub id', required=True)
@click.option('--train_data_dir', help='Image folder with metadata.jsonl (file_name, text)', required=True)
@click.option('--output_dir', help='Where checkpoints, the latent cache and the model go', default='sd-ambient-model', show_default=True)
@click.option('--resolution', help='Training resolution (resize + centre crop)', type=click.IntRange(min=8), default=512, show_default=True)
@click.option('--train_batch_size', help='Batch size per process', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--max_train_steps', help='Optimizer steps in all', type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option('--learning_rate', help='AdamW learning rate', type=FF(min=0, min_open=True), default=1e-5, show_default=True)
@click.option('--checkpointing_steps', help='Save a resumable checkpoint every N steps', type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--checkpoints_total_limit', help='Keep only the newest N checkpoints', type=click.IntRange(min=1), default=None)
@click.option('--resume_from_checkpoint', help="'latest' or a checkpoint folder", default=None)
@click.option('--seed', help='Seed of batches, timesteps and noise', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--mixed_precision', help='Mixed precision', type=click.Choice(['no', 'fp16', 'bf16']), default='no', show_default=True)
@click.option('--prediction_type', help="Override the scheduler's prediction type", type=click.Choice(['epsilon', 'v_prediction', 'sample']), default=None)
@click.option('--caption_column', help='Caption key in metadata.jsonl', default='text', show_default=True)
@click.option('--max_train_samples', help='Use only the first N images', type=click.IntRange(min=1), default=None)
@click.option('--lora_rank', help='LoRA rank (0: full fine-tuning)', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--adam_weight_decay', help='AdamW weight decay', type=FF(min=0), default=1e-2, show_default=True)
@click.option('--max_grad_norm', help='Gradient clipping (0: off)', type=FF(min=0), default=1.0, show_default=True)
@click.option('--ambient_timestep', help='t_n as a scheduler timestep index (0: off)', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--noise_seed', help='Seed of the fixed noisy latents', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--ambient_weighting', help='Noisy-regime weighting', type=click.Choice(['x_tn', 'prediction']), default='x_tn', show_default=True)
@click.option('--caption_token_replace_prob', help='S23: replace each caption token by a random one w.p. P', type=FF(min=0, max=1), default=0.0, show_default=True)
@click.option('--text_embedding_noise', help='S23: std of Gaussian noise on the text embedding', type=FF(min=0), default=0.0, show_default=True)
@click.option('--wen_threshold', help='W24: drop samples whose text-conditional noise magnitude exceeds this', type=FF(min=0), default=None)
def main(**opts):
    """Fine-tune Stable Diffusion on captioned images with the ambient loss (Appendix B of the paper)."""
    from ambient.t2i import train # pylint: disable=import-outside-toplevel
    train.finetune(**opts)


if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter
