"""The TF Serving deployment assets in serving/deploy/ parse and agree with each other.

models.config is parsed with TF Serving's own proto (`ModelServerConfig`) and with
serve-local's reader; batching_parameters.txt with a `BatchingParameters` message built
from TF Serving's session_bundle_config.proto field list (the pip package does not ship
that proto); the YAML files with PyYAML. Ports, mount paths, config paths, model names
and the image tag must be the same in docker-compose.yml, kubernetes.yaml and
kustomization.yaml.
"""

from __future__ import annotations

import os
import re

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

yaml = pytest.importorskip("yaml")

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "serving", "deploy")
IMAGE = "tensorflow/serving:2.20.0"
GRPC_PORT, REST_PORT = 8500, 8501
# BatchingParameters in tensorflow_serving/servables/tensorflow/session_bundle_config.proto
# (the fields our file may use; an unknown or misspelt field fails the parse).
BATCHING_FIELDS = {
    "max_batch_size": "google.protobuf.Int64Value",
    "batch_timeout_micros": "google.protobuf.Int64Value",
    "max_enqueued_batches": "google.protobuf.Int64Value",
    "num_batch_threads": "google.protobuf.Int64Value",
    "thread_pool_name": "google.protobuf.StringValue",
    "allowed_batch_sizes": "repeated int64",
    "pad_variable_length_inputs": "bool",
}


def read(name: str) -> str:
    with open(os.path.join(DEPLOY, name), encoding="utf-8") as file:
        return file.read()


def flags(args: list[str]) -> dict[str, str]:
    parsed = {}
    for arg in args:
        match = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        assert match, f"not a --flag=value argument: {arg!r}"
        parsed[match[1]] = match[2]
    return parsed


def batching_parameters_class():
    from google.protobuf import wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="batching.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    for number, (name, kind) in enumerate(BATCHING_FIELDS.items(), start=1):
        field = message.field.add(name=name, number=number)
        if kind.startswith("google."):
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            field.type_name = "." + kind
            field.label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        else:
            field.type = (descriptor_pb2.FieldDescriptorProto.TYPE_BOOL if kind == "bool"
                          else descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
            field.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                           if kind.startswith("repeated")
                           else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


@pytest.fixture(scope="module")
def model_config():
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(read("models.config"), config)
    return config


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(read("docker-compose.yml"))


@pytest.fixture(scope="module")
def kubernetes():
    documents = [doc for doc in yaml.safe_load_all(read("kubernetes.yaml")) if doc]
    return {doc["kind"]: doc for doc in documents}


def test_models_config_has_several_models_versions_and_policies(model_config):
    entries = {entry.name: entry for entry in model_config.model_config_list.config}
    assert set(entries) == {"encoder", "classifier"}
    encoder = entries["encoder"]
    assert list(encoder.model_version_policy.specific.versions) == [1, 2]
    assert dict(encoder.version_labels) == {"stable": 1, "canary": 2}
    served = set(encoder.model_version_policy.specific.versions)
    assert set(encoder.version_labels.values()) <= served
    assert entries["classifier"].model_version_policy.latest.num_versions == 1
    for entry in entries.values():
        assert entry.model_platform == "tensorflow"
        assert entry.base_path == f"/models/{entry.name}"


def test_serve_local_reads_the_same_models_config():
    from serving.model_registry import parse_model_config

    sources = {source.name: source for source in
               parse_model_config(os.path.join(DEPLOY, "models.config"))}
    assert sources["encoder"].policy.kind == "specific"
    assert sources["encoder"].policy.versions == (1, 2)
    assert sources["encoder"].labels == {"stable": 1, "canary": 2}
    assert sources["classifier"].policy.select([1, 3, 2]) == [3]


def test_batching_parameters_parse_and_are_consistent():
    parameters = text_format.Parse(read("batching_parameters.txt"), batching_parameters_class()())
    sizes = list(parameters.allowed_batch_sizes)
    assert sizes == sorted(sizes) and sizes[-1] == parameters.max_batch_size.value
    assert parameters.num_batch_threads.value >= 1
    assert 0 < parameters.batch_timeout_micros.value <= 10_000
    assert "GPU" in read("batching_parameters.txt")


def test_docker_compose_runs_tf_serving_2_20_with_our_mounts(compose, model_config):
    service = compose["services"]["tf-serving"]
    assert service["image"] == IMAGE
    assert set(service["ports"]) == {f"{GRPC_PORT}:{GRPC_PORT}", f"{REST_PORT}:{REST_PORT}"}
    args = flags(service["command"])
    assert args["port"] == str(GRPC_PORT) and args["rest_api_port"] == str(REST_PORT)
    mounts = dict(reversed(volume.removesuffix(":ro").rsplit(":", 1))
                  for volume in service["volumes"])
    assert mounts[args["model_config_file"]] == "./models.config"
    assert mounts[args["batching_parameters_file"]] == "./batching_parameters.txt"
    assert mounts["/models"] == "${EXPORT_BASE:-../../exports}"
    for entry in model_config.model_config_list.config:
        assert entry.base_path.startswith("/models/")
    assert args["enable_batching"] == "true"


def test_kubernetes_deployment_service_and_autoscaler_agree(kubernetes, compose, model_config):
    assert set(kubernetes) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    deployment = kubernetes["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    args = flags(container["args"])
    assert args == flags(compose["services"]["tf-serving"]["command"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": REST_PORT}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == REST_PORT
    model_names = {entry.name for entry in model_config.model_config_list.config}
    assert re.fullmatch(r"/v1/models/([^/]+)", probe["path"])[1] in model_names
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert os.path.dirname(args["model_config_file"]) == mounts["config"]
    assert os.path.dirname(args["batching_parameters_file"]) == mounts["config"]
    assert mounts["models"] == "/models"
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    config_map = volumes["config"]["configMap"]["name"]

    service = kubernetes["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        GRPC_PORT: GRPC_PORT, REST_PORT: REST_PORT}

    autoscaler = kubernetes["HorizontalPodAutoscaler"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert container["resources"]["requests"]["cpu"]  # utilisation needs a CPU request

    kustomization = yaml.safe_load(read("kustomization.yaml"))
    assert kustomization["resources"] == ["kubernetes.yaml"]
    generator = {entry["name"]: entry["files"] for entry in kustomization["configMapGenerator"]}
    assert sorted(generator[config_map]) == sorted(
        [os.path.basename(args["model_config_file"]),
         os.path.basename(args["batching_parameters_file"])])
    for name in generator[config_map]:
        assert os.path.isfile(os.path.join(DEPLOY, name))
