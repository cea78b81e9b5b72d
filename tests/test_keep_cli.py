"""`procrop crop --keep/--focus/--no-faces` and the results fields, on the shipped model."""

import json

import numpy as np
from PIL import Image
import pytest
from skimage import data

from procrop_jax import crop
from procrop_jax import cropper as cropper_lib
from procrop_jax import keep as keep_lib
from procrop_jax import model_zoo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(model_zoo.DEFAULT_MODEL not in model_zoo.available(),
                       reason=f"the shipped model {model_zoo.DEFAULT_MODEL!r} is not installed"),
]


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
  path = tmp_path_factory.mktemp("photos") / "astronaut.png"
  Image.fromarray(data.astronaut()).save(path)
  return path


def _records(out):
  return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_faces_keep_and_focus_on_the_command_line(astronaut, tmp_path):
  out = tmp_path / "out"
  assert crop.main([str(astronaut), "--out", str(out), "--aspect", "16:9", "--aspect", "4:5",
                    "--keep", "300,400,340,440", "--focus", "20,500", "--top-k", "2",
                    "--quiet", "--compile-cache", ""]) == 0
  record = _records(out)[0]
  assert len(record["faces"]) == 1 and record["keep"] == [[300, 400, 340, 440],
                                                          [20, 500, 21, 501]]
  face = np.array(record["faces"])
  assert {c["aspect"] for c in record["crops"]} == {"16x9", "4x5"}
  for c in record["crops"]:
    if c["aspect"] == "4x5":  # A 409 x 512 box holds the box, the point and the face.
      assert c["not_kept"] == [] and c["cut_faces"] == []
    else:
      # 16:9 crops of the 512 px square are at most 288 px tall: the face (y ~65-175) and the
      # point at y 500 cannot both fit; the user's box and point come first, and the face (the
      # photo's main one, so a region it must keep) is reported as left out.
      assert c["not_kept"] == [2]
    assert c["cut_faces"] == np.nonzero(keep_lib.cut(c["box"], face))[0].tolist()
  sheet = (out / "index.html").read_text()
  assert "face 0" in sheet and "1 face" in sheet


def test_no_faces_turns_detection_off(astronaut, tmp_path):
  out = tmp_path / "out"
  assert crop.main([str(astronaut), "--out", str(out), "--no-faces", "--quiet",
                    "--compile-cache", ""]) == 0
  record = _records(out)[0]
  assert record["faces"] == [] and all(c["not_kept"] == [] for c in record["crops"])


@pytest.mark.parametrize("args", [["--keep", "1,2,3"], ["--keep", "10,10,5,20"],
                                  ["--focus", "a,b"]])
def test_bad_keep_and_focus_are_usage_errors(args, capsys):
  with pytest.raises(SystemExit) as exit_info:
    crop.main(["photo.jpg", *args])
  assert exit_info.value.code == 2 and "error" in capsys.readouterr().err


def test_the_api_keeps_a_box_the_model_would_cut(astronaut):
  cropper = cropper_lib.Cropper.pretrained(batch_size=1, faces=False)
  region = (430, 440, 500, 500)  # The bottom-right corner, far from the astronaut's face.
  for target in (None, "1:1", "16:9"):
    plain = cropper.crop(astronaut, target, top_k=1)[0]
    kept = cropper.crop(astronaut, target, top_k=1, keep=[region])[0]
    assert keep_lib.contained(kept.box, np.array([region]))[0] and kept.not_kept == ()
    assert plain.not_kept == ()  # No region asked for: nothing left out.


def test_a_free_box_grown_for_a_region_never_outscores_the_models_own_crop(astronaut):
  # A box grown to keep a corner is scored by the given-box path, which alone scored these
  # above the best proposal (0.916-0.917 against 0.911); capped by the proposal it grew from,
  # it never outranks the model's own crop.
  cropper = cropper_lib.Cropper.pretrained(batch_size=1, faces=False)
  plain = cropper.crop(astronaut, top_k=1)[0]
  for corner in ((472, 472, 512, 512), (0, 472, 40, 512)):
    kept = cropper.crop(astronaut, top_k=1, keep=[corner])[0]
    assert keep_lib.contained(kept.box, np.array([corner]))[0]
    assert kept.score <= plain.score + 1e-6
