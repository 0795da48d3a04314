"""Which models and versions the local endpoint serves, in TF Serving's terms.

A model is a base directory in TF Serving's layout, `BASE/NAME/VERSION/saved_model.pb`
(VERSION a non-negative integer), plus a version policy (`latest` N, `all`, `specific`)
and optional version labels. `parse_model_config` reads the same `models.config` text
proto that TF Serving's `--model_config_file` takes. `ModelRegistry` loads the versions
each policy selects, re-scans the directories on demand (`refresh`, which the server
calls every `--file-system-poll-wait-seconds`) and resolves a request's `ModelSpec` to a
loaded version, raising `ServingError` with the status code and message TF Serving uses.

Example:
    >>> source = ModelSource(name="encoder", base_path="exports/encoder")  # doctest: +SKIP
    >>> registry = ModelRegistry([source])  # doctest: +SKIP
    >>> registry.refresh()  # loads the latest version  # doctest: +SKIP
    >>> servable = registry.resolve("encoder")  # doctest: +SKIP
    >>> sorted(servable.signatures)  # doctest: +SKIP
    ['serving_default', 'tokenize']
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any

import grpc

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
# Signatures that exist in every TF2 SavedModel but cannot be called through Predict.
HIDDEN_SIGNATURES = ("__saved_model_init_op",)


class ServingError(Exception):
    """A request failure with the gRPC status code TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """TF Serving's `ServableVersionPolicy`: `latest` (the `num_versions` highest
    versions), `all`, or `specific` (the listed versions)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"version policy must be latest, all or specific, got {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"latest.num_versions must be >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific version policy needs at least one version")

    def select(self, on_disk: list[int]) -> list[int]:
        """The versions to serve among those found on disk, highest first."""
        on_disk = sorted(on_disk, reverse=True)
        if self.kind == "latest":
            return on_disk[:self.num_versions]
        if self.kind == "all":
            return on_disk
        return [version for version in on_disk if version in self.versions]


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One `config { ... }` entry of a models.config: a name, the directory holding its
    version subdirectories, a version policy and version labels (label -> version)."""

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Servable:
    """One loaded version: the SavedModel, its callable signatures and their
    SignatureDef protos (what GetModelMetadata returns)."""

    name: str
    version: int
    path: str
    saved_model: Any
    signatures: dict[str, Any]
    signature_defs: dict[str, Any]

    def signature(self, signature_name: str):
        """The concrete function of `signature_name` ('' means serving_default)."""
        key = signature_name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            # TF Serving's wording and code (predict_util.cc, GetSignatureDef).
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{key}" not found.')
        return key, self.signatures[key]


def parse_model_config(path: str | os.PathLike) -> list[ModelSource]:
    """Reads a TF Serving `models.config` (text-format `ModelServerConfig` with a
    `model_config_list`); relative base paths are resolved against the file's folder."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.fspath(path)
    with open(path, encoding="utf-8") as file:
        text = file.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        # ParseError's message starts with "line:column :".
        raise ValueError(f"{path}:{error}") from None
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: expected a model_config_list {{ config {{ ... }} }} "
                         "(custom_model_config is not supported)")
    sources = []
    seen = set()
    for index, entry in enumerate(config.model_config_list.config):
        where = f"{path}: config #{index + 1}"
        if not entry.name:
            raise ValueError(f"{where} has no name")
        if entry.name in seen:
            raise ValueError(f"{where}: model name {entry.name!r} appears twice")
        seen.add(entry.name)
        if not entry.base_path:
            raise ValueError(f"{where} ({entry.name}) has no base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{where} ({entry.name}): model_platform "
                             f"{entry.model_platform!r} is not supported (only tensorflow)")
        base_path = entry.base_path
        if not os.path.isabs(base_path):
            base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base_path)
        sources.append(ModelSource(
            name=entry.name, base_path=base_path,
            policy=_policy_from_proto(entry.model_version_policy, where),
            labels=dict(entry.version_labels)))
    if not sources:
        raise ValueError(f"{path}: model_config_list has no config entries")
    return sources


def _policy_from_proto(proto, where: str) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    try:
        if kind is None:
            return VersionPolicy()
        if kind == "latest":
            return VersionPolicy("latest", num_versions=proto.latest.num_versions or 1)
        if kind == "all":
            return VersionPolicy("all")
        return VersionPolicy("specific", versions=tuple(proto.specific.versions))
    except ValueError as error:
        raise ValueError(f"{where}: model_version_policy: {error}") from None


def versions_on_disk(base_path: str) -> list[int]:
    """Integer-named subdirectories of `base_path` that hold a saved_model.pb."""
    if not os.path.isdir(base_path):
        return []
    versions = []
    for entry in os.listdir(base_path):
        if entry.isdigit() and os.path.isfile(os.path.join(base_path, entry, "saved_model.pb")):
            versions.append(int(entry))
    return sorted(versions)


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads one SavedModel version and reads its SignatureDefs from saved_model.pb."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - registers the TF Text ops (TF Serving links them)
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = tf.saved_model.load(path)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    signature_defs = {key: value for key, value in proto.meta_graphs[0].signature_def.items()
                      if key not in HIDDEN_SIGNATURES}
    signatures = {key: saved_model.signatures[key] for key in signature_defs
                  if key in saved_model.signatures}
    return Servable(name=name, version=version, path=path, saved_model=saved_model,
                    signatures=signatures, signature_defs=signature_defs)


class ModelRegistry:
    """The loaded versions of every configured model; thread-safe.

    `refresh()` scans each base path, loads the versions the policy selects that are
    not loaded yet (new ones before old ones are dropped, so a model never has zero
    versions during a roll-over) and unloads the rest. A version that fails to load is
    reported in `status()` and not retried until its directory changes.
    """

    def __init__(self, sources: list[ModelSource]):
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self._sources = {source.name: source for source in sources}
        self._loaded: dict[str, dict[int, Servable]] = {name: {} for name in names}
        self._failed: dict[tuple[str, int], tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()

    @property
    def model_names(self) -> list[str]:
        return list(self._sources)

    def refresh(self) -> None:
        with self._refresh_lock:
            for source in self._sources.values():
                self._refresh_model(source)

    def _refresh_model(self, source: ModelSource) -> None:
        wanted = source.policy.select(versions_on_disk(source.base_path))
        loaded = self._loaded[source.name]
        for version in wanted:
            if version in loaded:
                continue
            path = os.path.join(source.base_path, str(version))
            stamp = os.path.getmtime(path)
            failure = self._failed.get((source.name, version))
            if failure and failure[0] == stamp:
                continue
            try:
                servable = load_servable(source.name, version, path)
            except Exception as error:  # noqa: BLE001 - a bad export must not stop the server
                logger.error("failed to load %s version %d from %s: %s",
                             source.name, version, path, error)
                self._failed[(source.name, version)] = (stamp, f"{type(error).__name__}: {error}")
                continue
            self._failed.pop((source.name, version), None)
            with self._lock:
                loaded = {**self._loaded[source.name], version: servable}
                self._loaded[source.name] = loaded
            logger.info("serving %s version %d from %s (signatures: %s)", source.name,
                        version, path, ", ".join(sorted(servable.signatures)))
        stale = [version for version in loaded if version not in wanted]
        if stale and any(version in loaded for version in wanted):
            with self._lock:
                self._loaded[source.name] = {version: servable for version, servable
                                             in self._loaded[source.name].items()
                                             if version not in stale}
            logger.info("unloaded %s version(s) %s", source.name, stale)

    def resolve(self, name: str, version: int | None = None,
                version_label: str | None = None) -> Servable:
        """The servable for a ModelSpec: the latest loaded version unless `version` or
        `version_label` names one. NOT_FOUND for an unknown model or version."""
        with self._lock:
            loaded = self._loaded.get(name)
        if version_label and loaded is not None:
            source = self._sources[name]
            if version_label not in source.labels:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {version_label}")
            version = source.labels[version_label]
        if not loaded:
            request = (f"Specific({name}, {version})" if version is not None
                       else f"Latest({name})")
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        if version is None:
            return loaded[max(loaded)]
        if version not in loaded:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return loaded[version]

    def status(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        """Per version: {version, state (AVAILABLE or END), error_code, error_message},
        like GetModelStatus. NOT_FOUND for an unknown model or version."""
        if name not in self._sources:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        with self._lock:
            loaded = sorted(self._loaded[name], reverse=True)
        rows = [{"version": v, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}
                for v in loaded]
        for (model, failed_version), (_, message) in sorted(self._failed.items()):
            if model == name:
                rows.append({"version": failed_version, "state": "END",
                             "error_code": "UNKNOWN", "error_message": message})
        if version is not None:
            rows = [row for row in rows if row["version"] == version]
            if not rows:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        return rows
