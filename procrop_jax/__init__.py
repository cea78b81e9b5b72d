"""procrop_jax: aesthetic image cropping guided by professional compositions.

  from procrop_jax import Cropper
  cropper = Cropper.pretrained()          # or Cropper.from_workdir("workdirs/default")
  cropper.crop("photo.jpg", aspect="16:9", top_k=3)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  # Lazy: `import procrop_jax` stays instant (no JAX or TensorFlow) until the cropper is used.
  if name == "Cropper":
    from procrop_jax.cropper import Cropper  # pylint: disable=g-import-not-at-top
    return Cropper
  raise AttributeError(f"module 'procrop_jax' has no attribute {name!r}")
