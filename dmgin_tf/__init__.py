"""dmgin-tf: Deep Multimodal Group Interest Network for TensorFlow ranking stacks.

Importing the package changes nothing in the process (no environment variables, no
logging setup). Entry points configure what they need: the `dmgin` CLI sets
`TF_USE_LEGACY_KERAS=1` (so `tf.keras` is Keras 2, which TFRS/TFT/TFMA need) and quiets
TensorFlow's logs (`dmgin_tf.cli.common.configure_process`); `dmgin_tf.layers.tf_keras`
sets `TF_USE_LEGACY_KERAS=1` if TensorFlow is not imported yet. In your own process, set
`TF_USE_LEGACY_KERAS=1` before importing TensorFlow when you mix our Keras 3 layers with
tf.keras models.
"""
__version__ = "0.1.0"
