"""Out-painters: fill a larger canvas around a photo.

`OutPainter` is the interface (a diffusion out-painter, as in ProCrop's CAD set, would
implement it); `ReflectBlurOutPainter` is a classical one that needs no weights and
runs on a CPU in about a quarter of a second per canvas of a 640-pixel photo.
"""

from __future__ import annotations

import abc

import numpy as np
from PIL import Image
from PIL import ImageFilter
from scipy import ndimage


class OutPainter(abc.ABC):
  """Fills the margin of a canvas around a photo."""

  @abc.abstractmethod
  def __call__(self, photo: np.ndarray, *, canvas_hw: tuple[int, int],
               offset_yx: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Returns the out-painted canvas.

    Args:
      photo: uint8 [h, w, 3].
      canvas_hw: (H, W) of the canvas, H >= h + top and W >= w + left.
      offset_yx: (top, left) of the photo in the canvas.
      rng: randomness for this canvas (out-painters must be deterministic given it).

    Returns:
      uint8 [H, W, 3]. The caller pastes the photo back over its frame, so an
      out-painter may change those pixels, but should keep the seam soft.
    """


def _pyramid_level(image: Image.Image, level: int) -> np.ndarray:
  """`image` blurred by about 2**level pixels: shrunk, smoothed, enlarged back.

  Far cheaper than a full-size Gaussian of the same width, and the fill is blurred
  anyway.
  """
  if level == 0:
    return np.asarray(image)
  factor = 2 ** level
  small = image.reduce(factor) if min(image.size) >= 2 * factor else image.resize((2, 2))
  small = small.filter(ImageFilter.GaussianBlur(1.0))
  return np.asarray(small.resize(image.size, Image.Resampling.BILINEAR))


def _matched_noise(pyramid: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
  """Noise in place of the detail that blurring removes, one array per pyramid band.

  Band j is the detail between blur levels j - 1 and j (`pyramid[j - 1] - pyramid[j]`). Its noise
  is the same band of one white-noise image, scaled at every pixel and channel to the band's
  local strength (its root mean square over a neighbourhood a few times the band's scale): as
  much detail, at the same scales and in the same places, with none of its structure.
  """
  height, width = pyramid[0].shape[:2]
  white = 128 + 40 * rng.standard_normal((height, width))
  white = Image.fromarray(np.clip(white, 0, 255).astype(np.uint8))
  white_pyramid = [_pyramid_level(white, i).astype(np.float32) for i in range(len(pyramid))]
  noise = []
  for j in range(1, len(pyramid)):
    band = pyramid[j - 1].astype(np.float32) - pyramid[j]
    strength = np.sqrt(ndimage.uniform_filter(band ** 2, size=(2 ** (j + 2), 2 ** (j + 2), 1)))
    unit = white_pyramid[j - 1] - white_pyramid[j]
    noise.append(unit[..., None] / (unit.std() + 1e-6) * strength)
  return noise


class ReflectBlurOutPainter(OutPainter):
  """Mirror the photo into the margin, blur it more the farther out, match colours.

  1. The canvas is filled by mirror-reflecting the photo about its edges, so the fill
     continues the photo's edge pixels exactly: the seam has no step.
  2. The reflection is blurred progressively: the blur's width grows linearly with the
     distance from the photo's frame (`blur_growth` pixels per pixel, drawn per canvas)
     up to `max_blur` times the photo's size, so mirrored objects dissolve into their
     colours. The blur starts at zero on the frame, which keeps the seam soft.
  3. Far from the frame the fill's colours are drawn, per channel, to the mean and
     spread of the photo's border band, so the fill stays colour-matched.
  4. The detail the blur removed is replaced by noise of the same strength, band by band and
     place by place (`detail`, `_matched_noise`), so the fill is as sharp and as grainy as the
     photo around it while the mirrored objects stay dissolved. Without it, the margin's blur
     alone gives the frame away: `seam_probe` finds the pseudo-label from blur statistics
     (experiments/cad/RESULTS.md).
  5. `grain` (the earlier remedy, off by default) adds instead film grain of one strength
     where the fill is blurred; it leaves the coarser bands missing.
  """

  def __init__(self, *, blur_growth: tuple[float, float] = (0.08, 0.2),
               max_blur: float = 0.06, colour_match: float = 0.5, detail: bool = True,
               grain: bool = False):
    self.blur_growth = blur_growth
    self.max_blur = max_blur
    self.colour_match = colour_match
    self.detail = detail
    self.grain = grain

  def __call__(self, photo: np.ndarray, *, canvas_hw: tuple[int, int],
               offset_yx: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    photo = np.asarray(photo, np.uint8)
    h, w = photo.shape[:2]
    big_h, big_w = canvas_hw
    top, left = offset_yx
    pad = ((top, big_h - top - h), (left, big_w - left - w), (0, 0))
    mirrored = np.pad(photo, pad, mode="symmetric")

    size = float(np.sqrt(h * w))
    max_sigma = max(1.0, self.max_blur * size)
    growth = rng.uniform(*self.blur_growth)
    top_level = int(np.ceil(np.log2(1.0 + max_sigma)))
    source = Image.fromarray(mirrored)
    pyramid = [_pyramid_level(source, i) for i in range(top_level + 1)]
    if self.detail:
      noise = _matched_noise(pyramid, rng)
    if self.colour_match > 0:
      band = max(2, int(0.05 * min(h, w)))
      border = np.concatenate([photo[:band].reshape(-1, 3), photo[-band:].reshape(-1, 3),
                               photo[:, :band].reshape(-1, 3),
                               photo[:, -band:].reshape(-1, 3)]).astype(np.float32)
      # The heavily blurred fill's colour statistics, to be matched to the border's.
      coarse = pyramid[-1][::4, ::4].reshape(-1, 3).astype(np.float32)
      gain = border.std(0) / (coarse.std(0) + 1e-3)
      offset = border.mean(0) - coarse.mean(0) * gain
    if self.grain:
      small = photo[::2, ::2].astype(np.float32)
      detail = small[1:-1, 1:-1] - 0.25 * (small[:-2, 1:-1] + small[2:, 1:-1]
                                            + small[1:-1, :-2] + small[1:-1, 2:])
      noise_level = float(np.clip(detail.std() * 0.5, 0.5, 6.0))

    filled = mirrored.copy()
    # The margin as four rectangles (above, below, left, right of the photo): slicing
    # is far cheaper than masking the whole canvas.
    regions = [(slice(0, top), slice(0, big_w)), (slice(top + h, big_h), slice(0, big_w)),
               (slice(top, top + h), slice(0, left)),
               (slice(top, top + h), slice(left + w, big_w))]
    for ys, xs in regions:
      y = np.arange(big_h, dtype=np.float32)[ys]
      x = np.arange(big_w, dtype=np.float32)[xs]
      if not len(y) or not len(x):
        continue
      dy = np.maximum(np.maximum(top - y, y - (top + h - 1)), 0)
      dx = np.maximum(np.maximum(left - x, x - (left + w - 1)), 0)
      sigma = np.minimum(growth * np.hypot(dy[:, None], dx[None, :]), max_sigma)
      level = np.log2(1.0 + sigma)
      region = np.zeros((len(y), len(x), 3), np.float32)
      for i in range(int(level.min()), min(int(level.max()) + 2, top_level + 1)):
        weight = np.clip(1.0 - np.abs(level - i), 0.0, 1.0)[..., None]
        region += weight * pyramid[i][ys, xs]
      if self.colour_match > 0:
        amount = (self.colour_match * sigma / max_sigma)[..., None]
        region += amount * (region * (gain - 1.0) + offset)
      if self.detail:  # Band j is all gone from level j on, and a share of it below that.
        for j in range(1, min(int(level.max()) + 1, top_level) + 1):
          region += np.clip(level - (j - 1), 0.0, 1.0)[..., None] * noise[j - 1][ys, xs]
      if self.grain:
        amount = np.clip(sigma / 2.0, 0.0, 1.0)
        region += (rng.standard_normal(sigma.shape, dtype=np.float32)
                   * (noise_level * amount))[..., None]
      filled[ys, xs] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    return filled
