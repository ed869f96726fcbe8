"""framelab: a Lightning + Hydra template for video LLMs and set-autoregressive image generation."""
__version__ = "0.1.0"
