"""PyTorch helpers: persistence (EDM pickle format), misc, distributed context, training stats."""
