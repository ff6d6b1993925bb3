"""Fine-tuning Stable Diffusion with the ambient loss (paper Appendix B), full or LoRA, on accelerate.

`finetune(**opts)` is what `python -m ambient.finetune_t2i` runs. Randomness is a pure function of
(seed, step, process): the batch of step s comes from `data.batch_indices(seed, s, ...)`, the timesteps, noise
and text-side draws from a generator seeded with (seed, s, rank). A resumed run therefore continues exactly
(no RNG state to store), and a checkpoint is only the trainable weights, the optimizer and the step.

Output directory: `checkpoint-N/` (resumable state), `latents.safetensors` (the cached VAE latents),
`logs.jsonl` (one line per step), `args.json`, and at the end the model: a StableDiffusionPipeline folder
(full fine-tuning) or `pytorch_lora_weights.safetensors` (LoRA, loads with `load_lora_weights`).
"""

import json
import os
import re
import shutil
import tempfile

import torch

import dnnlib
from ambient.t2i import data as t2i_data
from ambient.t2i import loss as t2i_loss
from ambient.t2i import mitigations
from ambient.t2i import models

CHECKPOINT_RE = re.compile(r'^checkpoint-(\d+)$')
LORA_TARGETS = ['to_k', 'to_q', 'to_v', 'to_out.0']
DEFAULTS = dict(
    pretrained_model_name_or_path=None, train_data_dir=None, output_dir='sd-ambient-model', resolution=512,
    train_batch_size=16, max_train_steps=100_000, learning_rate=1e-5, checkpointing_steps=500,
    checkpoints_total_limit=None, resume_from_checkpoint=None, seed=0, mixed_precision='no', prediction_type=None,
    caption_column='text', max_train_samples=None, lora_rank=0, adam_beta1=0.9, adam_beta2=0.999,
    adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=1.0, ambient_timestep=0, noise_seed=0,
    ambient_weighting='x_tn', caption_token_replace_prob=0.0, text_embedding_noise=0.0, wen_threshold=None,
    latent_batch_size=8,
)


def list_checkpoints(output_dir):
    """[(step, path)] of the finished checkpoints in output_dir, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
             if (m := CHECKPOINT_RE.match(name)) and os.path.isfile(os.path.join(output_dir, name, 'state.json'))]
    return sorted(found)


def resolve_resume(output_dir, resume):
    """The checkpoint folder to resume from: None, 'latest' (None if there is none yet) or a path."""
    if resume is None:
        return None
    if resume == 'latest':
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = resume if os.path.isdir(resume) else os.path.join(output_dir, resume)
    if not os.path.isfile(os.path.join(path, 'state.json')):
        raise dnnlib.util.UserError(f'--resume_from_checkpoint {resume!r}: no checkpoint (state.json) there')
    return path


def check_options(o, num_train_timesteps=None):
    """UserError for impossible options."""
    for name in ('resolution', 'train_batch_size', 'max_train_steps', 'checkpointing_steps', 'latent_batch_size'):
        if int(o[name]) < 1:
            raise dnnlib.util.UserError(f'--{name} must be >= 1, got {o[name]}')
    if o.resolution % 8:
        raise dnnlib.util.UserError(f'--resolution must be a multiple of 8, got {o.resolution}')
    if o.lora_rank < 0:
        raise dnnlib.util.UserError(f'--lora_rank must be >= 0 (0: full fine-tuning), got {o.lora_rank}')
    if not 0 <= o.caption_token_replace_prob <= 1:
        raise dnnlib.util.UserError(f'--caption_token_replace_prob must lie in [0, 1], got {o.caption_token_replace_prob}')
    if o.text_embedding_noise < 0 or (o.wen_threshold is not None and o.wen_threshold < 0):
        raise dnnlib.util.UserError('--text_embedding_noise and --wen_threshold must be >= 0')
    if num_train_timesteps is not None:
        try:
            t2i_loss.check_options(o.prediction_type, o.ambient_timestep, num_train_timesteps, o.ambient_weighting)
        except ValueError as err:
            raise dnnlib.util.UserError(str(err).replace('ambient_timestep', '--ambient_timestep')) from None


def _generator(*key):
    """A CPU generator seeded by a tuple of non-negative ints (SeedSequence mixes them)."""
    import numpy as np # pylint: disable=import-outside-toplevel
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] % (2 ** 63))
    return torch.Generator().manual_seed(seed)


def encode_text(tokenizer, text_encoder, captions, device, replace_prob=0.0, generator=None):
    """Text-encoder hidden states of captions (padded to the tokenizer's length), tokens randomised if asked."""
    ids = tokenizer(captions, padding='max_length', max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors='pt').input_ids
    ids = mitigations.replace_tokens(ids, replace_prob, len(tokenizer), tokenizer.all_special_ids, generator)
    return text_encoder(ids.to(device), return_dict=False)[0]


def _trainable_state(unet, lora):
    """The weights a checkpoint stores: the LoRA layers (peft names) or the whole UNet."""
    if lora:
        from peft.utils import get_peft_model_state_dict # pylint: disable=import-outside-toplevel
        return get_peft_model_state_dict(unet)
    return unet.state_dict()


def save_checkpoint(path, unet, optimizer, scaler, step, lora):
    """checkpoint-N/: trainable weights (safetensors), optimizer (and grad scaler) state, state.json; atomic."""
    import safetensors.torch # pylint: disable=import-outside-toplevel
    with dnnlib.util.atomic_output(path) as tmp:
        os.makedirs(tmp)
        state = {k: v.detach().contiguous().cpu() for k, v in _trainable_state(unet, lora).items()}
        safetensors.torch.save_file(state, os.path.join(tmp, 'weights.safetensors'))
        torch.save(dict(optimizer=optimizer.state_dict(), scaler=(scaler.state_dict() if scaler is not None else None)),
                   os.path.join(tmp, 'optimizer.pt'))
        with open(os.path.join(tmp, 'state.json'), 'w', encoding='utf-8') as f:
            json.dump(dict(step=step, lora=bool(lora)), f)


def load_checkpoint(path, unet, optimizer, scaler, lora):
    """Restore what save_checkpoint wrote; returns the step."""
    import safetensors.torch # pylint: disable=import-outside-toplevel
    with open(os.path.join(path, 'state.json'), encoding='utf-8') as f:
        state = json.load(f)
    if bool(state.get('lora')) != bool(lora):
        raise dnnlib.util.UserError(f'{path} is a {"LoRA" if state.get("lora") else "full fine-tuning"} checkpoint; '
                                    '--lora_rank must match the run that wrote it')
    weights = safetensors.torch.load_file(os.path.join(path, 'weights.safetensors'))
    if lora:
        from peft.utils import set_peft_model_state_dict # pylint: disable=import-outside-toplevel
        result = set_peft_model_state_dict(unet, weights)
        if getattr(result, 'unexpected_keys', None):
            raise dnnlib.util.UserError(f'{path}: LoRA weights do not match this --lora_rank / model')
    else:
        unet.load_state_dict(weights, strict=True)
    opt = torch.load(os.path.join(path, 'optimizer.pt'), map_location='cpu', weights_only=True)
    optimizer.load_state_dict(opt['optimizer'])
    if scaler is not None and opt.get('scaler') is not None:
        scaler.load_state_dict(opt['scaler'])
    return int(state['step'])


def save_final(o, unet, c, lora):
    """Write the fine-tuned model into output_dir: LoRA weights, or a whole StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline # pylint: disable=import-outside-toplevel
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers # pylint: disable=import-outside-toplevel
        from peft.utils import get_peft_model_state_dict # pylint: disable=import-outside-toplevel
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        with tempfile.TemporaryDirectory(dir=o.output_dir) as tmpdir:
            StableDiffusionPipeline.save_lora_weights(tmpdir, unet_lora_layers=layers, safe_serialization=True)
            for name in os.listdir(tmpdir):
                with open(os.path.join(tmpdir, name), 'rb') as f:
                    dnnlib.util.atomic_write_bytes(os.path.join(o.output_dir, name), f.read())
        return
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=unet,
                                   scheduler=c.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    # Each component folder atomically, model_index.json last: a partial output never loads as a pipeline.
    index = os.path.join(o.output_dir, 'model_index.json')
    if os.path.exists(index):
        os.remove(index)
    for name in ('vae', 'text_encoder', 'tokenizer', 'unet', 'scheduler'):
        dest = os.path.join(o.output_dir, name)
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        with dnnlib.util.atomic_output(dest) as tmp:
            getattr(pipe, name).save_pretrained(tmp)
    with tempfile.TemporaryDirectory(dir=o.output_dir) as tmpdir:
        pipe.save_config(tmpdir)
        with open(os.path.join(tmpdir, 'model_index.json'), 'rb') as f:
            dnnlib.util.atomic_write_bytes(index, f.read())


def finetune(**kwargs):
    """Run (or resume) a fine-tuning run; returns the final step. Options as in DEFAULTS / the CLI."""
    from accelerate import Accelerator # pylint: disable=import-outside-toplevel
    o = dnnlib.EasyDict(DEFAULTS)
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise TypeError(f'unknown options {sorted(unknown)}')
    o.update(kwargs)
    if not o.pretrained_model_name_or_path or not o.train_data_dir:
        raise dnnlib.util.UserError('--pretrained_model_name_or_path and --train_data_dir are required')
    check_options(o)
    accelerator = Accelerator(mixed_precision=o.mixed_precision)
    log = accelerator.print
    items = t2i_data.read_metadata(o.train_data_dir, o.caption_column, o.max_train_samples)
    c = models.load_sd_components(o.pretrained_model_name_or_path, o.prediction_type)
    o.prediction_type = c.noise_scheduler.config.prediction_type
    num_train_timesteps = c.noise_scheduler.config.num_train_timesteps
    check_options(o, num_train_timesteps)
    lora = o.lora_rank > 0
    weight_dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    device = accelerator.device
    for m in (c.vae, c.text_encoder):
        m.requires_grad_(False)
        m.to(device)
        if weight_dtype != torch.float32:
            m.to(dtype=weight_dtype)
    if lora:
        from peft import LoraConfig # pylint: disable=import-outside-toplevel
        c.unet.requires_grad_(False)
        c.unet.add_adapter(LoraConfig(r=o.lora_rank, lora_alpha=o.lora_rank, init_lora_weights='gaussian',
                                      target_modules=LORA_TARGETS))
    c.unet.to(device)
    c.unet.train()
    params = [p for p in c.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.learning_rate, betas=(o.adam_beta1, o.adam_beta2),
                                  weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)

    if accelerator.is_main_process:
        os.makedirs(o.output_dir, exist_ok=True)
        dnnlib.util.atomic_write_bytes(os.path.join(o.output_dir, 'args.json'), json.dumps(dict(o), indent=2).encode())
    accelerator.wait_for_everyone()
    # The VAE latents of the training images, once (main process first; the others read its cache).
    with accelerator.main_process_first():
        latents_all = t2i_data.cached_latents(os.path.join(o.output_dir, 'latents.safetensors'), c.vae, items,
                                              o.pretrained_model_name_or_path, o.resolution, device,
                                              o.latent_batch_size, weight_dtype, log=log)
    c.vae.to('cpu') # Not needed for training any more.
    latent_shape = tuple(latents_all.shape[1:])
    captions = [caption for _, caption in items]
    uncond = None

    unet, optimizer = accelerator.prepare(c.unet, optimizer)
    raw_unet = accelerator.unwrap_model(unet)
    scaler = getattr(accelerator, 'scaler', None)
    step = 0
    resume = resolve_resume(o.output_dir, o.resume_from_checkpoint)
    if resume is not None:
        step = load_checkpoint(resume, raw_unet, optimizer, scaler, lora)
        log(f'Resumed from {resume} at step {step}')
    log_path = os.path.join(o.output_dir, 'logs.jsonl')
    if accelerator.is_main_process and os.path.isfile(log_path): # Steps after the checkpoint are trained again.
        with open(log_path, encoding='utf-8') as f:
            lines = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
        dnnlib.util.atomic_write_bytes(log_path, ''.join(lines).encode())
    alphas_cumprod = c.noise_scheduler.alphas_cumprod
    world, rank, B = accelerator.num_processes, accelerator.process_index, o.train_batch_size
    while step < o.max_train_steps:
        idx = t2i_data.batch_indices(o.seed, step, B * world, len(items))[rank * B:(rank + 1) * B]
        g = _generator(o.seed, step, rank)
        timesteps = torch.randint(0, num_train_timesteps, [B], generator=g)
        noise = torch.randn([B, *latent_shape], generator=g)
        latents = latents_all[idx]
        tn = t2i_data.tn_noise(o.noise_seed, idx.tolist(), latent_shape) if o.ambient_timestep > 0 else None
        batch = t2i_loss.prepare(latents.to(device), None if tn is None else tn.to(device), timesteps.to(device),
                                 noise.to(device), alphas_cumprod, o.ambient_timestep)
        with torch.no_grad():
            emb = encode_text(c.tokenizer, c.text_encoder, [captions[i] for i in idx.tolist()], device,
                              o.caption_token_replace_prob, g)
            emb = mitigations.noise_embeddings(emb, o.text_embedding_noise, g)
        with accelerator.autocast():
            pred = unet(batch.x_t, batch_timesteps := timesteps.to(device), emb, return_dict=False)[0]
        keep, magnitude = None, None
        if o.wen_threshold is not None:
            with torch.no_grad(), accelerator.autocast():
                if uncond is None:
                    uncond = encode_text(c.tokenizer, c.text_encoder, [''], device)
                pred_u = unet(batch.x_t, batch_timesteps, uncond.expand(B, -1, -1), return_dict=False)[0]
            a, s = batch.alpha.float(), batch.sigma.float()
            magnitude = mitigations.noise_magnitude(
                t2i_loss.to_epsilon(pred.detach().float(), batch.x_t.float(), a, s, o.prediction_type),
                t2i_loss.to_epsilon(pred_u.float(), batch.x_t.float(), a, s, o.prediction_type))
            keep = mitigations.keep_mask(magnitude, o.wen_threshold)
        loss = t2i_loss.ambient_loss(pred, batch, o.prediction_type, o.ambient_weighting, keep)
        accelerator.backward(loss)
        if accelerator.sync_gradients and o.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, o.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stats = dict(step=step, loss=accelerator.gather(loss.detach().reshape(1)).mean().item(),
                     fraction_noisy=accelerator.gather(batch.noisy.float().mean().reshape(1)).mean().item())
        if keep is not None:
            stats['fraction_kept'] = accelerator.gather(keep.float().mean().reshape(1)).mean().item()
            stats['wen_magnitude'] = accelerator.gather(magnitude.mean().reshape(1)).mean().item()
        if accelerator.is_main_process:
            with open(log_path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(stats) + '\n')
        if step % o.checkpointing_steps == 0 or step == o.max_train_steps:
            if accelerator.is_main_process:
                save_checkpoint(os.path.join(o.output_dir, f'checkpoint-{step}'), raw_unet, optimizer, scaler, step, lora)
                if o.checkpoints_total_limit is not None:
                    for _, old in list_checkpoints(o.output_dir)[:-max(int(o.checkpoints_total_limit), 1)]:
                        shutil.rmtree(old)
                log(f'step {step}: loss {stats["loss"]:.4f}, checkpoint saved')
            accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if weight_dtype != torch.float32: # Save the frozen parts as they were loaded.
            c.vae.to(dtype=torch.float32)
            c.text_encoder.to(dtype=torch.float32)
        save_final(o, raw_unet, c, lora)
        log(f'Saved the fine-tuned model in {o.output_dir}')
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return step
