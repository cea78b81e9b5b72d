"""BlazeFace in JAX: the .tflite reader, and faces found (or not) on bundled photos."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
import skimage.data

from procrop_jax import box_geometry
from procrop_jax import face_net
from procrop_jax.weights import tflite


def _canvas(photo: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
  """The photo's longer side resized to `side`, at the top left of a side x side canvas."""
  h, w = photo.shape[:2]
  s = side / max(h, w)
  nh, nw = round(h * s), round(w * s)
  canvas = np.zeros((side, side, 3), np.uint8)
  canvas[:nh, :nw] = np.asarray(Image.fromarray(photo).resize((nw, nh), Image.BILINEAR))
  return canvas, np.array([nh, nw])


@pytest.fixture(scope="module")
def detect():
  return face_net.detector("full")


def test_reader_reads_the_full_range_graph():
  model = tflite.read(face_net.model_path("full"))
  assert len(model.tensors) == 544
  assert [model.tensors[i].shape for i in model.inputs] == [(1, 192, 192, 3)]
  assert [model.tensors[i].shape for i in model.outputs] == [(1, 2304, 16), (1, 2304, 1)]
  ops = [o.op for o in model.operators]
  assert ops.count("CONV_2D") == 49 and ops.count("DEPTHWISE_CONV_2D") == 40
  first_conv = model.operators[ops.index("CONV_2D")]
  assert model.tensors[first_conv.inputs[1]].shape == (32, 3, 3, 3)
  assert first_conv.options["stride_h"] == 2


def test_astronaut_face_is_found(detect):
  canvas, valid = _canvas(skimage.data.astronaut(), 192)
  boxes, scores = detect(jnp.asarray(canvas[None]), jnp.asarray(valid[None]))
  assert boxes.shape == (1, 16, 4) and scores.shape == (1, 16)
  assert float(scores[0, 0]) > 0.75
  # Her face, hand-checked on the 512 x 512 photo: x 170-250, y 60-165 (192 / 512 scale).
  face = np.array([170, 60, 250, 165]) * 192 / 512
  assert box_geometry.pairwise_box_iou(np.asarray(boxes[0, :1]), face[None])[0, 0] > 0.5
  assert int((np.asarray(scores[0]) > 0.5).sum()) == 1


def test_no_face_in_coffee_or_a_gradient(detect):
  coffee, valid = _canvas(skimage.data.coffee(), 192)
  ramp = np.broadcast_to(np.linspace(0, 255, 192, dtype=np.uint8)[None, :, None], (192, 192, 3))
  _, scores = detect(jnp.asarray(np.stack([coffee, ramp])),
                     jnp.asarray(np.stack([valid, [192, 192]])))
  assert float(scores.max()) == 0.0  # Below the 0.5 threshold every slot is empty.


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
  missing = tmp_path / "nothing.tflite"
  with pytest.raises(tflite.TFLiteError, match="nothing.tflite"):
    tflite.read(missing)
  corrupt = tmp_path / "corrupt.tflite"
  corrupt.write_bytes(b"\x18\x00\x00\x00TFL3" + b"\xff" * 40)
  with pytest.raises(tflite.TFLiteError, match="corrupt.tflite"):
    face_net.load(path=corrupt)
  with pytest.raises(tflite.TFLiteError, match="not a valid"):
    tflite.read(_write(tmp_path / "text.tflite", b"hello, not a model"))


def _write(path, data):
  path.write_bytes(data)
  return path


def test_detection_imports_no_tensorflow():
  code = ("import sys, numpy as np\n"
          "from procrop_jax import face_net\n"
          "face_net.detector('full')(np.zeros((1, 64, 64, 3), np.uint8), None)\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_loading_the_model_compiles_nothing():
  """The weights go to the device in one transfer: a program compiled per weight shape cost a
  warm `procrop crop` 0.8 s on 2 cores."""
  compiled = []

  def listener(name, secs, **kwargs):
    del secs, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
      compiled.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    net = face_net.load("full")
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiled
  assert all(isinstance(v, jax.Array) and v.dtype == jnp.float32 for v in net.params.values())


def test_sides_that_are_not_multiples_of_32_are_refused():
  net = face_net.FaceNet((), {}, 0, (0, 0), (4,), (1,))
  for shape in ((1, 100, 64, 3), (1, 400, 384, 3)):
    with pytest.raises(ValueError, match="multiples of 32"):
      face_net.detect(net, {}, jnp.zeros(shape))


def test_any_side_that_is_a_multiple_of_32_runs(detect):
  for height, width in ((416, 416), (160, 192), (288, 384)):
    boxes, scores = detect(np.zeros((1, height, width, 3), np.uint8), None)
    assert boxes.shape == (1, 16, 4) and float(scores.max()) == 0.0


def test_only_the_full_range_model_ships():
  assert face_net.model_path("full").is_file()
  with pytest.raises(FileNotFoundError, match="not shipped"):
    face_net.model_path("short")
  with pytest.raises(ValueError, match="Unknown face model"):
    face_net.model_path("tiny")
