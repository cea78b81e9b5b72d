"""setup.py says what installs where: Python 3.11-3.13, ScaNN optional, macOS without it."""

import ast
import subprocess
import sys
import zipfile

from packaging import requirements
from packaging import specifiers

from tests.conftest import REPO_ROOT


def _setup_values() -> dict:
  """The literal assignments and setup() keywords of setup.py, read without running it."""
  tree = ast.parse((REPO_ROOT / "setup.py").read_text())
  values = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
      values[node.targets[0].id] = ast.literal_eval(node.value)
    if isinstance(node, ast.keyword) and node.arg == "python_requires":
      values["python_requires"] = ast.literal_eval(node.value)
  return values


def _installed(reqs: list[str], sys_platform: str, machine: str) -> set[str]:
  env = {"sys_platform": sys_platform, "platform_machine": machine, "python_version": "3.12"}
  parsed = [requirements.Requirement(r) for r in reqs]
  return {r.name for r in parsed if r.marker is None or r.marker.evaluate(env)}


def test_python_versions_are_the_supported_ones():
  spec = specifiers.SpecifierSet(_setup_values()["python_requires"])
  assert [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if v in spec] == [
      "3.11", "3.12", "3.13"]


def test_scann_is_an_extra_and_macos_installs_the_rest():
  values = _setup_values()
  linux = _installed(values["INSTALL_REQUIRES"], "linux", "x86_64")
  macos = _installed(values["INSTALL_REQUIRES"], "darwin", "arm64")
  assert "scann" not in linux | macos
  assert [requirements.Requirement(r).name for r in values["EXTRAS_REQUIRE"]["scann"]] == ["scann"]
  # TensorFlow stays on 2.20 (scann 1.4's ops); tensorflow-cpu has no macOS wheels.
  assert "tensorflow-cpu" in linux and "tensorflow" not in linux
  assert "tensorflow" in macos and "tensorflow-cpu" not in macos
  for r in values["INSTALL_REQUIRES"]:
    if requirements.Requirement(r).name in ("tensorflow", "tensorflow-cpu"):
      assert "2.20.0" in r
  for extra in ("cuda", "cuda13", "tpu", "test"):
    assert extra in values["EXTRAS_REQUIRE"]


def test_the_wheel_carries_the_models(tmp_path):
  """A non-editable install has the shipped cropping model and the face model."""
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path), str(REPO_ROOT)], check=True, timeout=600,
                 capture_output=True)
  (wheel,) = tmp_path.glob("procrop_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for name in ("procrop_jax/shipped/fcdb_lite0/params.npz",
               "procrop_jax/shipped/fcdb_lite0/config.json",
               "procrop_jax/weights/faces/blazeface_full_range.tflite",
               "procrop_jax/weights/faces/NOTICE.md"):
    assert name in names, name
