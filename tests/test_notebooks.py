"""experiments/colab_quickstart.ipynb: committed with its outputs, and it still runs headless.

The run is the notebook as a user opens it in a checkout: its first cell finds procrop_jax
importable and installs nothing, the upload cell is skipped outside Colab, and the training part
runs the tiny config on CPU (about 1.5 minutes on 2 cores).
"""

import json
import os

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "experiments" / "colab_quickstart.ipynb"
NUM_STEPS = 20  # The notebook's NUM_STEPS.


def _cells(nb) -> dict[str, dict]:
  """Code cells by their tag."""
  return {c["metadata"]["tags"][0]: c for c in nb["cells"] if c["cell_type"] == "code"}


def _join(text: str | list[str]) -> str:
  return "".join(text)  # Saved notebooks hold multi-line strings as lists of lines.


def _text(cell) -> str:
  return "".join(_join(o["text"]) for o in cell["outputs"] if o["output_type"] == "stream")


def _images(cell) -> list[str]:
  return [o["data"]["image/png"] for o in cell["outputs"] if "image/png" in o.get("data", {})]


def _check_outputs(nb) -> None:
  """What every run of the notebook (committed or fresh) must have produced."""
  cells = _cells(nb)
  for tag, cell in cells.items():
    errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
    assert not errors, f"cell {tag}: {errors}"
    assert cell["execution_count"], f"cell {tag} was not run"
  assert "nothing to install" in _text(cells["install"])
  assert "devices:" in _text(cells["setup"])
  sample = _text(cells["sample"])
  for label in ("free #1", "free #3", "1:1 #1", "16:9 #1"):
    assert label in sample
  assert len(_images(cells["sample"])) == 2  # The boxes over the photo; the aspect crops.
  assert "upload skipped" in _text(cells["upload"])
  assert f"trained {NUM_STEPS} steps" in _text(cells["train"])
  assert len(_images(cells["loss-plot"])) == 1
  assert f"{NUM_STEPS} logged steps" in _text(cells["loss-plot"])


def test_the_committed_notebook_has_its_outputs_and_stays_small():
  assert NOTEBOOK.stat().st_size < 1_000_000
  nb = json.loads(NOTEBOOK.read_text())
  _check_outputs(nb)
  install = _join(_cells(nb)["install"]["source"])
  for needed in ("REPO_URL", "git", "clone", '"[cuda]"', '"[cuda13]"', '"[tpu]"'):
    assert needed in install


def test_the_install_cell_picks_the_extra_of_the_runtime(monkeypatch):
  nb = json.loads(NOTEBOOK.read_text())
  source = _join(_cells(nb)["install"]["source"])
  namespace: dict = {}
  exec(source.split("RUNTIME, EXTRA =")[0], namespace)  # Only the definitions.  # pylint: disable=exec-used
  detect = namespace["detect_runtime"]
  glob, shutil, subprocess = namespace["glob"], namespace["shutil"], namespace["subprocess"]

  def fake_smi(cuda):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if cuda else None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout=f"| NVIDIA-SMI 580.0   Driver Version: 580.0   CUDA Version: {cuda} |"))

  monkeypatch.setattr(glob, "glob", lambda pattern: [])
  fake_smi(None)
  assert detect() == ("cpu", "")
  fake_smi("12.4")
  assert detect() == ("gpu", "[cuda]")
  fake_smi("13.0")
  assert detect() == ("gpu", "[cuda13]")
  monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/vfio/0"] if "vfio" in pattern else [])
  assert detect() == ("tpu", "[tpu]")


@pytest.mark.slow
def test_the_notebook_runs_headless_on_cpu(monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  # The kernel imports this checkout, on one CPU device (not the suite's 8 fake ones).
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
  for cell in nb.cells:  # Nothing left over from the committed run.
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()  # Raises CellExecutionError naming the cell that failed.
  _check_outputs(json.loads(nbformat.writes(nb)))
