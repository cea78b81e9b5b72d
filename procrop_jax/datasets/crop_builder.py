"""Examples assembled from images and annotations, and the base of the cropping builders."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import inspect
import json
import zlib
from typing import Any, Callable, Iterable, Iterator, TypeVar

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema


def make_example(image_id: str, image: image_files.LoadedImage, boxes_px: np.ndarray,
                 scores: np.ndarray) -> dict[str, Any]:
  """The feature dict of one example (boxes already cleaned, upright frame)."""
  boxes_px = np.asarray(boxes_px, np.float32).reshape(-1, 4)
  scale = np.array([image.width, image.height, image.width, image.height], np.float32)
  return {
      "image": image.encoded,
      "image_id": image_id,
      "image_size": np.array([image.height, image.width], np.int32),
      "boxes_px": boxes_px,
      "boxes": np.clip(boxes_px / scale, 0.0, 1.0).astype(np.float32),
      "box_scores": np.asarray(scores, np.float32).reshape(-1),
  }


def build_example(image_id: str, data: bytes | None, boxes_px: np.ndarray | None,
                  scores: np.ndarray | None, stats: schema.BuildStats, *,
                  require_box: bool = True, require_first_box: bool = False,
                  check_placeholder: bool = True,
                  pairs_px: np.ndarray | None = None,
                  pair_votes: np.ndarray | None = None) -> dict[str, Any] | None:
  """Loads, validates and assembles one example; counts and returns None if skipped.

  Args:
    image_id: the example's id.
    data: the image file's bytes, or None where the file is missing.
    boxes_px: [N, 4] x1y1x2y2 in pixels of the image as stored (before EXIF rotation).
    scores: [N].
    stats: counters of the split.
    require_box: skip the example when no usable box is left.
    require_first_box: skip it when the first box is unusable (ProCrop's pseudo-label).
    check_placeholder: detect near-blank placeholder images.
    pairs_px: optional [P, 2, 4] crop pairs (x1y1x2y2 pixels of the image as stored) that people
      compared; with `pair_votes` [P, 2] (votes for each crop) they become the "pair_boxes" and
      "pair_votes" features (`pair_features`).
    pair_votes: see pairs_px.
  """
  stats.entry()
  try:
    if data is None:
      raise schema.SkipExample("missing_file")
    image = image_files.load_image(data, check_placeholder=check_placeholder)
  except schema.SkipExample as e:
    stats.skip(e.reason, image_id)
    return None
  if boxes_px is None:
    boxes_px, scores = np.zeros((0, 4)), np.zeros((0,))
  boxes_px = image_files.orient_boxes(boxes_px, image.orientation, image.stored_width,
                                      image.stored_height)
  kept, kept_scores, reasons = annotation_files.clean_boxes(
      boxes_px, scores, width=image.width, height=image.height, stats=stats)
  if (require_first_box and reasons and reasons[0]) or (require_box and not len(kept)):
    stats.skip(next((r for r in reasons if r), "no_valid_box"), image_id)
    return None
  stats.keep(image.conversion)
  example = make_example(image_id, image, kept, kept_scores)
  if pairs_px is not None:
    example.update(pair_features(image, pairs_px, pair_votes, stats))
  return example


def pair_features(image: image_files.LoadedImage, pairs_px: np.ndarray, votes: np.ndarray,
                  stats: schema.BuildStats | None = None) -> dict[str, np.ndarray]:
  """Compared crop pairs in the upright frame, normalised; a pair with an unusable box is dropped.

  Returns {"pair_boxes": float32 [P', 2, 4] normalised x1y1x2y2, "pair_votes": int32 [P', 2]}.
  """
  pairs_px = np.asarray(pairs_px, np.float64).reshape(-1, 4)
  votes = np.asarray(votes, np.int32).reshape(-1, 2)
  upright = image_files.orient_boxes(pairs_px, image.orientation, image.stored_width,
                                     image.stored_height)
  cleaned, _, reasons = annotation_files.clean_boxes(upright, np.zeros(len(upright)),
                                                     width=image.width, height=image.height)
  usable = np.array([not r for r in reasons], bool).reshape(-1, 2)
  boxes = np.zeros((len(usable) * 2, 4), np.float32)
  boxes[np.array([not r for r in reasons], bool)] = cleaned
  keep = usable.all(axis=1)
  if stats is not None:
    for _ in range(int((~keep).sum())):
      stats.drop_box("pair_box_unusable")
  scale = np.array([image.width, image.height, image.width, image.height], np.float32)
  boxes = np.clip(boxes / scale, 0.0, 1.0).reshape(-1, 2, 4)[keep]
  return {"pair_boxes": boxes.astype(np.float32), "pair_votes": votes[keep]}


def _sum_reports(reports: Iterable[dict[str, Any]], *, split: str) -> dict[str, Any]:
  """Sums `BuildStats.as_dict()` reports; Beam combines partial sums with it too."""
  stats = schema.BuildStats(split)
  for report in reports:
    stats.add(report)
  return stats.as_dict()


def _write_json(value: Any, path: str) -> None:
  epath.Path(path).write_text(json.dumps(value))


def stable_key(text: str) -> int:
  """A hash of `text` that is the same in every process and run."""
  return zlib.crc32(text.encode("utf-8"))


# --------------------------------------------------------------------- builders

# Written by a Beam build's pipeline beside the split's files: the split's counts, which the
# builder stores in metadata.json and removes (`CropBuilder._process_pipeline_result`).
_BEAM_REPORT = "{split}.build_report.json"

_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int = 2,
                window: int = 64) -> Iterator[_R]:
  """`map` over a small thread pool, results in input order.

  Image decoding and encoding release the GIL, so threads overlap them.
  """
  if workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: collections.deque[concurrent.futures.Future[_R]] = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


class CropBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the cropping builders: common schema, skip accounting, ArrayRecord.

  Subclasses set `DESCRIPTION`, `CITATION`, `HOMEPAGE`, `MANUAL_DOWNLOAD_INSTRUCTIONS`
  and implement `_split_generators`, wrapping each split's examples in
  `self._counted(split, examples, stats)`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="As released.")]
  DESCRIPTION = ""
  CITATION = ""
  HOMEPAGE = ""
  # True keeps the examples in the order `_generate_examples` gives them (TFDS reads this only
  # from `DatasetInfo`, which `_info` passes it to); False stores them in hashed-key order.
  DISABLE_SHUFFLING = False
  # Threads that decode images while a split is generated.
  WORKERS = 2
  # Whether this build runs through Apache Beam (set by `_download_and_prepare`).
  uses_beam = False

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for packages that are
    # not zipped; the class's file is all it is used for here.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # ArrayRecord gives the input pipeline random access (an O(1) seek to any step).
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=schema.features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=self.DISABLE_SHUFFLING,
    )

  def _counted(self, split: str, examples: Iterable[tuple[str, dict[str, Any] | None]],
               stats: schema.BuildStats) -> Iterator[tuple[str, dict[str, Any]]]:
    """Passes kept examples through; logs and stores the counts when the split ends."""
    for key, example in examples:
      if example is not None:
        yield key, example
    self._store_stats(stats)

  def _store_stats(self, stats: schema.BuildStats) -> None:
    """Logs a finished split's counts and stores them in the dataset's metadata."""
    logging.info("%s %s", self.name, stats.summary())
    if stats.skipped or stats.dropped_boxes or stats.converted:
      print(f"[{self.name}] {stats.summary()}", flush=True)
    report = dict(self.info.metadata.get("build_report", {}))
    report[stats.split] = stats.as_dict()
    self.info.metadata["build_report"] = report

  # ------------------------------------------------------------------ Apache Beam

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                            download_config: tfds.download.DownloadConfig) -> None:
    # A caller that gives Beam a runner or options asks for a Beam build: the builders that
    # support one (`_beam_examples`) then return a PTransform, which TFDS runs on that runner.
    self.uses_beam = (download_config.beam_runner is not None
                      or download_config.beam_options is not None)
    self._beam_reports: dict[str, epath.Path] = {}
    super()._download_and_prepare(dl_manager, download_config)

  def _beam_examples(self, split: str, entries: list[_T],
                     load: Callable[[_T, schema.BuildStats], dict[str, Any] | None]):
    """A split's examples as a Beam PTransform: `load(entry, stats)` on Beam's workers.

    Each example's key is its entry's position. TFDS's Beam writer orders examples by key when
    shuffling is disabled (and hashes the key otherwise), so the stored order is the entries'
    order, as in the local build. The counts of each entry are summed in the pipeline and
    written beside the split, to be stored like the local build's (`_process_pipeline_result`).
    """
    beam = tfds.core.lazy_imports.apache_beam
    report_path = epath.Path(self.data_dir) / _BEAM_REPORT.format(split=split)
    self._beam_reports[split] = report_path

    def load_one(indexed):  # Closes over no builder: Beam pickles it to its workers.
      index, entry = indexed
      stats = schema.BuildStats(split)
      return index, load(entry, stats), stats.as_dict()

    @beam.ptransform_fn
    def examples(root):
      loaded = (root
                | "Entries" >> beam.Create(list(enumerate(entries)))
                | "Load" >> beam.Map(load_one))
      _ = (loaded
           | "Counts" >> beam.Map(lambda item: item[2])
           | "SumCounts" >> beam.CombineGlobally(functools.partial(_sum_reports, split=split))
           | "WriteCounts" >> beam.Map(_write_json, path=str(report_path)))
      return (loaded
              | "Kept" >> beam.Filter(lambda item: item[1] is not None)
              | "Examples" >> beam.Map(lambda item: (item[0], item[1])))

    return examples()  # pylint: disable=no-value-for-parameter

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Stores the counts that a Beam build's pipeline wrote (TFDS calls this after it ran)."""
    del pipeline_result
    for split, path in self._beam_reports.items():
      stats = schema.BuildStats(split)
      stats.add(json.loads(path.read_text()))
      path.unlink()
      self._store_stats(stats)

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
    return epath.Path(dl_manager.manual_dir)
