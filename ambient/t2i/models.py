"""Loading Stable Diffusion components through the libraries' normal loading, with one-line errors."""

import dnnlib


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[0] if text else err.__class__.__name__


def load_component(cls, path, subfolder=None, what=None, **kwargs):
    """cls.from_pretrained(path, subfolder=...) (a hub id or a local folder); UserError in one line on failure."""
    try:
        if subfolder is not None:
            kwargs['subfolder'] = subfolder
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError, EnvironmentError, ImportError, KeyError) as err: # Offline, missing, malformed.
        name = what or cls.__name__
        where = f'{path}/{subfolder}' if subfolder else path
        raise dnnlib.util.UserError(f'Cannot load {name} from {where!r} ({err.__class__.__name__}: {_first_line(err)[:300]}); '
                                    'give a local folder, or a hub id with the internet or a filled Hugging Face cache') from None


def load_sd_components(path, prediction_type=None):
    """EasyDict(tokenizer, text_encoder, vae, unet, noise_scheduler) of a Stable Diffusion folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel # pylint: disable=import-outside-toplevel
    from transformers import CLIPTextModel, CLIPTokenizer # pylint: disable=import-outside-toplevel
    c = dnnlib.EasyDict()
    c.noise_scheduler = load_component(DDPMScheduler, path, 'scheduler', 'the noise scheduler')
    if prediction_type is not None:
        c.noise_scheduler.register_to_config(prediction_type=prediction_type)
    c.tokenizer = load_component(CLIPTokenizer, path, 'tokenizer', 'the tokenizer')
    c.text_encoder = load_component(CLIPTextModel, path, 'text_encoder', 'the text encoder')
    c.vae = load_component(AutoencoderKL, path, 'vae', 'the VAE')
    c.unet = load_component(UNet2DConditionModel, path, 'unet', 'the UNet')
    return c


def load_pipeline(path, lora_weights=None, torch_dtype=None):
    """StableDiffusionPipeline from a folder or hub id (safety checker off), with LoRA weights loaded on top if given."""
    from diffusers import StableDiffusionPipeline # pylint: disable=import-outside-toplevel
    kwargs = dict(safety_checker=None, requires_safety_checker=False)
    if torch_dtype is not None:
        kwargs['torch_dtype'] = torch_dtype
    pipe = load_component(StableDiffusionPipeline, path, None, 'the Stable Diffusion pipeline', **kwargs)
    if lora_weights is not None:
        try:
            pipe.load_lora_weights(lora_weights)
        except (OSError, ValueError, KeyError) as err:
            raise dnnlib.util.UserError(f'Cannot load LoRA weights from {lora_weights!r} ({err.__class__.__name__}: {_first_line(err)[:300]})') from None
    return pipe
