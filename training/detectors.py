"""Feature detectors for FID and memorization: `inception`, `dinov2` and `pixel`, behind one registry."""

import os
import pickle

import torch

import dnnlib

INCEPTION_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
DINOV2_REPO = 'facebookresearch/dinov2'
DINOV2_DIMS = {'dinov2_vits14': 384, 'dinov2_vitb14': 768, 'dinov2_vitl14': 1024, 'dinov2_vitg14': 1536}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#----------------------------------------------------------------------------

def _check_uint8_nchw(images):
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError('detectors take uint8 NCHW image tensors')


def _to_rgb(images):
    """Repeat a grey channel three times; networks trained on RGB expect three channels."""
    return images.repeat([1, 3, 1, 1]) if images.shape[1] == 1 else images


def pad_to_multiple(x, multiple=14, mode='reflect'):
    """Pad H and W up to a multiple of `multiple`, splitting the padding (extra pixel at the bottom/right)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)


def preprocess_ambient(images):
    """The ambient authors' DINOv2 input: [0, 1] floats, reflect-padded to a multiple of the 14-pixel patch."""
    # Same arithmetic order as the authors' code: [-1, 1], pad, then back to [0, 1].
    x = images.to(torch.float32) / 127.5 - 1
    return (pad_to_multiple(x, 14, mode='reflect') + 1) / 2


def preprocess_standard(images):
    """EDM2's FD_DINOv2 input: bicubic antialiased resize to 224, [0, 1], ImageNet mean/std normalisation."""
    x = torch.nn.functional.interpolate(images.to(torch.float32), size=(224, 224), mode='bicubic', antialias=True)
    x = x / 255
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean) / std

DINOV2_PREPROCESS = {'ambient': preprocess_ambient, 'standard': preprocess_standard}

#----------------------------------------------------------------------------

class InceptionDetector:
    """NVIDIA's Inception-v3 pickle (EDM's FID detector), 2048-dim pool features."""

    name = 'inception'
    preprocess = 'inception'

    def __init__(self, model, device):
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.feature_dim = int(getattr(model, 'feature_dim', 2048))

    @torch.no_grad()
    def __call__(self, images):
        """uint8 NCHW -> float32 [N, feature_dim]."""
        _check_uint8_nchw(images)
        return self.model(_to_rgb(images).to(self.device), return_features=True).to(torch.float32)


class DINOv2Detector:
    """A DINOv2 ViT (class-token features) with the `ambient` or `standard` preprocessing."""

    name = 'dinov2'

    def __init__(self, model, device, preprocess='ambient', feature_dim=None):
        if preprocess not in DINOV2_PREPROCESS:
            raise dnnlib.util.UserError(f'Unknown DINOv2 preprocessing {preprocess!r}; choose {"|".join(DINOV2_PREPROCESS)}')
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.preprocess = preprocess
        self.feature_dim = int(feature_dim or getattr(model, 'embed_dim'))

    @torch.no_grad()
    def __call__(self, images):
        """uint8 NCHW -> float32 [N, feature_dim]."""
        _check_uint8_nchw(images)
        x = DINOV2_PREPROCESS[self.preprocess](_to_rgb(images).to(self.device))
        return self.model(x).to(torch.float32)


class PixelDetector:
    """Raw pixels as features: scaled to [-1, 1], flattened, centred and L2-normalised per image."""

    name = 'pixel'
    preprocess = 'pixel'

    def __init__(self, device='cpu'):
        self.device = torch.device(device)
        self.feature_dim = None # C*H*W; known after the first call.

    @torch.no_grad()
    def __call__(self, images):
        """uint8 NCHW -> float32 [N, C*H*W] unit vectors."""
        _check_uint8_nchw(images)
        x = images.to(self.device, torch.float32).flatten(1) / 127.5 - 1
        x = x - x.mean(dim=1, keepdim=True)
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.feature_dim = x.shape[1]
        return x

#----------------------------------------------------------------------------

def _load_inception(path, device, option, verbose=True):
    source = path or INCEPTION_URL
    how = f'download inception-2015-12-05.pkl elsewhere and pass {option}=/path/to/inception-2015-12-05.pkl'
    try:
        with dnnlib.util.open_url(source, verbose=verbose) as f:
            model = pickle.load(f)
    except dnnlib.util.UserError as e:
        raise dnnlib.util.UserError(f'Cannot load the Inception detector ({e.message}); {how}') from None
    except Exception as e: # pylint: disable=broad-except
        raise dnnlib.util.UserError(f'Cannot unpickle the Inception detector from {source} ({e.__class__.__name__}: {e}); {how}') from None
    if not isinstance(model, torch.nn.Module):
        raise dnnlib.util.UserError(f'{source} does not hold a detector network (found {type(model).__name__}); {how}')
    return InceptionDetector(model, device)


def _dinov2_from_hub(arch, source_dir=None, pretrained=True):
    if source_dir is not None:
        return torch.hub.load(source_dir, arch, source='local', pretrained=pretrained, verbose=False)
    return torch.hub.load(DINOV2_REPO, arch, pretrained=pretrained, trust_repo=True, verbose=False, skip_validation=True)


def in_hub_cache(arch):
    """True when torch.hub can build DINOv2 `arch` from its cache alone (repo and weights present)."""
    hub = torch.hub.get_dir()
    repo = os.path.join(hub, DINOV2_REPO.replace('/', '_') + '_main')
    weights = os.path.join(hub, 'checkpoints', f'{arch}_pretrain.pth')
    return os.path.isdir(repo) and os.path.isfile(weights)


def _load_dinov2(path, device, option, arch='dinov2_vitg14', preprocess='ambient', download=False):
    if arch not in DINOV2_DIMS:
        raise dnnlib.util.UserError(f'Unknown DINOv2 arch {arch!r}; choose {"|".join(DINOV2_DIMS)}')
    how = (f'pass {option}=PATH (a local clone of {DINOV2_REPO} holding the weights, or a {arch}_pretrain.pth '
           f'state dict with that repo in the torch hub cache), or prefill the torch hub cache ({torch.hub.get_dir()}) '
           f'online: python -c "import torch; torch.hub.load(\'{DINOV2_REPO}\', \'{arch}\')"')
    # Offline, torch.hub would try the network and may hang behind a proxy: refuse at once instead.
    if path is None and not download and not in_hub_cache(arch):
        raise dnnlib.util.UserError(f'DINOv2 {arch} is not in the torch hub cache; {how}')
    try:
        if path is None:
            model = _dinov2_from_hub(arch)
        elif os.path.isdir(path):
            model = _dinov2_from_hub(arch, source_dir=path)
        elif os.path.isfile(path):
            state = torch.load(path, map_location='cpu', weights_only=True)
            if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
                state = state['model']
            model = _dinov2_from_hub(arch, pretrained=False)
            model.load_state_dict(state, strict=True)
        else:
            raise FileNotFoundError(f'no such file or directory: {path}')
    except dnnlib.util.UserError:
        raise
    except Exception as e: # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise dnnlib.util.UserError(f'Cannot load DINOv2 {arch} ({e.__class__.__name__}: {first}); {how}') from None
    return DINOv2Detector(model, device, preprocess=preprocess, feature_dim=DINOV2_DIMS[arch])


def weights_cached(name, arch='dinov2_vitg14', **_opts):
    """Whether detector `name`'s default weights are on disk already, so that loading it needs no internet."""
    if name == 'inception':
        return dnnlib.util.cached_url_path(INCEPTION_URL) is not None
    if name == 'dinov2':
        return in_hub_cache(arch)
    return True


def load_detector(name, path=None, device='cpu', option='--detector', **opts):
    """Return the detector `name` (inception|dinov2|pixel); `path` is a local weights file instead of the download.

    opts: dinov2 takes arch= (dinov2_vitg14 default, dinov2_vitl14, ...), preprocess= (ambient|standard) and
    download= (let torch.hub fetch what its cache lacks); inception takes verbose=. Raises UserError, saying how
    to provide the weights (through the CLI option named by `option`), when they cannot be loaded.
    """
    if name == 'inception':
        return _load_inception(path, device, option, **opts)
    if name == 'dinov2':
        return _load_dinov2(path, device, option, **opts)
    if name == 'pixel':
        if path is not None or opts:
            raise dnnlib.util.UserError('The pixel detector takes no weights or options')
        return PixelDetector(device)
    raise dnnlib.util.UserError(f'Unknown detector {name!r}; choose inception|dinov2|pixel')

#----------------------------------------------------------------------------
