"""Text-side memorization mitigations used with the ambient loss in the paper's Table 3.

- Somepalli et al. 2023 ("Understanding and mitigating copying in diffusion models"), training-time caption
  randomisation: `replace_tokens` (random token replacement: each caption token is swapped for a uniformly
  random vocabulary token with probability p; start, end and padding tokens stay) and `noise_embeddings`
  (Gaussian noise N(0, s^2) added to every entry of the text-encoder output).
- Wen et al. 2024 ("Detecting, explaining, and mitigating memorization in diffusion models"), training-time
  mitigation: `noise_magnitude` is their detection metric, the size of the text-conditional part of the noise
  prediction, ||eps(x_t, c) - eps(x_t, "")|| (RMS over the entries); `keep_mask` drops the samples whose
  magnitude exceeds a threshold from the loss.
Only torch is imported here.
"""

import torch


def replace_tokens(input_ids, prob, vocab_size, special_ids, generator=None):
    """Copy of input_ids [B, L] with each non-special token replaced, with probability prob, by a random non-special id."""
    if prob <= 0:
        return input_ids
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype)
    is_special = torch.isin(input_ids.cpu(), special)
    hit = (torch.rand(input_ids.shape, generator=generator) < prob) & ~is_special
    allowed = torch.tensor([i for i in range(vocab_size) if i not in set(special.tolist())], dtype=input_ids.dtype)
    random_ids = allowed[torch.randint(len(allowed), input_ids.shape, generator=generator)]
    return torch.where(hit, random_ids, input_ids.cpu()).to(input_ids.device)


def noise_embeddings(embeddings, std, generator=None):
    """embeddings + std * N(0, 1), one independent draw per entry (drawn on the CPU generator for reproducibility)."""
    if std <= 0:
        return embeddings
    noise = torch.randn(embeddings.shape, generator=generator, dtype=torch.float32).to(embeddings.device, embeddings.dtype)
    return embeddings + std * noise


def noise_magnitude(eps_cond, eps_uncond):
    """Wen et al.'s metric per sample [B]: RMS of eps(x_t, c) - eps(x_t, "") over its entries."""
    return (eps_cond.float() - eps_uncond.float()).flatten(1).pow(2).mean(dim=1).sqrt()


def keep_mask(magnitude, threshold):
    """True for samples kept in the loss: magnitude <= threshold (None keeps all)."""
    if threshold is None:
        return torch.ones_like(magnitude, dtype=torch.bool)
    return magnitude <= threshold
