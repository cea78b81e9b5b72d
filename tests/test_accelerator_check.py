"""experiments/accelerator_check.py: the main trainer fed by its own input, on any devices."""

import pytest

from experiments import accelerator_check


def test_peak_flops_by_device_kind():
  assert accelerator_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert accelerator_check.peak_tflops("NVIDIA H200") == 989.0
  assert accelerator_check.peak_tflops("TPU v5 lite") == 197.0
  assert accelerator_check.peak_tflops("cpu") is None  # No MFU on a CPU.


@pytest.mark.slow
@pytest.mark.parametrize("canvas_cache", [False, True])
def test_the_check_runs_the_trainer_on_its_own_batches(tiny_config, capsys, tmp_path,
                                                       canvas_cache):
  config = tiny_config.copy_and_resolve_references()
  config.model.num_references = 0
  config.data.canvas_cache.enabled = canvas_cache
  config.data.canvas_cache.dir = str(tmp_path)
  summary = accelerator_check.check(config, steps=2, warmup=1, peak_per_device=1.0)
  phases = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
  assert len(phases) == 4  # compile, fed, compute, summary.
  assert summary["fed_images_per_s"] > 0 and summary["compute_images_per_s"] > 0
  assert 0.0 <= summary["data_wait_share"] <= 1.0
  assert summary["global_batch"] == config.train.batch_size
  assert summary["input"] == ("canvas_cache" if canvas_cache else "tf.data")
  # A given peak gives an MFU wherever XLA reports the step's FLOPs (it does on CPU).
  assert summary["flops_per_step_per_device"] > 0 and summary["mfu"] > 0
