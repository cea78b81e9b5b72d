"""Weak-label generation (ProCrop's composition-aware dataset, CAD).

Professional photos are placed in larger canvases, the margin is out-painted, and the
photo's frame becomes the pseudo-label crop. See `generate.generate_cad`.
"""

from procrop_jax.cad.generate import CanvasPlan
from procrop_jax.cad.generate import generate_cad
from procrop_jax.cad.generate import GenerationReport
from procrop_jax.cad.generate import plan_canvas
from procrop_jax.cad.outpaint import OutPainter
from procrop_jax.cad.outpaint import ReflectBlurOutPainter
from procrop_jax.cad.sources import photo_paths
