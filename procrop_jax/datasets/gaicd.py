"""GAICD: the Grid Anchor based Image Cropping Database (Zeng et al., CVPR 2019 / TPAMI 2020).

1,236 images, each with about 90 candidate crops scored by mean opinion score (1-5).
The manual directory holds the images anywhere below it (e.g. `images/train/*.jpg`,
`images/test/*.jpg`, or flat) and one of these annotation sources, tried in order:

  image_crop.json + original_data_split.json
      {"<name>.jpg": {"bbox": [[x1, y1, x2, y2], ...], "score": [...]}} and
      {"train": [names], "test": [names]}  (1,036 / 200)
  imdb_GAIC1000.mat
      the original MATLAB struct: imdb.bbox.boxes{i} is 4 x N rows (y1, x1, y2, x2),
      imdb.bbox.gt_scores{i} 1 x N, imdb.images.{trainSet,valSet,testSet} 1-based
      indices (1,000 / 36 / 200); train and val together form `train`, as in the JSON.
  annotations/<name>.txt with images/{train,test}/<name>.jpg
      the GitHub release: one `y1 x1 y2 x2 score` line per candidate.

Splits `train` (1,036) and `test` (200) whatever the source.
"""

from __future__ import annotations

from typing import Any, Iterator

from etils import epath
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from procrop_jax import photos
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import crop_builder
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema


def parse_json(crop_path: epath.PathLike, split_path: epath.PathLike
               ) -> dict[str, list[dict[str, Any]]]:
  """Reads image_crop.json and original_data_split.json into per-split entries.

  Returns:
    {"train": [{"image_name", "boxes_px" [N, 4] x1y1x2y2, "scores" [N]}], "test": [...]}.
  """
  annotations = {}
  for name, value, line in annotation_files.iter_json_items(crop_path):
    if not isinstance(value, dict) or "bbox" not in value or "score" not in value:
      raise annotation_files.AnnotationError(crop_path, line,
                                             f"{name}: expected an object with 'bbox' and 'score'")
    boxes = annotation_files.as_box_array(value["bbox"], path=crop_path, line=line,
                                          what=f"{name} bbox")
    try:
      scores = np.asarray(value["score"], np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
      raise annotation_files.AnnotationError(crop_path, line,
                                             f"{name}: scores are not numbers") from e
    if len(scores) != len(boxes):
      raise annotation_files.AnnotationError(crop_path, line,
                                             f"{name}: {len(boxes)} boxes but {len(scores)} scores")
    annotations[name] = (boxes, scores)
  split_names: dict[str, list[str]] = {}
  for split, names, line in annotation_files.iter_json_items(split_path):
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
      raise annotation_files.AnnotationError(split_path, line, f"{split}: expected a list of names")
    missing = [n for n in names if n not in annotations]
    if missing:
      raise annotation_files.AnnotationError(split_path, line,
                                             f"{split}: {len(missing)} names not in {crop_path}, "
                                             f"e.g. {missing[0]!r}")
    split_names[str(split)] = names
  return {
      split: [{"image_name": n, "boxes_px": annotations[n][0], "scores": annotations[n][1]}
              for n in names]
      for split, names in split_names.items()
  }


def parse_mat(path: epath.PathLike) -> dict[str, list[dict[str, Any]]]:
  """Reads the original imdb_GAIC1000.mat into per-split entries (see `parse_json`)."""
  path = epath.Path(path)
  try:
    with path.open("rb") as f:
      imdb = scipy.io.loadmat(f)["imdb"][0, 0]
    names = [str(np.ravel(p)[0]).replace("\\", "/").rsplit("/", 1)[-1]
             for p in imdb["meta"][0, 0]["img_path"].ravel()]
    boxes = imdb["bbox"][0, 0]["boxes"].ravel()
    scores = imdb["bbox"][0, 0]["gt_scores"].ravel()
    images = imdb["images"][0, 0]
    sets = {k: np.asarray(images[k]).ravel().astype(int) for k in ("trainSet", "valSet",
                                                                   "testSet")}
  except Exception as e:  # pylint: disable=broad-except
    raise annotation_files.AnnotationError(path, None, f"not a GAICD imdb struct: {e}") from e
  if not len(names) == len(boxes) == len(scores):
    raise annotation_files.AnnotationError(path, None, f"{len(names)} image paths but {len(boxes)} "
                                           f"box sets and {len(scores)} score sets")

  def entry(i):
    b = np.asarray(boxes[i], np.float64)
    s = np.asarray(scores[i], np.float64).reshape(-1)
    if b.ndim != 2 or b.shape[0] != 4 or b.shape[1] != len(s):
      raise annotation_files.AnnotationError(
          path, None, f"image {i + 1} ({names[i]}): boxes of shape {b.shape} for {len(s)} "
          "scores (expected 4 x N)")
    # Rows are (y1, x1, y2, x2).
    return {"image_name": names[i], "boxes_px": b[[1, 0, 3, 2]].T, "scores": s}

  order = {"train": np.sort(np.concatenate([sets["trainSet"], sets["valSet"]])),
           "test": sets["testSet"]}
  return {split: [entry(i - 1) for i in idx] for split, idx in order.items()}


def parse_txt_release(root: epath.PathLike) -> dict[str, list[dict[str, Any]]]:
  """Reads the GitHub release: annotations/<stem>.txt, split by images/{train,test}/."""
  root = epath.Path(root)
  entries: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
  for split in entries:
    for image_path in sorted((root / "images" / split).glob("*")):
      if image_path.suffix.lower() not in photos.IMAGE_SUFFIXES:
        continue
      txt = root / "annotations" / f"{image_path.stem}.txt"
      if not txt.exists():
        entries[split].append({"image_name": image_path.name, "boxes_px": None,
                               "scores": None, "missing_annotation": True})
        continue
      boxes, scores = annotation_files.parse_yxyx_lines(txt)
      entries[split].append({"image_name": image_path.name, "boxes_px": boxes,
                             "scores": scores})
  return entries


class Gaicd(crop_builder.CropBuilder):
  """GAICD: dense candidate crops with mean opinion scores."""

  DESCRIPTION = (
      "Grid Anchor based Image Cropping Database (GAICD): 1,236 images (1,036 train / "
      "200 test), each with about 90 candidate crops annotated with mean opinion "
      "scores on a 1-5 scale. Boxes are x1y1x2y2 in pixels and normalised.")
  HOMEPAGE = "https://github.com/HuiZeng/Grid-Anchor-based-Image-Cropping"
  CITATION = r"""@inproceedings{zeng2019reliable,
  title     = {Reliable and Efficient Image Cropping: A Grid Anchor based Approach},
  author    = {Zeng, Hui and Li, Lida and Cao, Zisheng and Zhang, Lei},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2019}
}
@article{zeng2020grid,
  title   = {Grid Anchor based Image Cropping: A New Benchmark and An Efficient Model},
  author  = {Zeng, Hui and Li, Lida and Cao, Zisheng and Zhang, Lei},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year    = {2020}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the GAICD images and annotations from
  https://github.com/HuiZeng/Grid-Anchor-based-Image-Cropping (dataset links in its
  README) and place in the manual directory (default `data/manual/gaicd`): the images
  (any folder layout below it), and either `image_crop.json` +
  `original_data_split.json`, or `imdb_GAIC1000.mat`, or the release's `annotations/`
  folder of per-image .txt files next to `images/train` and `images/test`.
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_dir(dl_manager)
    if (root / "image_crop.json").exists() and (root / "original_data_split.json").exists():
      splits = parse_json(root / "image_crop.json", root / "original_data_split.json")
    elif (root / "imdb_GAIC1000.mat").exists():
      splits = parse_mat(root / "imdb_GAIC1000.mat")
    elif (root / "annotations").is_dir():
      splits = parse_txt_release(root)
    else:
      raise FileNotFoundError(f"No GAICD annotations in {root}.\n"
                              f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    images = image_files.index_images(root)
    return {split: self._generate_examples(entries, images, split)
            for split, entries in splits.items() if split in ("train", "test")}

  def _generate_examples(self, entries: list[dict[str, Any]], images: dict[str, epath.Path],
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    stats = schema.BuildStats(split)

    def load(entry):
      name = entry["image_name"]
      if entry.get("missing_annotation"):
        stats.entry()
        stats.skip("missing_annotation", name)
        return name, None
      return name, crop_builder.build_example(name, image_files.read_bytes(images.get(name)),
                                              entry["boxes_px"], entry["scores"], stats)

    yield from self._counted(split, crop_builder.ordered_map(load, entries, workers=self.WORKERS),
                             stats)
