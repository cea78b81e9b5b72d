r"""Makes sure the configured dataset is built, generating CAD data first where needed.

  python -m procrop_jax.datasets.prepare --config=configs/default.py

builds what `--config`'s `data` section names (and prints the skip report). The
trainer calls `ensure_dataset(config.data, config.cad)` before it reads data.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from typing import Any, Sequence

from absl import logging
import tensorflow_datasets as tfds

from procrop_jax.cad import generate
from procrop_jax.cad import refine_files
from procrop_jax.datasets import schema


def _get(config: Any, name: str, default: Any = None) -> Any:
  if config is None:
    return default
  if isinstance(config, dict):
    return config.get(name, default)
  return getattr(config, name, default)


def _resolve(path: str | None) -> str | None:
  """Relative paths (the config's defaults) are relative to the working directory."""
  return os.path.abspath(os.path.expanduser(path)) if path else path


def _should_generate_cad(manual_dir: pathlib.Path, cad_config: Any) -> bool:
  """Generate into an empty directory or one that the generator made (to finish it).

  A directory that holds other data (e.g. ProCrop's released CAD set) is left alone.
  """
  if not _get(cad_config, "source"):
    return False
  if (manual_dir / generate.MARKER).exists():
    return True
  return not manual_dir.exists() or not any(manual_dir.iterdir())


def _refined_since_build(builder: tfds.core.DatasetBuilder, manual_dir: str | None) -> bool:
  """Whether a prepared procrop_cad set's annotations were refined after it was built."""
  if builder.name != "procrop_cad" or not manual_dir:
    return False
  built = (builder.info.metadata or {}).get("annotations_fingerprint", "")
  return built != refine_files.annotations_fingerprint(manual_dir)


def ensure_dataset(config_data: Any, cad_config: Any = None, *,
                   seed: int = 0, rebuild_stale: bool = True) -> tfds.core.DatasetBuilder:
  """Builds the dataset of `config_data` into its data_dir unless it is already there.

  For `procrop_cad` with `cad_config.source` set ("skimage" for the embedded default,
  or a folder of professional photos), the CAD images are first generated into
  `config_data.manual_dir` (only the missing ones: the generation is restartable). A prepared
  `procrop_cad` set whose annotations a refinement round changed since it was built is built
  again (unless `rebuild_stale` is False: the refinement round itself only needs the images).

  Args:
    config_data: `config.data` (dataset, builder_config, data_dir, manual_dir).
    cad_config: `config.cad` (source, variants_per_photo, min_area_fraction,
      max_area_fraction, workers, and optionally max_side and allow_failures: build the set
      even though some photos failed to generate; default False), or None.
    seed: the CAD generation's seed.

  Returns:
    The prepared builder. Its skip report: `schema.build_report(builder)`.

  Raises:
    procrop_jax.cad.generate.IncompleteCADError: photos failed during CAD generation (the
      message counts them and names the first few) and `cad_config.allow_failures` is not set.
  """
  name = _get(config_data, "dataset")
  config_name = _get(config_data, "builder_config") or None
  data_dir = _resolve(_get(config_data, "data_dir"))
  manual_dir = _resolve(_get(config_data, "manual_dir"))
  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  if builder.is_prepared():
    if not (rebuild_stale and _refined_since_build(builder, manual_dir)):
      logging.info("%s is prepared in %s", builder.info.full_name, builder.data_dir)
      return builder
    print(f"Rebuilding {builder.info.full_name}: its annotations in {manual_dir} were refined "
          "since it was built", flush=True)
    shutil.rmtree(builder.data_dir)
    builder = tfds.builder(name, config=config_name, data_dir=data_dir)

  start = time.perf_counter()
  if name == "procrop_cad" and manual_dir and _should_generate_cad(pathlib.Path(manual_dir),
                                                                    cad_config):
    print(f"Generating CAD data from {_get(cad_config, 'source')!r} into {manual_dir}",
          flush=True)
    report = generate.generate_cad(
        _get(cad_config, "source"), manual_dir,
        variants_per_photo=_get(cad_config, "variants_per_photo", 8),
        min_area_fraction=_get(cad_config, "min_area_fraction", 0.3),
        max_area_fraction=_get(cad_config, "max_area_fraction", 0.8),
        workers=_get(cad_config, "workers", 2), seed=seed,
        max_side=_get(cad_config, "max_side", 1024),
        allow_failures=bool(_get(cad_config, "allow_failures", False)))
    print(f"CAD: {report.written} images written ({report.images_per_second:.1f}/s), "
          f"{report.kept} already there, {len(report.failed_photos)} photos failed",
          flush=True)
    if report.errors:
      print(f"CAD: {report.failure_summary()}", flush=True)
    generate.check_complete(manual_dir)  # Before TFDS starts: the error is the first thing seen.

  print(f"Building {builder.info.full_name} from {manual_dir} into {builder.data_dir}",
        flush=True)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  for split, counts in schema.build_report(builder).items():
    print(f"  {split}: {counts['kept']} of {counts['entries']} kept; skipped "
          f"{counts['skipped'] or 'none'}; boxes dropped {counts['dropped_boxes'] or 'none'}",
          flush=True)
  print(f"Prepared {builder.info.full_name} in {time.perf_counter() - start:.1f} s",
        flush=True)
  return builder


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  ensure_dataset(config.data, config.get("cad"), seed=config.get("seed", 0))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                            lock_config=True)
  app.run(main)
