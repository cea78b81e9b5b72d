r"""Writes a CAD dataset through Apache Beam: the same files as `generate.generate_cad`.

For a large photo set (ProCrop's is 242K photos) the per-photo work of `generate.py` runs as
a Beam pipeline instead of on a few threads of one process: the photos still missing variants
are a `beam.Create`, each is made by `generate.VariantMaker` (the function the local path runs),
and the outcomes are summed into one record that this process reads back. The marker,
resumption, parameter check and failure record (`cad_failures.json`) are the local path's, and
a variant's pixels depend only on (seed, photo id, k): a set made here is byte for byte the one
`generate_cad` makes, and either can complete the other.

Beam's runner and its options come from the command line's remaining flags. On one machine:

  python -m procrop_jax.cad.generate_beam --source=/path/to/photos --out=data/manual/my_cad \
      -- --runner=DirectRunner --direct_num_workers=8 --direct_running_mode=multi_processing

On a cluster, name its runner and its options instead (DataflowRunner with --project,
--region, --temp_location; SparkRunner with --spark_master_url; FlinkRunner with
--flink_master). Workers read the photos and write `--out` through plain file paths, so both
must be on a filesystem mounted at the same path on this machine and every worker.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.options import pipeline_options as options_lib

from procrop_jax.cad import generate
from procrop_jax.cad import outpaint as outpaint_lib

# The pipeline's outcome, written by its last step and read back (then removed) by the launcher.
RESULTS = ".cad_beam_results.json"


def _outcome(result: tuple[str, int, str | None]) -> tuple[int, dict[str, str]]:
  """One photo's (photo, variants written, error or None) as a summable outcome.

  A named, annotated function rather than a lambda: Beam infers a lambda's output type, and
  from 2.78 its type check rejects the inferred `dict[str, str | None]` against
  `_sum_outcomes`'s `dict[str, str]`.
  """
  photo, written, error = result
  return written, ({photo: error} if error is not None else {})


def _sum_outcomes(outcomes: Iterable[tuple[int, dict[str, str]]]) -> tuple[int, dict[str, str]]:
  """Sums (variants written, {photo: error}) pairs; Beam combines partial sums with it too."""
  written, errors = 0, {}
  for count, photo_errors in outcomes:
    written += count
    errors.update(photo_errors)
  return written, errors


def _write_results(outcome: tuple[int, dict[str, str]], path: str) -> None:
  written, errors = outcome
  pathlib.Path(path).write_text(json.dumps({"written": written, "errors": errors}))


def pipeline_options(args: Sequence[str] | options_lib.PipelineOptions | None
                     ) -> options_lib.PipelineOptions:
  """Beam options from flags such as ["--runner=DirectRunner"]; the DirectRunner by default."""
  if isinstance(args, options_lib.PipelineOptions):
    return args
  options = options_lib.PipelineOptions(list(args or []))
  standard = options.view_as(options_lib.StandardOptions)
  standard.runner = standard.runner or "DirectRunner"
  return options


def generate_cad_beam(photos: Sequence[str | pathlib.Path] | str, out_dir: str | pathlib.Path,
                      *, variants_per_photo: int = 8, min_area_fraction: float = 0.3,
                      max_area_fraction: float = 0.8, seed: int = 0,
                      max_side: int | None = 1024,
                      outpainter: outpaint_lib.OutPainter | None = None,
                      allow_failures: bool = False,
                      beam_options: Sequence[str] | options_lib.PipelineOptions | None = None
                      ) -> generate.GenerationReport:
  """`generate.generate_cad` with the photos mapped by an Apache Beam pipeline.

  Args:
    photos, out_dir, variants_per_photo, min_area_fraction, max_area_fraction, seed,
      max_side, outpainter, allow_failures: as in `generate.generate_cad`.
    beam_options: the pipeline's flags (e.g. ["--runner=DataflowRunner", "--project=..."])
      or `PipelineOptions`; the DirectRunner when none names a runner.

  Returns:
    What was written, kept and failed, and how long it took (the pipeline included).
  """
  start = time.perf_counter()
  maker, tasks, report = generate.begin_generation(
      photos, out_dir, variants_per_photo=variants_per_photo,
      min_area_fraction=min_area_fraction, max_area_fraction=max_area_fraction, seed=seed,
      max_side=max_side, outpainter=outpainter)
  if tasks:
    results = pathlib.Path(out_dir) / RESULTS
    with beam.Pipeline(options=pipeline_options(beam_options)) as pipeline:
      _ = (pipeline
           | "Photos" >> beam.Create(tasks)
           | "MakeVariants" >> beam.Map(maker)
           | "Outcome" >> beam.Map(_outcome)
           | "Sum" >> beam.CombineGlobally(_sum_outcomes)
           | "Write" >> beam.Map(_write_results, path=str(results)))
    outcome = json.loads(results.read_text())
    results.unlink()
    report.written += outcome["written"]
    for photo, error in outcome["errors"].items():
      report.add(photo, 0, error)
  return generate.finish_generation(report, out_dir, allow_failures=allow_failures,
                                    start=start)


def main(argv: Sequence[str]) -> None:
  flags = FLAGS
  report = generate_cad_beam(flags.source, flags.out, variants_per_photo=flags.variants,
                             min_area_fraction=flags.min_area_fraction,
                             max_area_fraction=flags.max_area_fraction, seed=flags.seed,
                             max_side=flags.max_side or None,
                             allow_failures=flags.allow_failures, beam_options=argv[1:])
  generate.print_report(report, flags.out, allow_failures=flags.allow_failures)


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as flags_lib  # pylint: disable=g-import-not-at-top
  generate.define_flags()
  FLAGS = flags_lib.FLAGS
  app.run(main)
