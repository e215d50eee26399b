"""dmgin-tf: Deep Multimodal Group Interest Network for TensorFlow ranking stacks.

Importing the package sets TF_USE_LEGACY_KERAS=1 (unless the caller set it) so that
`tf.keras` is Keras 2 (tf_keras), which TFRS/TFT/TFMA need; our public layers are Keras 3
(`import keras`) and both live in one process.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
