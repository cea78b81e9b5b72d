"""`procrop crop` end to end on a trained tiny run: outputs, statuses, scores, compilations."""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import urllib.parse

import numpy as np
from PIL import Image
from PIL import ImageCms
import pytest

from procrop_jax import crop
from procrop_jax import cropper as cropper_lib
from procrop_jax import model_zoo
from procrop_jax import photos
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def cropper(tiny_trained_workdir):
  return cropper_lib.Cropper.from_workdir(tiny_trained_workdir)


def _tree(root: pathlib.Path) -> dict[str, str]:
  """Good and bad inputs; name -> expected status."""
  rng = np.random.default_rng(0)
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  noise = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
  files = {"a/IMG_0001.jpg": "ok", "b/IMG_0001.jpg": "ok", "b/IMG_0001.png": "ok",
           "b/deep/tall.webp": "ok", "b/alpha.png": "ok", "b/thin.png": "ok",
           "b/zero.jpg": "error", "b/text.jpg": "error"}
  for name in files:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
  noise(60, 90).save(root / "a/IMG_0001.jpg", icc_profile=icc)
  noise(50, 70).save(root / "b/IMG_0001.jpg")
  noise(50, 70).save(root / "b/IMG_0001.png")
  noise(120, 40).save(root / "b/deep/tall.webp")
  Image.fromarray(rng.integers(0, 255, (30, 30, 4), np.uint8)).save(root / "b/alpha.png")
  noise(2, 200).save(root / "b/thin.png")
  (root / "b/zero.jpg").write_bytes(b"")
  (root / "b/text.jpg").write_text("not an image")
  return files


@pytest.mark.slow
def test_command_on_a_tree_of_good_and_bad_files(cropper, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  expected = _tree(tmp_path)
  inputs, problems = photos.list_inputs(["a", "b", "missing.jpg"], exclude="out")
  before = cropper.predictor.compilations()
  summary = crop.run(inputs, cropper, out_dir="out", targets=[cropper_lib.parse_aspect("16:9"),
                                                              cropper_lib.parse_size("32x32")],
                     top_k=2, problems=problems, progress=False)
  # A fixed set of compiled passes per canvas bucket, whatever the photos: proposals, the
  # candidates of the fixed ratios, their refinement (fixed counts) ...
  compiled = cropper.predictor.compilations()
  assert compiled - before <= 3 * len(_buckets(cropper, tmp_path, expected))
  # ... and none more for another run over the same photos.
  crop.run(inputs, cropper, out_dir="out2", targets=[cropper_lib.parse_aspect("16:9"),
                                                    cropper_lib.parse_size("32x32")],
           top_k=2, problems=[], progress=False)
  assert cropper.predictor.compilations() == compiled
  lines = (tmp_path / "out/results.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len(records) == len(expected) + 1
  status = {r["path"]: r["status"] for r in records}
  assert status == {**expected, "missing.jpg": "error"}
  assert summary.failed == 3 and summary.ok == 6
  files = [c["file"] for r in records for c in r["crops"]]
  assert len(files) == len(set(files))  # No collisions, IMG_0001.jpg/.png included.
  for r in records:
    if r["status"] == "error":
      assert r["error"] and not r["crops"]
      continue
    assert {c["aspect"] for c in r["crops"]} == {"16x9", "32x32"}
    for c in r["crops"]:
      path = tmp_path / "out" / c["file"]
      assert path.is_file() and c["file"].startswith(str(pathlib.Path(r["path"]).parent))
      x1, y1, x2, y2 = c["box"]
      assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
      if c["aspect"] == "32x32":
        assert Image.open(path).size == (32, 32)
      elif min(r["width"], r["height"]) > 10:
        assert abs((x2 - x1) - (y2 - y1) * 16 / 9) <= 1
  first = next(r for r in records if r["path"] == "a/IMG_0001.jpg")
  with Image.open(tmp_path / "out" / first["crops"][0]["file"]) as out:
    assert out.info.get("icc_profile")
  assert first["crops"][0]["file"].endswith(".jpg")
  assert any(f.endswith(".webp") for f in files)
  # The contact sheet names only files that exist.
  html = (tmp_path / "out/index.html").read_text()
  refs = re.findall(r"(?:src|href)='([^']+)'", html)
  assert refs and all((tmp_path / "out" / urllib.parse.unquote(u)).is_file() for u in refs)


def _buckets(cropper, root, expected) -> set[tuple[int, int]]:
  sizes = [Image.open(root / name).size for name, status in expected.items() if status == "ok"]
  return {cropper.canvas_shape(*size) for size in sizes}


@pytest.fixture(scope="module")
def flexible_cropper():
  """A model without retrieval (random weights: shapes and compilations, not quality)."""
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax import inference  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  predictor = inference.Predictor(model_zoo.create_model(config), config, source="random")
  return cropper_lib.Cropper(predictor, batch_size=2)


@pytest.mark.slow
def test_photos_share_canvas_buckets_and_each_compiles_once(flexible_cropper, tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  expected = _tree(tmp_path)
  buckets = _buckets(flexible_cropper, tmp_path, expected)
  assert 1 < len(buckets) < list(expected.values()).count("ok")  # Similar shapes share one.
  inputs, problems = photos.list_inputs(["a", "b"], exclude="out")
  before = flexible_cropper.predictor.compilations()
  targets = [cropper_lib.FREE, cropper_lib.parse_aspect("1:1")]
  summary = crop.run(inputs, flexible_cropper, out_dir="out", targets=targets, top_k=2,
                     problems=problems, progress=False)
  assert (summary.ok, summary.failed) == (6, 2)
  compiled = flexible_cropper.predictor.compilations()
  # Per bucket: the proposals' pass, and the aspect's first and refining candidates'.
  assert compiled - before <= 3 * len(buckets)
  crop.run(inputs, flexible_cropper, out_dir="out2", targets=targets, top_k=2, problems=[],
           progress=False)
  assert flexible_cropper.predictor.compilations() == compiled
  # A photo's crops do not depend on the photos batched with it.
  lines = (tmp_path / "out/results.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  record = next(r for r in records if r["path"] == "b/deep/tall.webp")
  alone = flexible_cropper.crop(tmp_path / "b/deep/tall.webp", top_k=2)
  free = [c["box"] for c in record["crops"] if c["aspect"] == "free"]
  assert [list(c.box) for c in alone] == free


@pytest.mark.slow
def test_score_of_a_reported_box_equals_the_reported_score(cropper, tmp_path):
  image = np.random.default_rng(1).integers(0, 255, (70, 100, 3), np.uint8)
  crops = cropper.crop(image, aspect="4:5", top_k=3)
  assert 1 <= len(crops) <= 3 and all(c.aspect == "4x5" for c in crops)
  scores = [c.score for c in crops]
  assert scores == sorted(scores, reverse=True)
  np.testing.assert_allclose(cropper.score(image, [c.box for c in crops]), scores, atol=1e-5)


@pytest.mark.slow
def test_api_round_trip_path_pil_and_array_agree(cropper, tmp_path):
  array = np.random.default_rng(2).integers(0, 255, (48, 64, 3), np.uint8)
  Image.fromarray(array).save(tmp_path / "p.png")
  by_path = cropper.crop(tmp_path / "p.png", top_k=2)
  by_pil = cropper.crop(Image.fromarray(array), top_k=2)
  by_array = cropper.crop(array, top_k=2)
  assert by_path == by_pil == by_array and 1 <= len(by_path) <= 2
  many = cropper.crop_many([array, tmp_path / "p.png", array[:20]], top_k=2)
  assert many[0] == by_array and many[1] == by_path and len(many) == 3


@pytest.mark.slow
def test_a_single_photo_runs_alone_and_crops_as_in_a_padded_batch(cropper, monkeypatch):
  array = np.random.default_rng(3).integers(0, 255, (48, 64, 3), np.uint8)
  batch_rows = []
  predict = cropper.predictor.predict

  def spy(images, image_valid_hw, *args, **kwargs):
    batch_rows.append(len(image_valid_hw))
    return predict(images, image_valid_hw, *args, **kwargs)

  monkeypatch.setattr(cropper.predictor, "predict", spy)
  alone = cropper.crop(array, aspect="4:5", top_k=2)
  assert batch_rows and set(batch_rows) == {1}  # Not padded to batch_size (8).
  cropper.score(array, [[0, 0, 32, 40]])
  assert set(batch_rows) == {1}
  batch_rows.clear()
  padded = cropper.crop_batch([cropper.prepare(Image.fromarray(array))],
                              [cropper_lib.parse_aspect("4:5")], top_k=2)[0]["4x5"]
  assert set(batch_rows) == {cropper.batch_size} == {8}
  assert [c.box for c in alone] == [c.box for c in padded]
  np.testing.assert_allclose([c.score for c in alone], [c.score for c in padded], atol=1e-6)


@pytest.mark.parametrize("photos_in_call, batch_size, expected", [
    (1, 8, 1), (2, 8, 2), (3, 8, 4), (5, 8, 8), (8, 8, 8), (20, 8, 8), (3, 2, 2), (0, 8, 1)])
def test_a_call_pads_to_the_power_of_two_that_holds_its_photos(photos_in_call, batch_size,
                                                               expected):
  assert cropper_lib.calls_batch_size(photos_in_call, batch_size) == expected


@pytest.mark.slow
def test_command_with_an_exported_model_and_no_workdir(cropper, tmp_path, capsys):
  folder = model_zoo.export(cropper.predictor.model(), cropper.predictor.config,
                            tmp_path / "model")
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "x.jpg")
  code = crop.main([str(tmp_path / "x.jpg"), "--model", str(folder), "--out",
                    str(tmp_path / "out"), "--quiet", "--format", "png"])
  assert code == 0, capsys.readouterr().err
  record = json.loads((tmp_path / "out/results.jsonl").read_text())
  assert record["status"] == "ok" and record["crops"][0]["file"].endswith(".png")
  assert not (tmp_path / "cache").exists()  # No cache unless asked (tests turn it off).
  # The installed command, in its own process: its compiled passes stay for the next run.
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  env.pop("JAX_COMPILATION_CACHE_DIR")
  done = subprocess.run(
      [sys.executable, "-m", "procrop_jax.crop", str(tmp_path / "x.jpg"), "--model", str(folder),
       "--out", str(tmp_path / "out2"), "--quiet", "--compile-cache", str(tmp_path / "cache")],
      env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert any((tmp_path / "cache").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(model_zoo.DEFAULT_MODEL not in model_zoo.available(),
                    reason=f"the default shipped model {model_zoo.DEFAULT_MODEL!r} is not in "
                    "procrop_jax/shipped/ (it lands with the shipped-model issue)")
def test_default_shipped_model_crops_a_photo_with_no_workdir(tmp_path):
  from skimage import data  # pylint: disable=g-import-not-at-top
  Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
  assert crop.main([str(tmp_path / "astronaut.png"), "--out", str(tmp_path / "out"),
                    "--aspect", "1:1", "--quiet"]) == 0
  record = json.loads((tmp_path / "out/results.jsonl").read_text())
  x1, y1, x2, y2 = record["crops"][0]["box"]
  assert record["status"] == "ok" and abs((x2 - x1) - (y2 - y1)) <= 1


@pytest.mark.slow
@pytest.mark.skipif(model_zoo.DEFAULT_MODEL not in model_zoo.available(),
                    reason=f"the default shipped model {model_zoo.DEFAULT_MODEL!r} is not in "
                    "procrop_jax/shipped/")
def test_the_shipped_model_crops_from_outside_a_checkout_in_python_and_on_the_command_line(
    tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from skimage import data  # pylint: disable=g-import-not-at-top
  Image.fromarray(data.coffee()).save(tmp_path / "coffee.jpg")
  env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
  # A working directory with no configs/ and no repository: only the installed package.
  command = [sys.executable, "-m", "procrop_jax.crop", "coffee.jpg", "--out", "out", "--quiet"]
  done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
  assert record["status"] == "ok" and record["crops"]
  script = ("from procrop_jax import Cropper; c = Cropper.pretrained().crop('coffee.jpg', "
            "top_k=1)[0]; print(c.box, c.score)")
  done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip()


def test_warm_up_prepares_every_pass_a_batch_needs_once_across_threads(tiny_trained_workdir):
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  cropper = cropper_lib.Cropper.from_workdir(tiny_trained_workdir)  # Its own predictor.
  shape = cropper.canvas_shape(300, 200)
  targets = [cropper_lib.FREE, cropper_lib.parse_aspect("16:9")]
  before = cropper.predictor.compilations()
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Two threads, the same canvas.
    for future in [pool.submit(cropper.warm_up, shape, targets) for _ in range(2)]:
      future.result()
  prepared = cropper.predictor.compilations()
  assert prepared > before
  photo = cropper.prepare(Image.new("RGB", (300, 200), (90, 120, 150)))
  crops = cropper.crop_batch([photo], targets, top_k=1)
  assert all(crops[0][t.label] for t in targets)
  assert cropper.predictor.compilations() == prepared  # The real batch compiled nothing.


def test_warm_up_with_faces_also_prepares_the_pass_that_scores_grown_boxes(
    tiny_trained_workdir):
  """Prepared beside the proposal pass (Cropper._warm_up_grown): a photo whose face the
  proposals leave out then grows them and scores them without compiling anything."""
  cropper = cropper_lib.Cropper.from_workdir(tiny_trained_workdir)
  shape = cropper.canvas_shape(300, 200)
  cropper.warm_up(shape)
  prepared = cropper.predictor.compilations()
  scored = []
  real_predict = cropper.predictor.predict

  def predict(images, valid, boxes=None, **kwargs):
    scored.append(boxes is not None)
    return real_predict(images, valid, boxes, **kwargs)
  cropper.predictor.predict = predict
  photo = cropper.prepare(Image.new("RGB", (300, 200), (90, 120, 150)))
  photo.faces = np.array([[0.0, 80.0, 30.0, 120.0]])  # At the left edge.
  crops = cropper.crop_batch([photo], [cropper_lib.FREE], top_k=1)
  assert scored == [False, True]  # Proposals, then the grown boxes' scores.
  assert crops[0]["free"][0].box[0] == 0  # The top crop keeps the face.
  assert cropper.predictor.compilations() == prepared


def test_a_folder_run_lowers_the_models_pass_before_it_looks_for_faces(tiny_trained_workdir,
                                                                       tmp_path):
  """Tracing needs the interpreter: the model's pass, the slowest to compile, is traced
  before the face detector's, so that its compilation starts first (Cropper.lower)."""
  cropper = cropper_lib.Cropper.from_workdir(tiny_trained_workdir)
  events = []
  real_lower, real_detect = cropper.lower, cropper.face_detector.detect
  cropper.lower = lambda *args, **kwargs: (events.append("lower"),
                                           real_lower(*args, **kwargs))[1]
  cropper.face_detector.detect = lambda image: (events.append("faces"), real_detect(image))[1]
  Image.new("RGB", (90, 60), (200, 120, 90)).save(tmp_path / "one.jpg")
  inputs, _ = photos.list_inputs([str(tmp_path / "one.jpg")])
  summary = crop.run(inputs, cropper, out_dir=tmp_path / "out", top_k=1, progress=False)
  assert summary.ok == 1
  assert events == ["lower", "faces"]


def test_a_folder_run_with_keep_regions_prepares_only_the_passes_its_batches_use(
    tiny_trained_workdir, tmp_path):
  """Without a face detector, keep regions of the user's make the proposal pass keep its
  encoding for the grown boxes: the warm-up prepares that pass, not the plain one."""
  cropper = cropper_lib.Cropper.from_workdir(tiny_trained_workdir, faces=False)
  Image.new("RGB", (90, 60), (200, 120, 90)).save(tmp_path / "one.jpg")
  inputs, _ = photos.list_inputs([str(tmp_path / "one.jpg")])
  summary = crop.run(inputs, cropper, out_dir=tmp_path / "out", top_k=1, progress=False,
                     keep=[(0, 20, 9, 40)])
  assert summary.ok == 1
  assert cropper.predictor.compilations() == 2  # Proposals with their encoding; grown boxes.


@pytest.mark.parametrize("text", ["400", "48", "-1", "x"])
def test_a_face_side_the_detector_cannot_run_is_refused_by_name(text):
  with pytest.raises(argparse.ArgumentTypeError, match=repr(text) if text in ("-1", "x")
                     else "multiple of 32 and at least 64"):
    crop.face_side(text)
  assert crop.face_side("416") == 416
