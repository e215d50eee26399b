"""serving_configs/: each file parses with its real schema and agrees with the export."""
import os
import pathlib

import numpy as np
import pytest
import yaml

from dmgin_tf import features as F
from dmgin_tf.config import ServingConfig
from dmgin_tf.export.saved_model import NOXLA_SUFFIX
from dmgin_tf.serving.metrics import DEFAULT_PATH
from dmgin_tf.serving.protos import (read_batching_parameters, read_model_server_config,
                                     read_monitoring_config)

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "serving_configs"
NAME = ServingConfig().model_name


def _only_model(path):
    cfg = read_model_server_config(path)
    (mc,) = cfg.model_config_list.config
    return mc


def test_model_configs_point_at_export_layout():
    cpu, gpu = _only_model(CONFIGS / "models.config"), _only_model(CONFIGS / "models.gpu.config")
    assert cpu.name == gpu.name == NAME
    assert os.path.basename(cpu.base_path) == NAME                    # XLA variant
    assert os.path.basename(gpu.base_path) == NAME + NOXLA_SUFFIX     # non-XLA twin
    for mc in (cpu, gpu):
        assert mc.model_version_policy.latest.num_versions == 1


def test_batching_buckets_equal_export_buckets():
    p = read_batching_parameters(CONFIGS / "batching_parameters.txt")
    assert tuple(p.allowed_batch_sizes) == ServingConfig().batch_buckets
    assert p.max_batch_size.value == ServingConfig().batch_buckets[-1]
    assert p.batch_timeout_micros.value > 0 and p.num_batch_threads.value >= 1
    # Requests of different candidate counts share batches under TF Serving only with
    # padding (tests/export/test_score_cached.py: padded batches keep each request's scores).
    assert p.pad_variable_length_inputs


def test_monitoring_config():
    m = read_monitoring_config(CONFIGS / "monitoring_config.txt")
    assert m.prometheus_config.enable and m.prometheus_config.path == DEFAULT_PATH


def _flags(args):
    return dict(a[2:].split("=", 1) for a in args)


def _check_flags(flags, gpu):
    cfg_file = os.path.basename(flags["model_config_file"])
    assert cfg_file == ("models.gpu.config" if gpu else "models.config")
    for key in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert (CONFIGS / os.path.basename(flags[key])).is_file(), flags[key]
    assert flags["enable_batching"] == "true"
    # XLA:CPU JIT must be on for the CPU image; GPU serves the non-XLA twin.
    assert flags.get("xla_cpu_compilation_enabled") == (None if gpu else "true")


def test_docker_compose():
    doc = yaml.safe_load(open(CONFIGS / "docker-compose.yml"))
    for svc, gpu in (("serving-cpu", False), ("serving-gpu", True)):
        s = doc["services"][svc]
        assert s["image"].startswith("tensorflow/serving:") and s["image"].endswith("-gpu") == gpu
        _check_flags(_flags(s["command"]), gpu)
        assert any(v.endswith(":/models:ro") for v in s["volumes"])
    gpu_dev = doc["services"]["serving-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu_dev["capabilities"]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_kubernetes_deployment(variant):
    dep, hpa = yaml.safe_load_all(open(CONFIGS / "k8s" / f"deployment-{variant}.yaml"))
    assert dep["kind"] == "Deployment"
    # Each Deployment file carries its own HPA, so swapping the file swaps the target.
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].startswith("tensorflow/serving:") and c["image"].endswith("-gpu") == (variant == "gpu")
    _check_flags(_flags(c["args"]), variant == "gpu")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe in c
    # Model status (`/v1/models/NAME`) answers 200 while a version is still LOADING or
    # after its load failed; metadata needs an AVAILABLE version.
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == f"/v1/models/{NAME}/metadata", probe
    assert "requests" in c["resources"] and "limits" in c["resources"]
    if variant == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"models": "/models", "config": "/config"}
    kust = yaml.safe_load(open(CONFIGS / "kustomization.yaml"))
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == \
        {kust["configMapGenerator"][0]["name"]}
    for f in kust["configMapGenerator"][0]["files"]:
        assert (CONFIGS / f).is_file()


def test_service_selects_both_deployments():
    svc = yaml.safe_load(open(CONFIGS / "k8s" / "service.yaml"))
    assert {p["port"] for p in svc["spec"]["ports"]} == {8500, 8501}
    for variant in ("cpu", "gpu"):
        dep, _ = yaml.safe_load_all(open(CONFIGS / "k8s" / f"deployment-{variant}.yaml"))
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_kustomize_builds_each_variant(variant, tmp_path):
    """`kubectl kustomize` of the shipped kustomization (CPU) and of the documented GPU
    edit (deployment-gpu.yaml listed instead): one Deployment, its HPA pointing at it, and
    the Deployment mounting the generated (hash-suffixed) ConfigMap."""
    import shutil
    import subprocess
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (kustomize build not checked)")
    root = tmp_path / "serving_configs"
    shutil.copytree(CONFIGS, root)
    kust = root / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("k8s/deployment-cpu.yaml",
                                             f"k8s/deployment-{variant}.yaml"))
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
    assert set(docs) == {"ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler"}
    dep = docs["Deployment"]
    assert dep["metadata"]["name"] == f"dmgin-serving-{variant}"
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        dep["metadata"]["name"]
    mounted = {v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"]
               if "configMap" in v}
    assert mounted == {docs["ConfigMap"]["metadata"]["name"]}


def test_gpu_config_serves_exported_twin_through_client(tmp_path):
    """Export (non-XLA twin) → models.gpu.config with base paths moved to tmp → dev
    server → Client: name, signatures and scores agree with the Keras model."""
    import portpicker
    from dmgin_tf.export.saved_model import export_model
    from dmgin_tf.serving import Client
    from dmgin_tf.serving.server import DevServer
    from export.conftest import BEHAVIORS, L, SERVING, tiny_inputs, tiny_item_index
    from export.keras_standin import StandInRanker

    model = StandInRanker()
    inputs = tiny_inputs(4, seed=11)
    model(inputs)
    base = tmp_path / "models"
    export_model(model, str(base), NAME, history_length=L, item_index=tiny_item_index(),
                 behavior_types=BEHAVIORS, warmup_inputs=inputs, serving_cfg=SERVING,
                 variants=("noxla",))
    text = (CONFIGS / "models.gpu.config").read_text().replace('"/models/', f'"{base}/')
    (tmp_path / "models.config").write_text(text)
    cfg = read_model_server_config(tmp_path / "models.config")
    server = DevServer(cfg, port=portpicker.pick_unused_port(), poll_interval_s=60,
                       batching=read_batching_parameters(CONFIGS / "batching_parameters.txt"))
    port = server.start()
    try:
        with Client(f"127.0.0.1:{port}", NAME, candidate_buckets=SERVING.candidate_buckets) as c:
            sigs = c.metadata()
            assert {"serving_default", "predict_raw", "rank", "user_state", "score"} <= set(sigs)
            assert set(sigs["rank"].inputs) == set(F.MODEL_INPUT_KEYS)
            got = c.predict(inputs, signature="predict_raw")[F.PREDICTION]
            np.testing.assert_allclose(got, np.asarray(model(inputs)), atol=1e-5)
            # rank: 11 candidates > largest bucket 8 -> two chunks (8 + 3 padded to 8).
            user = {k: v[:1] for k, v in inputs.items()}
            cands = np.arange(2, 13, dtype=np.int32)
            groups = (cands % 5 + 2).astype(np.int32)
            scores = c.rank(user, cands, groups)
            rows = {k: np.repeat(v, 11, axis=0) for k, v in user.items()}
            rows[F.CAND_ITEM], rows[F.CAND_GROUP] = cands, groups
            np.testing.assert_allclose(scores, np.asarray(model(rows)), atol=1e-5)
            assert c.status() == [(1, "AVAILABLE", "")]
    finally:
        server.stop(1)
