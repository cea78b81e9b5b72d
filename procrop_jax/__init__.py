"""procrop_jax: aesthetic image cropping guided by professional compositions."""

__version__ = "0.1.0"
