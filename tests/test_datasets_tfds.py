"""The builders under `tfds.testing.DatasetBuilderTestCase`, on generated dummy data.

tfds.testing needs `dill` (TFDS's test extra); without it these tests are skipped.
"""

import tempfile

import pytest

pytest.importorskip("dill", reason="tfds.testing needs dill (pip install dill)")

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from procrop_jax.datasets import fcdb  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import flms  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import gaicd  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import photo_folder  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import procrop_cad  # pylint: disable=g-import-not-at-top
import test_datasets as dummy  # pylint: disable=g-import-not-at-top  (same folder)

# ------------------------------------------------- tfds.testing builder test cases


class _DummyDataMixin:
  """Generates the dummy data into a temporary EXAMPLE_DIR (nothing is committed)."""

  MAKE = None

  @classmethod
  def setUpClass(cls):
    cls._tmp = tempfile.TemporaryDirectory()
    cls.EXAMPLE_DIR = cls._tmp.name
    cls.MAKE(cls._tmp.name)
    super().setUpClass()

  @classmethod
  def tearDownClass(cls):
    super().tearDownClass()
    cls._tmp.cleanup()

  def _make_builder(self, config=None):
    # tfds.testing reads back with `as_dataset`, which needs TFRecord files; the
    # ArrayRecord default is covered by the input pipeline's tests.
    return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION,
                              file_format="tfrecord")


class FcdbTest(_DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = fcdb.Fcdb
  MAKE = staticmethod(dummy.make_fcdb)
  SPLITS = {"train": 2, "test": 1}  # A placeholder and a missing file are skipped.
  SKIP_CHECKSUMS = True


class GaicdTest(_DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = gaicd.Gaicd
  MAKE = staticmethod(dummy.make_gaicd)
  SPLITS = {"train": 2, "test": 1}
  SKIP_CHECKSUMS = True


class FlmsTest(_DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = flms.Flms
  MAKE = staticmethod(dummy.make_flms)
  SPLITS = {"test": 2}
  SKIP_CHECKSUMS = True


class ProcropCadTest(_DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = procrop_cad.ProcropCad
  MAKE = staticmethod(dummy.make_cad)
  SPLITS = {"train": 3}
  SKIP_CHECKSUMS = True


class PhotoFolderTest(_DummyDataMixin, tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = photo_folder.PhotoFolder
  MAKE = staticmethod(dummy.make_photo_folder)
  BUILDER_CONFIG_NAMES_TO_TEST = ["default"]
  SPLITS = {"train": 2}
  SKIP_CHECKSUMS = True


