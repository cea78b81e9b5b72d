"""What users type: the installed `procrop` script, stdin, --best, --size, an unwritable crop,
and a cropper path that never imports TensorFlow."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from procrop_jax import crop
from procrop_jax import model_zoo
from tests.conftest import REPO_ROOT

needs_shipped_model = pytest.mark.skipif(
    model_zoo.DEFAULT_MODEL not in model_zoo.available(),
    reason=f"the default shipped model {model_zoo.DEFAULT_MODEL!r} is not in procrop_jax/shipped/")


def _photo(path: pathlib.Path, height: int = 90, width: int = 120) -> pathlib.Path:
  rng = np.random.default_rng(height * width)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(path)
  return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
  """The subprocesses' environment: the checkout importable, one compilation cache shared by
  this module's processes (so only the first compiles)."""
  cache = tmp_path_factory.mktemp("compile_cache")
  return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROCROP_COMPILE_CACHE": str(cache)}


def _procrop() -> str:
  """The console script pip installed beside this interpreter."""
  script = pathlib.Path(sys.executable).with_name("procrop")
  return str(script) if script.exists() else shutil.which("procrop") or "procrop"


def _records(out: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
@needs_shipped_model
def test_the_console_script_crops_to_a_size_and_exits_1_when_an_input_fails(tmp_path, env):
  good = _photo(tmp_path / "in" / "good.jpg")
  (tmp_path / "in" / "broken.jpg").write_text("not an image")
  done = subprocess.run([_procrop(), "crop", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                         "--size", "64x48", "--top-k", "2"],
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 1, done.stderr[-2000:]
  assert "1 failed" in done.stderr
  by_name = {pathlib.Path(r["path"]).name: r for r in _records(tmp_path / "out")}
  assert by_name["broken.jpg"]["status"] == "error"
  ok = by_name[good.name]
  assert ok["status"] == "ok" and len(ok["crops"]) == 2
  for c in ok["crops"]:
    assert c["aspect"] == "64x48"
    with Image.open(tmp_path / "out" / c["file"]) as image:
      assert image.size == (64, 48)  # --size resizes every crop to exactly that size.
    x1, y1, x2, y2 = c["box"]
    assert abs((x2 - x1) / (y2 - y1) - 64 / 48) < 2 / (y2 - y1)  # The ratio, to a pixel.


@pytest.mark.slow
@needs_shipped_model
def test_a_photo_on_stdin(tmp_path, env):
  data = _photo(tmp_path / "p.png", 100, 80).read_bytes()
  done = subprocess.run([sys.executable, "-m", "procrop_jax.crop", "-", "--out",
                         str(tmp_path / "out"), "--aspect", "1:1", "--quiet"],
                        input=data, env=env, capture_output=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  (record,) = _records(tmp_path / "out")
  assert record["path"] == "-" and record["status"] == "ok"
  assert (record["width"], record["height"]) == (80, 100)
  assert (tmp_path / "out" / record["crops"][0]["file"]).is_file()


@pytest.mark.slow
@needs_shipped_model
def test_the_cropper_path_imports_no_tensorflow_checkpointing_or_flax(tmp_path, env):
  _photo(tmp_path / "p.jpg")
  check = ("import sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
           "assert 'tensorflow_datasets' not in sys.modules, 'tensorflow_datasets imported'; "
           "from procrop_jax import lazy; "
           "assert not lazy.is_loaded('orbax.checkpoint'), 'orbax.checkpoint imported'")
  python_api = ("from procrop_jax import Cropper; "
                "assert Cropper.pretrained().crop('p.jpg', top_k=1); " + check)
  command_line = ("import sys; from procrop_jax import main; "
                  "sys.argv = ['procrop', 'crop', 'p.jpg', '--aspect', '16:9', '--quiet'];\n"
                  "try:\n  main.run()\nexcept SystemExit as e:\n  assert e.code == 0, e.code\n"
                  + check)
  # The second run finds its passes exported by the first: it builds no model, so neither Flax
  # nor the model's modules load. (Exported passes are single-device: one CPU device, as users
  # have, not the 8 that conftest.py gives the test processes.)
  env = {**env, "XLA_FLAGS": ""}
  no_model = ("; assert 'flax' not in sys.modules, 'flax imported'; "
              "assert 'procrop_jax.models.procrop' not in sys.modules, 'the model imported'")
  for script in (python_api, command_line):
    for run in (script, script + no_model):
      done = subprocess.run([sys.executable, "-c", run], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
      assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_best_crops_with_the_runs_best_checkpoint(tiny_trained_workdir, tmp_path, capsys):
  # A run whose only checkpoint is its best one: --best finds it, the latest does not exist.
  run = tmp_path / "run"
  run.mkdir()
  shutil.copy(tiny_trained_workdir / "config.json", run / "config.json")
  shutil.copytree(tiny_trained_workdir / "checkpoints", run / "checkpoints_best")
  photo = _photo(tmp_path / "p.jpg")
  assert crop.main([str(photo), "--workdir", str(run), "--best", "--out", str(tmp_path / "out"),
                    "--quiet"]) == 0, capsys.readouterr().err
  (record,) = _records(tmp_path / "out")
  assert record["status"] == "ok" and record["crops"]
  assert crop.main([str(photo), "--workdir", str(run), "--out", str(tmp_path / "out2"),
                    "--quiet"]) == 2
  assert "No checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_a_crop_that_cannot_be_written_is_an_error_line_and_exit_1(tiny_trained_workdir,
                                                                   tmp_path, capsys):
  _photo(tmp_path / "in" / "a" / "p.jpg")
  _photo(tmp_path / "in" / "b" / "q.jpg")
  out = tmp_path / "out"
  (out / "in").mkdir(parents=True)
  (out / "in" / "a").write_text("a file where p.jpg's crops' folder should be")
  code = crop.main([str(tmp_path / "in"), "--workdir", str(tiny_trained_workdir), "--out",
                    str(out), "--quiet"])
  assert code == 1
  assert "1 failed" in capsys.readouterr().err
  by_name = {pathlib.Path(r["path"]).name: r for r in _records(out)}
  assert by_name["p.jpg"]["status"] == "error"
  assert "cannot write a crop" in by_name["p.jpg"]["error"]
  assert by_name["q.jpg"]["status"] == "ok"


def test_canvas_layout_on_the_command_line(tmp_path, capsys):
  parser = crop.build_parser("procrop crop")
  args = parser.parse_args([str(tmp_path / "p.jpg"), "--canvas-layout", "square",
                            "--canvas-size", "160", "--quiet"])
  cropper = crop.load_cropper(args)
  assert (cropper.layout, cropper.canvas_size) == ("square", 160)
  assert cropper.canvas_shape(600, 400) == (160, 160)
  default = crop.load_cropper(parser.parse_args(["x.jpg", "--quiet"]))
  assert default.layout == default.predictor.config.crop.canvas_layout
  with pytest.raises(SystemExit):
    parser.parse_args(["x.jpg", "--canvas-layout", "round"])
  assert "invalid choice: 'round'" in capsys.readouterr().err
