"""python -m ambient.evaluate_t2i offline: tiny pipeline, tiny random CLIP, pixel features."""

import json

import pytest
import torch

pytest.importorskip('diffusers')

from ambient.t2i import evaluate, tiny  # pylint: disable=wrong-import-position


def _tiny_clip(path):
    from transformers import CLIPConfig, CLIPModel
    tok = tiny.tiny_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_evaluate_offline(tmp_path):
    from click.testing import CliRunner
    from ambient import evaluate_t2i
    model = tiny.write_tiny_pipeline(str(tmp_path / 'sd'))
    data = tiny.write_digits_folder(str(tmp_path / 'digits'), num_images=4)
    clip = _tiny_clip(tmp_path / 'clip')
    args = ['--model', model, '--train_data_dir', data, '--outdir', str(tmp_path / 'eval'), '--resolution', '8',
            '--num_inference_steps', '2', '--detector', 'pixel', '--fid_detector', 'pixel', '--clip_model', clip]
    res = CliRunner().invoke(evaluate_t2i.main, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert metrics['num_images'] == 4 and len(list((tmp_path / 'eval' / 'images').glob('*.png'))) == 4
    assert -1 <= metrics['similarity_mean'] <= metrics['similarity_p95'] <= 1
    assert -1 <= metrics['clip_score'] <= 1 and metrics['fid'] >= 0
    # The FD of a set to itself is 0 (up to sqrtm's accuracy on singular covariances).
    train = evaluate.t2i_data.load_images_uint8(evaluate.t2i_data.read_metadata(data), 8)
    from training import detectors
    assert evaluate.frechet(train, train, detectors.load_detector('pixel')) == pytest.approx(0, abs=0.05) # 4 images: singular covariances
    # Offline, an unknown hub id fails in one line.
    res = CliRunner().invoke(evaluate_t2i.main, ['--model', str(tmp_path / 'nope'), '--train_data_dir', data, '--outdir', str(tmp_path / 'e2')])
    assert res.exit_code == 1 and 'Error: Cannot load' in res.output and 'Traceback' not in res.output
