"""Tests for training/augment.py: identities, exact blits, label layout, noise statistics, channel stacking, pickling."""

import pickle

import pytest
import torch

from training.augment import AugmentPipe

EDM_DEFAULT = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)  # train.py --augment
LABEL_WIDTH = dict(xflip=1, yflip=1, rotate_int=2, translate_int=2, scale=1, rotate_frac=2, aniso=2,
                   translate_frac=2, brightness=1, contrast=1, lumaflip=1, hue=2, saturation=1)
ALL_ON = {name: 1 for name in LABEL_WIDTH}


def run(pipe, images, seed=0):
    torch.manual_seed(seed)
    return pipe(images)


def noise_stats(images, border=8):
    """Mean, variance and horizontal lag-1 correlation of the interior of a noise batch."""
    x = images[:, :, border:-border, border:-border].double()
    x = x - x.mean()
    return float(x.mean()), float(x.var()), float((x[..., 1:] * x[..., :-1]).mean() / x.var())


def test_disabled_pipe_returns_its_input_and_draws_nothing():
    images = torch.randn([4, 3, 8, 8])
    torch.manual_seed(0)
    state = torch.get_rng_state()
    out, labels = AugmentPipe()(images)
    assert torch.equal(out, images) and labels.shape == (4, 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_zero_probability_is_identity_with_zero_labels():
    images = torch.rand([4, 3, 16, 16]) * 2 - 1
    out, labels = run(AugmentPipe(p=0, **ALL_ON), images)
    # The geometric path still runs (identity warp through the wavelet filters), so allow float error.
    torch.testing.assert_close(out, images, rtol=0, atol=1e-4)
    assert labels.shape == (4, 19) and torch.equal(labels, torch.zeros_like(labels))


def test_xflip_flips_exactly_and_labels_say_which():
    images = torch.randn([16, 3, 8, 8])
    out, labels = run(AugmentPipe(p=1, xflip=1), images)
    assert labels.shape == (16, 1)
    flipped = labels[:, 0] == 1
    assert 0 < int(flipped.sum()) < 16 and set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert torch.equal(out[flipped], images[flipped].flip(3))
    assert torch.equal(out[~flipped], images[~flipped])


def test_rotate_int_gives_quarter_turns_identified_by_the_labels():
    images = torch.randn([24, 1, 6, 6])
    out, labels = run(AugmentPipe(rotate_int=1), images)
    turns = {}
    for x, y, label in zip(images, out, labels.tolist()):
        k, = [k for k in range(4) if torch.equal(y, torch.rot90(x, k, dims=(1, 2)))]
        assert turns.setdefault(tuple(label), k) == k  # one label pair per quarter turn
    assert sorted(turns.values()) == [0, 1, 2, 3]


def test_translate_int_moves_the_content_by_the_labelled_offset():
    H = W = 16
    images = torch.randn([8, 2, H, W])
    pipe = AugmentPipe(translate_int=1, translate_int_max=0.25)
    out, labels = run(pipe, images)
    shifts = (labels * W * 0.25).round().long().tolist()
    assert any(tx != 0 or ty != 0 for tx, ty in shifts)
    for x, y, (tx, ty) in zip(images, out, shifts):
        # Content moves right by tx and up by ty; check where source and target both lie inside the frame.
        rows, cols = slice(max(0, -ty), H - max(0, ty)), slice(max(0, tx), W + min(0, tx))
        src_rows, src_cols = slice(rows.start + ty, rows.stop + ty), slice(cols.start - tx, cols.stop - tx)
        assert torch.equal(y[:, rows, cols], x[:, src_rows, src_cols])


@pytest.mark.parametrize('options', [dict(xflip=1, yflip=1, rotate_int=1), dict(translate_int=1)])
def test_pixel_blitting_keeps_white_noise_white(options):
    noise = torch.randn([16, 1, 64, 64])
    mean, var, lag = noise_stats(run(AugmentPipe(**options), noise)[0])
    _, ref_var, _ = noise_stats(noise)
    assert abs(mean) < 0.02 and abs(var / ref_var - 1) < 0.02 and abs(lag) < 0.02


@pytest.mark.parametrize('options', [dict(rotate_frac=1), dict(scale=1), dict(translate_frac=1)])
def test_fractional_resampling_colours_white_noise(options):
    noise = torch.randn([16, 1, 64, 64])
    mean, var, lag = noise_stats(run(AugmentPipe(**options), noise)[0])
    assert abs(mean) < 0.05 and var < 0.85 and lag > 0.1


def test_orthogonal_colour_ops_keep_rgb_noise_white_and_contrast_does_not():
    noise = torch.randn([8, 3, 32, 32])
    out, _ = run(AugmentPipe(lumaflip=1, hue=1), noise)
    pixels = out.permute(1, 0, 2, 3).reshape(3, -1).double()
    torch.testing.assert_close(torch.cov(pixels), torch.eye(3, dtype=torch.float64), rtol=0, atol=0.03)
    out, labels = run(AugmentPipe(contrast=1), noise)
    gain = (labels[:, 0] * 0.5).exp2()
    torch.testing.assert_close(out.flatten(1).std(dim=1) / noise.flatten(1).std(dim=1), gain, rtol=1e-4, atol=0)


def test_brightness_adds_the_labelled_offset():
    images = torch.rand([6, 3, 8, 8])
    out, labels = run(AugmentPipe(brightness=1, brightness_std=0.3), images)
    torch.testing.assert_close(out - images, (labels[:, 0] * 0.3).reshape(6, 1, 1, 1).expand_as(images))


@pytest.mark.parametrize('name', list(LABEL_WIDTH))
def test_each_option_adds_its_label_width(name):
    out, labels = run(AugmentPipe(**{name: 1}), torch.rand([2, 3, 8, 8]))
    assert out.shape == (2, 3, 8, 8) and labels.shape == (2, LABEL_WIDTH[name]) and labels.dtype == torch.float32


def test_edm_default_config_has_nine_labels():
    out, labels = run(AugmentPipe(p=0.12, **EDM_DEFAULT), torch.rand([4, 3, 16, 16]))
    assert labels.shape == (4, 9)


@pytest.mark.parametrize('channels', [1, 3])
def test_channel_stacked_tensors_share_one_augmentation(channels):
    # The ambient loss augments a clean image and its fixed noisy copy together by concatenating channels.
    a, b = torch.rand([4, channels, 16, 16]), torch.randn([4, channels, 16, 16])
    pipe = AugmentPipe(**ALL_ON)
    out_a, labels_a = run(pipe, a, seed=7)
    out_b, _ = run(pipe, b, seed=7)
    out_ab, labels_ab = run(pipe, torch.cat([a, b], dim=1), seed=7)
    torch.testing.assert_close(out_ab, torch.cat([out_a, out_b], dim=1), rtol=0, atol=1e-6)
    assert torch.equal(labels_ab, labels_a)


def test_luminance_channels_see_lumaflip_as_negation():
    images = torch.rand([8, 2, 4, 4])
    out, labels = run(AugmentPipe(lumaflip=1, hue=1, saturation=1), images)
    sign = 1 - 2 * labels[:, 0].reshape(8, 1, 1, 1)
    torch.testing.assert_close(out, images * sign, rtol=0, atol=1e-5)


def test_pickle_round_trip_keeps_settings_and_draws():
    pipe = AugmentPipe(p=0.7, **EDM_DEFAULT)
    clone = pickle.loads(pickle.dumps(pipe))
    assert clone is not pipe and clone.p == 0.7 and clone.aniso == 1.0 and clone.xflip == 1e8
    images = torch.rand([3, 3, 16, 16])
    out, labels = run(pipe, images, seed=9)
    out2, labels2 = run(clone, images, seed=9)
    assert torch.equal(out, out2) and torch.equal(labels, labels2)


# NVIDIA EDM's AugmentPipe (training/augment.py at commit 0a2ff34) run on the input below with
# torch.manual_seed(0), p=0.8 and every option on, torch 2.13 CPU: labels, per-channel sums, pixel (2, 5).
EDM_LABELS = [
    [0.0, 1.0, 1.0, 0.0, -1.0, 0.0, -0.2613142132759094, 0.0, 0.0, 0.4808427095413208, 0.9572004675865173,
     0.0, 0.0, 0.19186942279338837, -0.6859184503555298, 1.0, -1.153243899345398, 0.9881883859634399,
     -2.2187793254852295],
    [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -0.054746150970458984, 0.3263360559940338, 0.1227012425661087, 0.0,
     -0.6708600521087646, -0.4319688677787781, 1.2637947797775269, -1.5051417350769043, 0.0,
     -0.07759076356887817, -0.3862139880657196, 0.0],
]
EDM_CHANNEL_SUMS = [[25.097833454608917, 19.282789722085, 23.815627574920654],
                    [13.888190895318985, 32.0548021197319, 33.72425892949104]]
EDM_PIXELS = [[0.4360159933567047, 0.3484566807746887, 0.4159291386604309],
              [0.16950610280036926, 0.46326857805252075, 0.49377790093421936]]


def test_matches_edm_numbers_for_the_same_seed():
    images = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8).sin()
    out, labels = run(AugmentPipe(p=0.8, **ALL_ON), images, seed=0)
    torch.testing.assert_close(labels, torch.tensor(EDM_LABELS), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.double().sum(dim=(2, 3)), torch.tensor(EDM_CHANNEL_SUMS, dtype=torch.float64), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, :, 2, 5], torch.tensor(EDM_PIXELS), rtol=0, atol=1e-5)
