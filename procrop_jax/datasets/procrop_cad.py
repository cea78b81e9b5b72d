"""ProCrop's CAD format: weakly-labelled crops of out-painted professional photos.

Manual directory (the layout of ProCrop's released set, and what `procrop_jax.cad`
writes):

  images/<id>_<k>.jpg         variant k of professional photo <id>, out-painted
  annotations/<id>_<k>.txt    one box per line, `y1 x1 y2 x2 [score]` in pixels
                              (GAIC's row/column order); the first line is the
                              pseudo-label, where the original photo sits; a missing
                              score is 5; a line with score -2 is ignored.

Refinement rounds (`main --mode=refine_cad`, `procrop_jax.cad.refine_files`) add lines after
the pseudo-label: the model's best crops around it, with their scores; they are read as extra
boxes like any other line. The build records the rounds' state (`metadata.json`,
"annotations_fingerprint"), so that `prepare.ensure_dataset` rebuilds a set refined since.

A set written by `procrop_jax.cad.generate` in which photos failed (its `cad_failures.json`)
is refused unless the failures were allowed: a partial set is never built as if complete.

One split, `train`. Examples are stored grouped by photo (variants of one photo are
adjacent, photos in a fixed pseudo-random order), so that a slice such as
`train[90%:]` holds photos that `train[:90%]` does not (one photo may straddle).

Given Beam options (`DownloadConfig(beam_options=...)`, or `--beam_pipeline_options` on the
command line), the examples are loaded by an Apache Beam pipeline on its runner, in the same
order and with the same counts (`crop_builder.CropBuilder._beam_examples`).
"""

from __future__ import annotations

from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from procrop_jax import photos as photos_lib
from procrop_jax.cad import generate
from procrop_jax.cad import refine_files
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import crop_builder
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema


def list_examples(root: epath.PathLike) -> list[dict[str, Any]]:
  """Pairs images with annotation files, in the stored (photo-grouped) order."""
  root = epath.Path(root)
  images = {p.stem: p for p in sorted((root / "images").glob("*"))
            if p.suffix.lower() in photos_lib.IMAGE_SUFFIXES}
  notes = {p.stem: p for p in sorted((root / "annotations").glob("*.txt"))}
  stems = sorted(set(images) | set(notes),
                 key=lambda s: (crop_builder.stable_key(photos_lib.source_photo_id(s)),
                                photos_lib.source_photo_id(s), s))
  return [{"stem": s, "image": images.get(s), "annotation": notes.get(s)} for s in stems]


def load_example(entry: dict[str, Any], stats: schema.BuildStats) -> dict[str, Any] | None:
  """The example of one `list_examples` entry (its boxes parsed), or None if it is skipped."""
  if entry["annotation"] is None:
    stats.entry()
    stats.skip("missing_annotation", entry["stem"])
    return None
  return crop_builder.build_example(
      entry["stem"], image_files.read_bytes(entry["image"]), entry["boxes_px"], entry["scores"],
      stats, require_first_box=True)


class ProcropCad(crop_builder.CropBuilder):
  """ProCrop's composition-aware dataset (CAD) format."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Examples stored grouped by photo, as documented (1.0.0 stored them in hashed-key "
               "order, so a slice such as train[90%:] shared photos with train[:90%]).",
  }
  DISABLE_SHUFFLING = True  # Keep the photo-grouped order (see the module docstring).
  DESCRIPTION = (
      "Weakly-labelled cropping data in the format of ProCrop's CAD set: professional "
      "photos placed in larger out-painted canvases; the first box (the pseudo-label) "
      "is where the original photo sits. Boxes are x1y1x2y2 in pixels and normalised.")
  HOMEPAGE = "https://bwgzk-keke.github.io/ProCrop/"
  CITATION = r"""@inproceedings{zhang2026procrop,
  title     = {ProCrop: Learning Aesthetic Image Cropping from Professional Compositions},
  author    = {Zhang, Ke and Ding, Tianyu and Jiang, Jiachen and Chen, Tianyi and
               Zharkov, Ilya and Patel, Vishal M. and Liang, Luming},
  booktitle = {AAAI Conference on Artificial Intelligence},
  year      = {2026},
  note      = {arXiv:2505.22490}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Either download ProCrop's released CAD set (linked from
  https://bwgzk-keke.github.io/ProCrop/) and place its `images/` and `annotations/` in
  the manual directory, or generate a set from your own professional photos with
  `python -m procrop_jax.cad.generate --source=<photo folder> --out=<manual dir>`.
  The embedded default generates one from scikit-image's photos on first use.
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_dir(dl_manager)
    if not (root / "annotations").is_dir():
      raise FileNotFoundError(f"{root / 'annotations'} not found.\n"
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    generate.check_complete(root)
    # Read before the annotations: a round writing meanwhile makes the record stale, not wrong.
    self.info.metadata["annotations_fingerprint"] = refine_files.annotations_fingerprint(root)
    entries = list_examples(root)
    # Parse every annotation before reading an image: a malformed file stops the build
    # at once, naming the file and line.
    for entry in entries:
      if entry["annotation"] is not None:
        entry["boxes_px"], entry["scores"] = annotation_files.parse_yxyx_lines(entry["annotation"])
    return {"train": self._generate_examples(entries, "train")}

  def _generate_examples(self, entries: list[dict[str, Any]], split: str):
    """The split's (key, example) pairs; a Beam PTransform of them in a Beam build."""
    if self.uses_beam:
      return self._beam_examples(split, entries, load_example)
    stats = schema.BuildStats(split)
    examples = crop_builder.ordered_map(lambda entry: (entry["stem"], load_example(entry, stats)),
                                        entries, workers=self.WORKERS)
    return self._counted(split, examples, stats)
