"""TFDS builders of the cropping benchmarks; importing this package registers them.

  fcdb          Flickr Cropping Dataset (train / test)
  gaicd         GAICD, ~90 scored candidate crops per image (train / test)
  flms          FLMS, ~10 expert crops per image (test)
  procrop_cad   ProCrop's CAD format, weak labels from out-painted photos (train)
  photo_folder  unlabelled photos (train); config `skimage` = scikit-image's photos

All produce the schema of `procrop_jax.datasets.schema`, in ArrayRecord files by
default (random access for the input pipeline). Build one with `prepare.ensure_dataset`,
or with the flags of `tfds build` (see `__main__.py`; data/README.md has every dataset):

  python -m procrop_jax.datasets fcdb --data_dir=data/tfds --manual_dir=data/manual/fcdb
"""

from procrop_jax.datasets import fcdb
from procrop_jax.datasets import flms
from procrop_jax.datasets import gaicd
from procrop_jax.datasets import photo_folder
from procrop_jax.datasets import procrop_cad
from procrop_jax.datasets.annotation_files import AnnotationError
from procrop_jax.datasets.schema import build_report

Fcdb = fcdb.Fcdb
Flms = flms.Flms
Gaicd = gaicd.Gaicd
PhotoFolder = photo_folder.PhotoFolder
ProcropCad = procrop_cad.ProcropCad

BUILDERS = ("fcdb", "gaicd", "flms", "procrop_cad", "photo_folder")
