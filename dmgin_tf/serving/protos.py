"""TF Serving config messages and text-proto file readers.

`tensorflow-serving-api` ships `ModelServerConfig` but not the two other messages TF
Serving reads from files: `BatchingParameters` (``--batching_parameters_file``,
tensorflow_serving/servables/tensorflow/session_bundle_config.proto) and
`MonitoringConfig` (``--monitoring_config_file``, tensorflow_serving/config/
monitoring_config.proto). We declare them here with the same package, names, field
numbers and types, so the files in `serving_configs/` are checked against the schema
the official binary uses (text format only depends on names and types).
"""
from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf import message_factory
from tensorflow_serving.config import model_server_config_pb2

from dmgin_tf.errors import DmginError

_F = descriptor_pb2.FieldDescriptorProto


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="dmgin_tf/serving/tf_serving_config_mirror.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])

    def add(msg, name, number, ftype, type_name=None, repeated=False):
        field = msg.field.add(name=name, number=number, type=ftype,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name

    bp = f.message_type.add(name="BatchingParameters")
    add(bp, "max_batch_size", 1, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(bp, "batch_timeout_micros", 2, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(bp, "max_enqueued_batches", 3, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(bp, "num_batch_threads", 4, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(bp, "thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue")
    add(bp, "allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True)
    add(bp, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)

    pc = f.message_type.add(name="PrometheusConfig")
    add(pc, "enable", 1, _F.TYPE_BOOL)
    add(pc, "path", 2, _F.TYPE_STRING)
    mc = f.message_type.add(name="MonitoringConfig")
    add(mc, "prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")
    return f


def _make_classes():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    pool.Add(_build_file())
    get = (message_factory.GetMessageClass if hasattr(message_factory, "GetMessageClass")
           else message_factory.MessageFactory(pool).GetPrototype)
    return (get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")))


BatchingParameters, MonitoringConfig = _make_classes()
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def _read_text_proto(path: str | os.PathLike, message, what: str):
    path = os.fspath(path)
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise DmginError(f"{what} file not found: {path}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise DmginError(f"{path}: not a valid {type(message).__name__} text proto: {e}") from None


def read_model_server_config(path) -> "model_server_config_pb2.ModelServerConfig":
    """Parses a `--model_config_file` (ModelServerConfig text proto) and validates it.

    Relative `base_path`s are resolved against the config file's directory (TF Serving
    resolves them against its working directory; absolute paths behave the same in both).
    """
    cfg = _read_text_proto(path, ModelServerConfig(), "model config")
    if cfg.WhichOneof("config") != "model_config_list":
        raise DmginError(f"{path}: expected a model_config_list")
    names = set()
    for mc in cfg.model_config_list.config:
        if not mc.name:
            raise DmginError(f"{path}: a model config has no name")
        if mc.name in names:
            raise DmginError(f"{path}: model name {mc.name!r} appears twice")
        names.add(mc.name)
        if not mc.base_path:
            raise DmginError(f"{path}: model {mc.name!r} has no base_path")
        if mc.model_platform and mc.model_platform != "tensorflow":
            raise DmginError(f"{path}: model {mc.name!r}: model_platform "
                             f"{mc.model_platform!r} is not supported (tensorflow only)")
        if not os.path.isabs(mc.base_path):
            mc.base_path = os.path.normpath(
                os.path.join(os.path.dirname(os.path.abspath(path)), mc.base_path))
    return cfg


def single_model_config(name: str, base_path: str) -> "model_server_config_pb2.ModelServerConfig":
    """The config TF Serving builds from `--model_name` / `--model_base_path` (no config
    file): one TensorFlow model, latest version; a relative path is taken from the
    working directory."""
    cfg = model_server_config_pb2.ModelServerConfig()
    mc = cfg.model_config_list.config.add()
    mc.name, mc.base_path, mc.model_platform = name, os.path.abspath(base_path), "tensorflow"
    return cfg


def read_batching_parameters(path) -> "BatchingParameters":
    """Parses a `--batching_parameters_file` and checks TF Serving's own constraints:
    allowed_batch_sizes increasing, last entry == max_batch_size."""
    p = _read_text_proto(path, BatchingParameters(), "batching parameters")
    sizes = list(p.allowed_batch_sizes)
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise DmginError(f"{path}: allowed_batch_sizes {sizes} must be positive and increasing")
        if p.HasField("max_batch_size") and sizes[-1] != p.max_batch_size.value:
            raise DmginError(f"{path}: the last allowed_batch_sizes entry ({sizes[-1]}) must "
                             f"equal max_batch_size ({p.max_batch_size.value})")
    return p


def read_monitoring_config(path) -> "MonitoringConfig":
    """Parses a `--monitoring_config_file` (MonitoringConfig text proto)."""
    return _read_text_proto(path, MonitoringConfig(), "monitoring config")
