"""Expert crop regions of a labelled split as a retrieval photo folder."""

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from procrop_jax import input_pipeline
from procrop_jax import photos
from procrop_jax.retrieval import crop_regions
from procrop_jax.retrieval import database


def test_writes_each_examples_best_crop_under_its_own_id_and_skips_done_files(tiny_config,
                                                                             tmp_path):
  split = tiny_config.data.train_split
  counts = crop_regions.export_crop_regions(tiny_config.data, split, tmp_path / "crops")
  source = input_pipeline.load_builder(input_pipeline.DataSettings.from_config(
      tiny_config.data)).as_data_source(split)
  assert counts == {"written": len(source), "kept": 0, "no_box": 0}
  for i in range(len(source)):
    example = source[i]
    image_id = example["image_id"]
    image_id = image_id.decode() if isinstance(image_id, bytes) else image_id
    path = (tmp_path / "crops" / image_id).with_suffix(".jpg")
    x1, y1, x2, y2 = np.round(example["boxes_px"][np.argmax(example["box_scores"])])
    with Image.open(path) as crop:
      assert crop.size == (int(x2 - x1), int(y2 - y1))
    # The photo_folder id of the crop is excluded for its own source example.
    crop_id = path.name
    excluded = database.exclusion_ids(image_id)
    assert crop_id in excluded or photos.photo_key(crop_id) in excluded
  assert not list((tmp_path / "crops").glob(".*"))  # No temporary file left.
  again = crop_regions.export_crop_regions(tiny_config.data, split, tmp_path / "crops")
  assert again == {"written": 0, "kept": len(source), "no_box": 0}
