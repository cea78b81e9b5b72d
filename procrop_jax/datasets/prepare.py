r"""Makes sure the configured dataset is built, generating CAD data first where needed.

  python -m procrop_jax.datasets.prepare --config=configs/default.py

builds what `--config`'s `data` section names (and prints the skip report). The
trainer calls `ensure_dataset(config.data, config.cad, seed=config.seed)` before it reads data.
A build is reused while the source recorded beside it (`source_record`) is the configured one.

In a multi-process JAX run (`jax.distributed`) every process calls `ensure_dataset`: each
generates its share of the CAD photos, and process 0 alone builds the dataset while the others
wait. The manual_dir and data_dir must then be on storage shared by all hosts.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax import settings as settings_lib
from procrop_jax.cad import generate
from procrop_jax.datasets import schema
from procrop_jax.datasets import source_record


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  """What preparing a dataset reads from `config.data` (or a benchmark's data config)."""
  dataset: str
  builder_config: str | None
  data_dir: str
  manual_dir: str | None


@dataclasses.dataclass(frozen=True)
class CadSettings:
  """What generating a CAD set reads from `config.cad`."""
  source: str
  variants_per_photo: int
  min_area_fraction: float
  max_area_fraction: float
  workers: int
  max_side: int
  allow_failures: bool


@dataclasses.dataclass(frozen=True)
class Processes:
  """This process's place in a multi-process run, and how the processes wait for each other."""
  index: int = 0
  count: int = 1
  # Waits for every process to pass whether it failed; returns the indices of those that did.
  gather_failures: Callable[[bool], list[int]] = lambda failed: [0] if failed else []


def _processes() -> Processes:
  """The processes of this jax.distributed run; one process where there is none.

  JAX is looked at only where the caller has imported it (the trainer, the evaluator), so the
  dataset command stays JAX-free and never touches an accelerator.
  """
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized() or jax.process_count() == 1:
    return Processes()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def gather_failures(failed: bool) -> list[int]:
    flags = multihost_utils.process_allgather(np.asarray(failed, np.int32))
    return [int(i) for i in np.flatnonzero(flags)]
  return Processes(jax.process_index(), jax.process_count(), gather_failures)


class OtherProcessFailedError(RuntimeError):
  """Another process of a multi-process run failed a step of preparing the dataset."""


def _step(processes: Processes, what: str, work: Callable[[], Any]) -> Any:
  """Runs `work` here, then waits for every process to finish its own.

  Where it failed on any process, it fails on all of them: one that went on alone would wait
  for the others at the next step forever.
  """
  try:
    result = work()
  except Exception:
    processes.gather_failures(True)
    raise
  failed = processes.gather_failures(False)
  if failed:
    raise OtherProcessFailedError(
        f"process {', '.join(map(str, failed))} of {processes.count} could not {what} "
        "(its log says why)")
  return result


class SourceChangedError(RuntimeError):
  """A prepared build was made from another source, and there is nothing to rebuild it from."""


def _resolve(path: str | None) -> str | None:
  """Relative paths (the config's defaults) are relative to the working directory."""
  return os.path.abspath(os.path.expanduser(path)) if path else None


def _should_generate_cad(manual_dir: pathlib.Path, cad: CadSettings) -> bool:
  """Generate into an empty directory or one that the generator made (to finish it).

  A directory that holds other data (e.g. ProCrop's released CAD set) is left alone.
  """
  if not cad.source:
    return False
  if (manual_dir / generate.MARKER).exists():
    return True
  return not manual_dir.exists() or not any(manual_dir.iterdir())


def _generation(cad: CadSettings, seed: int) -> dict[str, Any]:
  """The generation parameters that shape the set (recorded with its build)."""
  source = cad.source if cad.source == "skimage" else _resolve(cad.source)
  return {"source": source, "seed": int(seed), "variants_per_photo": int(cad.variants_per_photo),
          "min_area_fraction": float(cad.min_area_fraction),
          "max_area_fraction": float(cad.max_area_fraction), "max_side": int(cad.max_side)}


def _generate_cad(manual_dir: str, cad: CadSettings, seed: int, processes: Processes) -> None:
  """Generates this process's share; returns once every process has finished its own."""
  share = f" (share {processes.index + 1} of {processes.count})" if processes.count > 1 else ""
  print(f"Generating CAD data from {cad.source!r} into {manual_dir}{share}", flush=True)
  report = _step(processes, "generate its CAD share", lambda: generate.generate_cad(
      cad.source, manual_dir, variants_per_photo=cad.variants_per_photo,
      min_area_fraction=cad.min_area_fraction, max_area_fraction=cad.max_area_fraction,
      workers=cad.workers, seed=seed, max_side=cad.max_side,
      allow_failures=bool(cad.allow_failures), process_index=processes.index,
      process_count=processes.count))
  print(f"CAD{share}: {report.written} images written ({report.images_per_second:.1f}/s), "
        f"{report.kept} already there, {len(report.failed_photos)} photos failed", flush=True)
  if report.errors:
    print(f"CAD{share}: {report.failure_summary()}", flush=True)
  def merge_failures() -> None:  # Once every share is done.
    if processes.index == 0:
      generate.merge_failure_parts(manual_dir, process_count=processes.count,
                                   allow_failures=bool(cad.allow_failures))
  if processes.count > 1:
    _step(processes, "combine the CAD failure records", merge_failures)
  generate.check_complete(manual_dir)  # Before TFDS starts: the error is the first thing seen.


def ensure_dataset(config_data: Any, cad_config: Any = None, *,
                   seed: int | None = None, rebuild_stale: bool = True
                   ) -> tfds.core.DatasetBuilder:
  """Builds the dataset of `config_data` into its data_dir unless it is there, built from it.

  A prepared build is reused only when the source recorded with it (`source_record`: the
  manual directory, its files, and the CAD generation parameters) is the one named now; else
  it is rebuilt, and a build that predates the records is rebuilt once. Where there is nothing
  to rebuild from (the manual directory is missing or empty), a build of the same directory is
  kept with a warning, and one of another directory is refused. With `rebuild_stale=False`
  any prepared build is used as it is (a CAD refinement round rewrites the annotations it reads
  the images of; the next training run rebuilds).

  For `procrop_cad` with `cad_config.source` set ("skimage" for the embedded default,
  or a folder of professional photos), the CAD images are first generated into
  `config_data.manual_dir` (only the missing ones: the generation is restartable). A prepared
  `procrop_cad` set whose annotations a refinement round changed since it was built is built
  again (unless `rebuild_stale` is False: the refinement round itself only needs the images).

  In a multi-process JAX run every process must call it: each generates its share of the CAD
  photos (`generate.process_share`) into the manual directory, then process 0 alone builds the
  dataset while the others wait, and they open its build. The manual_dir and data_dir must be
  on storage shared by all hosts: where a host cannot see the others' files, process 0 stops
  with an IncompleteCADError that names the missing processes' records. A step that fails on
  one process fails on all (OtherProcessFailedError on the others).

  Args:
    config_data: `config.data` (dataset, builder_config, data_dir, manual_dir).
    cad_config: `config.cad`, or None: no CAD generation.
    seed: `config.seed`, the CAD generation's seed; required with `cad_config`.

  Returns:
    The prepared builder. Its skip report: `schema.build_report(builder)`.

  Raises:
    SourceChangedError: the build was made from another source, and the one named now is
      missing or empty.
    procrop_jax.cad.generate.IncompleteCADError: photos failed during CAD generation (the
      message counts them and names the first few) and `cad_config.allow_failures` is not set.
    procrop_jax.cad.generate.GenerationMismatchError: the manual directory holds CAD made with
      other generation parameters.
    OtherProcessFailedError: in a multi-process run, another process failed a step.
  """
  processes = _processes()
  data = settings_lib.read(BuildSettings, config_data, "config.data")
  cad = None
  if cad_config is not None:
    if seed is None:
      raise ValueError("ensure_dataset with a CAD config needs seed=config.seed")
    cad = settings_lib.read(CadSettings, cad_config, "config.cad")
  name, config_name = data.dataset, data.builder_config or None
  data_dir, manual_dir = _resolve(data.data_dir), _resolve(data.manual_dir)
  generation = None
  if name == "procrop_cad" and manual_dir and cad and _should_generate_cad(
      pathlib.Path(manual_dir), cad):
    generation = _generation(cad, seed)
  wanted = source_record.describe(manual_dir, generation)

  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  stale = builder.is_prepared()
  if stale:
    recorded = source_record.read(builder.data_dir)
    if not rebuild_stale or source_record.matches(recorded, wanted):
      if (rebuild_stale and recorded["fingerprint"] != wanted["fingerprint"]
          and processes.index == 0):  # Same bytes, new file times: the next check is a stat.
        logging.info("%s: the files of %s have new times but the same bytes; keeping the build",
                     builder.info.full_name, manual_dir)
        source_record.write(builder.data_dir, {**recorded, "fingerprint": wanted["fingerprint"]})
      logging.info("%s is prepared in %s", builder.info.full_name, builder.data_dir)
      return builder
    if manual_dir and not wanted["files"] and not generation:  # Nothing to rebuild from.
      if recorded is None or source_record.same_place(recorded, wanted):
        logging.warning("%s in %s: %s has no files to rebuild from; keeping the build made "
                        "from %s", builder.info.full_name, builder.data_dir, manual_dir,
                        source_record.summary(recorded))
        return builder
      raise SourceChangedError(
          f"{builder.info.full_name} in {builder.data_dir} was built from "
          f"{source_record.summary(recorded)}, but the config names {manual_dir}, which has no "
          "files: put the data there, or use another data_dir")
    print(f"Rebuilding {builder.info.full_name} in {builder.data_dir}: it was built from "
          f"{source_record.summary(recorded)}; the config names "
          f"{source_record.summary(wanted)}", flush=True)

  # Every process has read the build and the source as they were before anyone writes.
  _step(processes, "check the dataset", lambda: None)
  start = time.perf_counter()
  if generation:
    _generate_cad(manual_dir, cad, seed, processes)
  def build() -> None:
    if processes.index == 0:  # One builder: builds into the same data_dir would race.
      _build(name, config_name, data_dir, manual_dir, generation, stale=stale)
  _step(processes, f"build {name}", build)
  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  print(f"Prepared {builder.info.full_name} in {time.perf_counter() - start:.1f} s",
        flush=True)
  return builder


def _build(name: str, config_name: str | None, data_dir: str | None, manual_dir: str | None,
           generation: dict[str, Any] | None, *, stale: bool) -> None:
  """Builds (or rebuilds) the dataset, records its source and prints its skip report."""
  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  if stale:  # Removed only now: a generation that refuses leaves the old build in place.
    shutil.rmtree(builder.data_dir)
    builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  print(f"Building {builder.info.full_name} from {manual_dir} into {builder.data_dir}",
        flush=True)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  builder = tfds.builder(name, config=config_name, data_dir=data_dir)
  # Described after generation and build: the files as the build read them.
  source_record.write(builder.data_dir,
                      source_record.describe(manual_dir, generation, content=True))
  for split, counts in schema.build_report(builder).items():
    print(f"  {split}: {counts['kept']} of {counts['entries']} kept; skipped "
          f"{counts['skipped'] or 'none'}; boxes dropped {counts['dropped_boxes'] or 'none'}",
          flush=True)


def main(argv: Sequence[str]) -> None:
  del argv
  config = _CONFIG.value
  ensure_dataset(config.data, config.cad, seed=config.seed)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.",
                                            lock_config=True)
  app.run(main)
