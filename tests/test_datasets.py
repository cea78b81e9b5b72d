"""Tests of the TFDS builders on dummy data in the real formats, and of bad input."""

import io
import json
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from procrop_jax import datasets
from procrop_jax import photos
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import fcdb
from procrop_jax.datasets import flms
from procrop_jax.datasets import gaicd
from procrop_jax.datasets import image_files
from procrop_jax.datasets import photo_folder
from procrop_jax.datasets import procrop_cad
from procrop_jax.datasets import schema

# ------------------------------------------------------------------ dummy files


def photo(width=64, height=48, *, seed=0, mode="RGB"):
  """A small textured image (not blank, so never mistaken for a placeholder)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 200, size=(1, 1, 3))
  noise = rng.integers(0, 56, size=(height, width, 3))
  image = Image.fromarray((base + noise).astype(np.uint8), "RGB")
  return image if mode == "RGB" else image.convert(mode)


def save(image, path, fmt="JPEG", **kwargs):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format=fmt, **kwargs)
  return path


def placeholder(width=500, height=374):
  """Imitates Flickr's 'photo is no longer available' image: white, small grey marks."""
  array = np.full((height, width), 255, np.uint8)
  array[height // 2 - 20:height // 2 + 10, width // 2 - 20:width // 2 + 20] = 150
  array[height // 2 + 30:height // 2 + 34, width // 2 - 60:width // 2 + 60] = 110
  return Image.fromarray(array, "L")


def write_json(path, value, indent=1):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=indent))
  return path


def make_fcdb(root):
  root = pathlib.Path(root)
  save(photo(80, 60, seed=1), root / "data" / "1_a_b.jpg")
  save(photo(60, 80, seed=2), root / "data" / "2_a_b.jpg")
  save(placeholder(), root / "data" / "3_a_b.jpg")
  save(photo(70, 50, seed=4), root / "data" / "4_a_c.jpg")
  url = "https://farm1.staticflickr.com/1/{}"
  write_json(root / "cropping_training_set.json", [
      {"url": url.format("1_a_b.jpg"), "flickr_photo_id": 1, "crop": [10, 5, 50, 40]},
      {"url": url.format("2_a_b.jpg"), "flickr_photo_id": 2, "crop": [0, 0, 60, 70]},
      {"url": url.format("3_a_b.jpg"), "flickr_photo_id": 3, "crop": [1, 1, 100, 100]},
      {"url": url.format("missing.jpg"), "flickr_photo_id": 5, "crop": [1, 1, 10, 10]},
  ])
  write_json(root / "cropping_testing_set.json", [
      {"url": url.format("4_a_c.jpg"), "flickr_photo_id": 4, "crop": [5, 5, 30, 30]},
  ])
  write_json(root / "ranking_annotation_train.json", [
      {"url": url.format("1_a_b.jpg"), "crops": [
          {"crop_0": [0, 0, 40, 30], "crop_1": [10, 10, 60, 45], "vote_for_0": 1,
           "vote_for_1": 4},
          {"crop_0": [0, 0, 500, 30], "crop_1": [10, 10, 60, 45], "vote_for_0": 5,
           "vote_for_1": 0},  # crop_0 lies outside the photo: the pair is dropped.
      ]},
  ])


def make_gaicd(root):
  root = pathlib.Path(root)
  names = {"train": ["100.jpg", "101.jpg"], "test": ["200.jpg"]}
  crops = {}
  for split, split_names in names.items():
    for i, name in enumerate(split_names):
      save(photo(90, 60, seed=i + 10 * len(split)), root / "images" / split / name)
      crops[name] = {"bbox": [[0, 0, 90, 60], [10, 5, 80, 55], [20, 10, 70, 50]],
                     "score": [3.5, 4.25, 2.0]}
  write_json(root / "image_crop.json", crops, indent=None)
  write_json(root / "original_data_split.json", names, indent=None)
  return crops, names


def make_flms(root):
  root = pathlib.Path(root)
  save(photo(100, 80, seed=3), root / "image" / "1_Large.jpg")
  save(photo(80, 100, seed=4), root / "image" / "2_Large.jpg")
  write_json(root / "image_crop.json", {
      "1_Large.jpg": [[0, 0, 100, 80], [10, 10, 90, 70], [5, 5, 5, 70]],  # Last: no area.
      "2_Large.jpg": [[0, 10, 80, 90]],
  }, indent=None)


def make_cad(root):
  root = pathlib.Path(root)
  for stem, lines in {
      "p1_0": "2 3 40 60 5\n0 0 48 64 3.5\n",
      "p1_1": "5 6 30 50\n1 1 2 2 -2\n",  # Default score 5; an ignored line.
      "p2_0": "0 0 48 64 4\n",
  }.items():
    save(photo(64, 48, seed=len(stem) + ord(stem[-1])), root / "images" / f"{stem}.jpg")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{stem}.txt").write_text(lines)


def make_photo_folder(root):
  root = pathlib.Path(root)
  save(photo(50, 40, seed=7), root / "a" / "one.jpg")
  save(photo(40, 50, seed=8), root / "b" / "two.png", fmt="PNG")


# ------------------------------------------------------------- builds and values


def build(builder_cls, manual_dir, data_dir, config=None):
  builder = builder_cls(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def read_all(builder, split):
  source = builder.as_data_source(split)
  return {ex["image_id"].decode() if isinstance(ex["image_id"], bytes) else ex["image_id"]:
          ex for ex in source}


def test_builders_are_registered():
  for name in datasets.BUILDERS:
    assert tfds.builder_cls(name).name == name


def test_fcdb_values_and_report(tmp_path):
  make_fcdb(tmp_path / "manual")
  builder = build(fcdb.Fcdb, tmp_path / "manual", tmp_path / "tfds")
  assert builder.info.file_format.value == "array_record"
  train = read_all(builder, "train")
  assert sorted(train) == ["1_a_b.jpg", "2_a_b.jpg"]
  ex = train["1_a_b.jpg"]
  np.testing.assert_array_equal(ex["image_size"], [60, 80])
  assert ex["image"].shape == (60, 80, 3)
  np.testing.assert_allclose(ex["boxes_px"], [[10, 5, 60, 45]])  # [x, y, w, h] -> x1y1x2y2.
  np.testing.assert_allclose(ex["boxes"], [[10 / 80, 5 / 60, 60 / 80, 45 / 60]], rtol=1e-6)
  np.testing.assert_allclose(ex["box_scores"], [schema.DEFAULT_SCORE])
  report = datasets.build_report(tfds.builder("fcdb", data_dir=str(tmp_path / "tfds")))
  assert report["train"]["skipped"] == {"missing_file": 1, "placeholder": 1}
  assert report["train"]["entries"] == 4 and report["train"]["kept"] == 2
  assert report["test"]["kept"] == 1


def test_fcdb_rated_pairs(tmp_path):
  make_fcdb(tmp_path / "manual")
  builder = build(fcdb.Fcdb, tmp_path / "manual", tmp_path / "tfds")
  train = read_all(builder, "train")
  ex = train["1_a_b.jpg"]  # 80 x 60; the second pair has a box outside the photo.
  np.testing.assert_allclose(ex["pair_boxes"], [[[0, 0, 0.5, 0.5], [10 / 80, 10 / 60, 70 / 80,
                                                                      55 / 60]]], rtol=1e-6)
  np.testing.assert_array_equal(ex["pair_votes"], [[1, 4]])
  assert train["2_a_b.jpg"]["pair_boxes"].shape == (0, 2, 4)  # Not in the ranking file.
  assert read_all(builder, "test")["4_a_c.jpg"]["pair_votes"].shape == (0, 2)
  report = datasets.build_report(builder)["train"]
  assert report["dropped_boxes"] == {"pair_box_unusable": 1}


def test_fcdb_malformed_ranking_file_names_the_line(tmp_path):
  path = tmp_path / "ranking.json"
  path.write_text('[\n{"url": "a.jpg", "crops": [\n{"crop_0": [0, 0, 1, 1], "vote_for_0": 1}]}]')
  with pytest.raises(annotation_files.AnnotationError, match=r"ranking.json:2: .*crop_1"):
    fcdb.parse_ranking(path)


def test_fcdb_skips_absent_split_with_a_message(tmp_path, capsys):
  make_fcdb(tmp_path / "manual")
  (tmp_path / "manual" / "cropping_testing_set.json").unlink()
  builder = build(fcdb.Fcdb, tmp_path / "manual", tmp_path / "tfds")
  assert list(builder.info.splits) == ["train"]
  assert "cropping_testing_set.json not found" in capsys.readouterr().out


def test_gaicd_values_and_sources_agree(tmp_path):
  crops, names = make_gaicd(tmp_path / "manual")
  builder = build(gaicd.Gaicd, tmp_path / "manual", tmp_path / "tfds")
  train = read_all(builder, "train")
  np.testing.assert_allclose(train["100.jpg"]["boxes_px"], crops["100.jpg"]["bbox"])
  np.testing.assert_allclose(train["100.jpg"]["box_scores"], crops["100.jpg"]["score"])

  # The same annotations as the original MATLAB struct (rows y1, x1, y2, x2).
  import scipy.io  # pylint: disable=g-import-not-at-top
  all_names = names["train"] + names["test"]
  boxes = np.empty((1, 3), object)
  scores = np.empty((1, 3), object)
  paths = np.empty((1, 3), object)
  for i, n in enumerate(all_names):
    b = np.asarray(crops[n]["bbox"], np.uint16)
    boxes[0, i] = b[:, [1, 0, 3, 2]].T
    scores[0, i] = np.asarray(crops[n]["score"])[None]
    paths[0, i] = np.array([f"dataset/GAIC/images/x/{n}"])
  imdb = {"images": {"trainSet": np.array([[1]]), "valSet": np.array([[2]]),
                     "testSet": np.array([[3]])},
          "bbox": {"boxes": boxes, "gt_scores": scores},
          "meta": {"img_path": paths}}
  scipy.io.savemat(tmp_path / "imdb_GAIC1000.mat", {"imdb": imdb})
  from_mat = gaicd.parse_mat(tmp_path / "imdb_GAIC1000.mat")
  from_json = gaicd.parse_json(tmp_path / "manual" / "image_crop.json",
                               tmp_path / "manual" / "original_data_split.json")
  for split in ("train", "test"):
    assert [e["image_name"] for e in from_mat[split]] == [e["image_name"]
                                                         for e in from_json[split]]
    for a, b in zip(from_mat[split], from_json[split]):
      np.testing.assert_allclose(a["boxes_px"], b["boxes_px"])
      np.testing.assert_allclose(a["scores"], b["scores"])


def test_flms_drops_zero_area_box(tmp_path):
  make_flms(tmp_path / "manual")
  builder = build(flms.Flms, tmp_path / "manual", tmp_path / "tfds")
  test = read_all(builder, "test")
  assert len(test["1_Large.jpg"]["boxes"]) == 2
  assert datasets.build_report(builder)["test"]["dropped_boxes"] == {"box_zero_area": 1}


def test_procrop_cad_lines(tmp_path):
  make_cad(tmp_path / "manual")
  builder = build(procrop_cad.ProcropCad, tmp_path / "manual", tmp_path / "tfds")
  train = read_all(builder, "train")
  np.testing.assert_allclose(train["p1_0"]["boxes_px"], [[3, 2, 60, 40], [0, 0, 64, 48]])
  np.testing.assert_allclose(train["p1_0"]["box_scores"], [5, 3.5])
  np.testing.assert_allclose(train["p1_1"]["boxes_px"], [[6, 5, 50, 30]])  # -2 ignored.
  np.testing.assert_allclose(train["p1_1"]["box_scores"], [5.0])
  # Stored grouped by photo: p1's variants are adjacent.
  order = [ex["image_id"].decode() for ex in builder.as_data_source("train")]
  assert abs(order.index("p1_0") - order.index("p1_1")) == 1


def test_photo_folder_skimage_config(tmp_path):
  builder = build(photo_folder.PhotoFolder, tmp_path / "unused", tmp_path / "tfds",
                  config="skimage")
  assert builder.info.splits["train"].num_examples == len(photos.skimage_photo_paths())
  ex = builder.as_data_source("train")[0]
  assert ex["boxes"].shape == (0, 4) and ex["image"].shape[-1] == 3


# -------------------------------------------------------------------- bad input


def _cmyk_jpeg():
  buffer = io.BytesIO()
  photo(64, 48, seed=9).convert("CMYK").save(buffer, format="JPEG")
  return buffer.getvalue()


def test_bad_input_is_skipped_and_counted(tmp_path, capsys):
  root = tmp_path / "manual"
  good = save(photo(64, 48, seed=1), root / "data" / "good.jpg").read_bytes()
  files = {
      "good.jpg": good,
      "corrupt.jpg": bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)),
      "truncated.jpg": good[: len(good) // 2],
      "zero.jpg": b"",
      "text.jpg": b"this is not an image\n",
      "cmyk.jpg": _cmyk_jpeg(),
      "outside.jpg": good,
      "zero_area.jpg": good,
      "clipped.jpg": good,
      "placeholder.jpg": None,
  }
  for name, data in files.items():
    if data is not None:
      (root / "data" / name).write_bytes(data)
  save(placeholder(), root / "data" / "placeholder.jpg")
  save(photo(64, 48, seed=2, mode="L"), root / "data" / "gray.jpg")
  save(photo(64, 48, seed=3, mode="RGBA"), root / "data" / "rgba.png", fmt="PNG")
  sixteen = (np.random.default_rng(0).integers(0, 65535, (48, 64))).astype(np.uint16)
  save(Image.fromarray(sixteen), root / "data" / "sixteen.png", fmt="PNG")
  crops = {name: [4, 4, 40, 30] for name in list(files) + ["gray.jpg", "rgba.png",
                                                            "sixteen.png", "gone.jpg"]}
  crops["outside.jpg"] = [50, 40, 60, 60]
  crops["zero_area.jpg"] = [10, 10, 0, 20]
  crops["clipped.jpg"] = [0, 0, 65, 49]  # A pixel over: clipped, kept.
  write_json(root / "cropping_training_set.json", [
      {"url": f"http://x/{name}", "crop": crop} for name, crop in crops.items()])

  builder = build(fcdb.Fcdb, root, tmp_path / "tfds")
  report = datasets.build_report(builder)["train"]
  assert report["skipped"] == {
      "box_outside_image": 1, "box_zero_area": 1, "corrupt_image": 2, "empty_file": 1,
      "missing_file": 1, "not_an_image": 1, "placeholder": 1,
  } or report["skipped"] == {  # Some PIL versions tell random bytes from JPEG apart.
      "box_outside_image": 1, "box_zero_area": 1, "corrupt_image": 1, "empty_file": 1,
      "missing_file": 1, "not_an_image": 2, "placeholder": 1,
  }
  assert report["converted"] == {"mode_CMYK": 1, "mode_I;16": 1, "mode_L": 1,
                                 "mode_RGBA": 1}
  kept = read_all(builder, "train")
  assert sorted(kept) == ["clipped.jpg", "cmyk.jpg", "good.jpg", "gray.jpg", "rgba.png",
                          "sixteen.png"]
  np.testing.assert_allclose(kept["clipped.jpg"]["boxes_px"], [[0, 0, 64, 48]])
  for ex in kept.values():
    assert ex["image"].shape[-1] == 3
  out = capsys.readouterr().out
  assert "skipped" in out and "placeholder=1" in out and "empty_file=1" in out


def test_sixteen_bit_is_scaled_not_clipped():
  array = np.full((32, 32), 32768, np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  loaded = image_files.load_image(buffer.getvalue())
  pixels = np.asarray(Image.open(io.BytesIO(loaded.encoded)))
  assert abs(int(pixels.mean()) - 128) <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_moves_boxes_with_pixels(orientation):
  stored = np.zeros((40, 60, 3), np.uint8)
  box = [8, 5, 30, 17]  # x1, y1, x2, y2 in the stored frame.
  stored[box[1]:box[3], box[0]:box[2]] = 255  # White on black: luma is not subsampled.
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  Image.fromarray(stored).save(buffer, format="JPEG", quality=100, exif=exif.tobytes())
  loaded = image_files.load_image(buffer.getvalue())
  upright = np.asarray(Image.open(io.BytesIO(loaded.encoded)).convert("RGB")).astype(int)
  assert upright.shape[:2] == (loaded.height, loaded.width)
  (x1, y1, x2, y2), = image_files.orient_boxes(np.array([box]), loaded.orientation,
                                               loaded.stored_width, loaded.stored_height)
  ys, xs = np.nonzero(upright.mean(-1) > 128)
  assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


# ------------------------------------------------------------ malformed files


def test_malformed_json_entry_names_file_and_line(tmp_path):
  make_fcdb(tmp_path / "manual")
  path = tmp_path / "manual" / "cropping_training_set.json"
  entries = json.loads(path.read_text())
  entries[2]["crop"] = [1, 2, 3]
  path.write_text(json.dumps(entries, indent=1))
  starts = [i for i, text in enumerate(path.read_text().splitlines(), 1)
            if text.strip() == "{"]
  line = starts[2]  # Where the third entry begins.
  with pytest.raises(annotation_files.AnnotationError,
                     match=rf"cropping_training_set.json:{line}:"):
    build(fcdb.Fcdb, tmp_path / "manual", tmp_path / "tfds")


def test_json_syntax_error_names_line(tmp_path):
  path = tmp_path / "image_crop.json"
  path.write_text('{\n "a.jpg": [[0, 0, 5, 5]],\n "b.jpg": [[0, 0, 5 5]]\n}\n')
  with pytest.raises(annotation_files.AnnotationError, match=r"image_crop.json:3: invalid JSON"):
    flms.parse_annotations(path)


def test_malformed_cad_line_names_file_and_line(tmp_path):
  make_cad(tmp_path / "manual")
  (tmp_path / "manual" / "annotations" / "p2_0.txt").write_text("0 0 48 64 4\n1 2 x 4\n")
  with pytest.raises(annotation_files.AnnotationError, match=r"p2_0.txt:2: not a number"):
    build(procrop_cad.ProcropCad, tmp_path / "manual", tmp_path / "tfds")
  (tmp_path / "manual" / "annotations" / "p2_0.txt").write_text("0 0 48\n")
  with pytest.raises(annotation_files.AnnotationError, match=r"p2_0.txt:1: expected"):
    build(procrop_cad.ProcropCad, tmp_path / "manual", tmp_path / "tfds2")


# --------------------------------------------------------------- the real files


def test_real_fcdb_counts(shared_data):
  root = shared_data / "fcdb"
  entries = fcdb.parse_annotations(root / "cropping_training_set.json")
  assert len(entries) == 1369
  by_size = {}
  for e in entries:
    by_size.setdefault((root / "data" / e["image_name"]).stat().st_size, []).append(e)
  # Flickr's placeholder comes in two sizes: 500x374 (5946 bytes, 31 files) and
  # 1024x768 (14009 bytes, 3 files).
  small, large = by_size[5946], by_size[14009]
  assert len(small) == 31 and len(large) == 3
  for e in small + large:
    with pytest.raises(schema.SkipExample, match="placeholder"):
      image_files.load_image((root / "data" / e["image_name"]).read_bytes())
  for e in entries[:60]:
    if e not in small + large:
      image_files.load_image((root / "data" / e["image_name"]).read_bytes())


@pytest.mark.slow
def test_real_fcdb_build(shared_data, tmp_path):
  builder = build(fcdb.Fcdb, shared_data / "fcdb", tmp_path / "tfds")
  report = datasets.build_report(builder)["train"]
  assert report["entries"] == 1369
  assert report["skipped"] == {"placeholder": 34}
  assert report["kept"] == 1335 == builder.info.splits["train"].num_examples
  assert report["dropped_boxes"] == {}  # Every rated pair of the kept photos is usable.


def test_real_gaicd_counts(shared_data):
  root = shared_data / "annotations" / "gaicd"
  from_json = gaicd.parse_json(root / "image_crop.json", root / "original_data_split.json")
  assert {k: len(v) for k, v in from_json.items()} == {"train": 1036, "test": 200}
  counts = [len(e["boxes_px"]) for v in from_json.values() for e in v]
  assert 80 < np.mean(counts) <= 90 and max(counts) == 90
  from_mat = gaicd.parse_mat(root / "imdb_GAIC1000.mat")
  assert {k: len(v) for k, v in from_mat.items()} == {"train": 1036, "test": 200}
  json_by_name = {e["image_name"]: e for v in from_json.values() for e in v}
  for split in ("train", "test"):
    assert {e["image_name"] for e in from_mat[split]} == {
        e["image_name"] for e in from_json[split]}
  for e in from_mat["train"][:50] + from_mat["test"][:50]:
    j = json_by_name[e["image_name"]]
    got = sorted(zip(map(tuple, e["boxes_px"]), e["scores"]))
    want = sorted(zip(map(tuple, j["boxes_px"]), j["scores"]))
    np.testing.assert_allclose(np.array([g[0] for g in got]), np.array([w[0] for w in want]))
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want])


def test_real_flms_counts(shared_data):
  entries = flms.parse_annotations(shared_data / "annotations" / "flms" / "image_crop.json")
  assert len(entries) == 500
  counts = [len(e["boxes_px"]) for e in entries]
  assert set(counts) == {9, 10}
  # Two boxes have no area: the builder drops (and counts) them.
  degenerate = sum(int(np.sum((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])))
                   for b in (e["boxes_px"] for e in entries))
  assert degenerate == 2
