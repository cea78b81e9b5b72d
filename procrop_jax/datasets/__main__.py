r"""`tfds build` with procrop_jax's builders registered, and without Apache Beam.

TFDS 4.9's own `tfds` command imports Apache Beam at start-up (for commands we do not
use); this runs its `build` command alone, with the same flags:

  python -m procrop_jax.datasets fcdb --data_dir=data/tfds --manual_dir=data/manual/fcdb
  python -m procrop_jax.datasets photo_folder/skimage --data_dir=data/tfds

Where Apache Beam is installed, `tfds build fcdb --imports=procrop_jax.datasets ...` is
the same, and `--beam_pipeline_options=runner=DirectRunner` (or another runner and its options)
builds `procrop_cad` through Beam (data/README.md, "Large sets").
"""

from absl import app
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)


def main() -> None:
  parse = cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])
  app.run(lambda args: args.execute(), flags_parser=parse)


if __name__ == "__main__":
  main()
