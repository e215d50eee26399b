"""Serving: gRPC client for TF Serving's PredictionService and a development server.

`Client` talks to the official `tensorflow/serving` image or to `dmgin serve` (the dev
server in `server.py`, a stand-in for tests and demos) through the same stubs.
"""


def __getattr__(name):  # lazy: importing the stubs pulls in TensorFlow
    if name == "Client":
        from dmgin_tf.serving.client import Client
        return Client
    if name == "DevServer":
        from dmgin_tf.serving.server import DevServer
        return DevServer
    raise AttributeError(name)
