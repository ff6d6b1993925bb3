"""python -m ambient.finetune_t2i end to end on tiny random Stable Diffusion parts: train, checkpoint, resume, load."""

import json
import os

import pytest
import torch

pytest.importorskip('diffusers')
pytest.importorskip('peft')

from ambient.t2i import tiny, train  # pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp('t2i')
    return dict(model=tiny.write_tiny_pipeline(str(root / 'tiny-sd')), data=tiny.write_digits_folder(str(root / 'digits'), num_images=12))


def _opts(assets, out, **kw):
    return dict(dict(pretrained_model_name_or_path=assets['model'], train_data_dir=assets['data'], output_dir=str(out),
                     resolution=32, train_batch_size=3, max_train_steps=4, checkpointing_steps=2, learning_rate=1e-3,
                     ambient_timestep=50, noise_seed=1), **kw)


def _logs(out):
    with open(os.path.join(out, 'logs.jsonl'), encoding='utf-8') as f:
        return [json.loads(line) for line in f]


def test_full_finetune_resume_and_pipeline_load(assets, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert train.finetune(**_opts(assets, straight)) == 4
    assert train.finetune(**_opts(assets, resumed, max_train_steps=2)) == 2
    assert train.finetune(**_opts(assets, resumed, resume_from_checkpoint='latest')) == 4
    # Exact resume: same losses, same final weights.
    a, b = _logs(straight), _logs(resumed)
    assert [r['step'] for r in b] == [1, 2, 3, 4]
    assert [r['loss'] for r in a] == pytest.approx([r['loss'] for r in b], rel=1e-5)
    assert all(0 < r['fraction_noisy'] <= 1 for r in a) # t_n = 50 of 1000: most timesteps are noisy.
    ua = UNet2DConditionModel.from_pretrained(straight / 'unet').state_dict()
    ub = UNet2DConditionModel.from_pretrained(resumed / 'unet').state_dict()
    base = UNet2DConditionModel.from_pretrained(assets['model'], subfolder='unet').state_dict()
    assert all(torch.allclose(ua[k], ub[k], atol=1e-6) for k in ua)
    assert any(not torch.equal(ua[k], base[k]) for k in ua)
    assert sorted(p.name for p in straight.glob('checkpoint-*')) == ['checkpoint-2', 'checkpoint-4']
    pipe = StableDiffusionPipeline.from_pretrained(straight)
    images = pipe(['a handwritten digit 3'], num_inference_steps=2, height=32, width=32, output_type='np').images
    assert images.shape == (1, 32, 32, 3)


def test_lora_weights_load(assets, tmp_path):
    from diffusers import StableDiffusionPipeline
    out = tmp_path / 'lora'
    train.finetune(**_opts(assets, out, lora_rank=4, max_train_steps=2, ambient_timestep=0, learning_rate=1e-2))
    assert (out / 'pytorch_lora_weights.safetensors').is_file()
    assert not (out / 'model_index.json').exists()
    pipe = StableDiffusionPipeline.from_pretrained(assets['model'])
    x, t, e = torch.randn([1, 4, 16, 16]), torch.tensor([500]), torch.randn([1, 32, 32])
    with torch.no_grad():
        before = pipe.unet(x, t, e).sample
        pipe.load_lora_weights(str(out))
        after = pipe.unet(x, t, e).sample
    assert not torch.allclose(before, after)


def test_wen_threshold_drops_samples(assets, tmp_path):
    out = tmp_path / 'wen'
    train.finetune(**_opts(assets, out, max_train_steps=1, wen_threshold=0.0, caption_token_replace_prob=0.5,
                           text_embedding_noise=0.1))
    (row,) = _logs(out)
    assert row['fraction_kept'] == 0 and row['loss'] == 0 and row['wen_magnitude'] > 0


def test_cli_errors_are_one_line(assets, tmp_path):
    from click.testing import CliRunner
    from ambient import finetune_t2i
    runner = CliRunner()
    res = runner.invoke(finetune_t2i.main, ['--pretrained_model_name_or_path', str(tmp_path / 'missing'),
                                            '--train_data_dir', assets['data'], '--output_dir', str(tmp_path / 'o')])
    assert res.exit_code == 1 and 'Error: Cannot load' in res.output and 'Traceback' not in res.output
    res = runner.invoke(finetune_t2i.main, ['--pretrained_model_name_or_path', assets['model'], '--train_data_dir',
                                            assets['data'], '--output_dir', str(tmp_path / 'o'), '--ambient_timestep', '1000'])
    assert res.exit_code == 1 and 'ambient_timestep' in res.output
    res = runner.invoke(finetune_t2i.main, ['--pretrained_model_name_or_path', assets['model'], '--train_data_dir',
                                            str(tmp_path), '--output_dir', str(tmp_path / 'o')])
    assert res.exit_code == 1 and 'metadata.jsonl' in res.output
