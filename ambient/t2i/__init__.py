"""Text-to-image half: Ambient Diffusion's high-noise trick for Stable Diffusion fine-tuning (paper Appendix B).

Built on diffusers / transformers / accelerate / peft, which are imported lazily inside the functions that need
them, so `import ambient` and the EDM half never require them. `ambient.t2i.loss` needs only torch.
"""
