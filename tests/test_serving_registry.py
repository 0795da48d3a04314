"""Model versions in serve-local: models.config parsing, version policies, roll-over to a
new version, and a broken version that is reported but does not stop serving."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest

from serving.model_registry import (
    ModelRegistry,
    ModelSource,
    ServingError,
    VersionPolicy,
    parse_model_config,
)
from serving_helpers import export_base


def test_version_policies_select_like_tf_serving():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy("latest", num_versions=2).select([3, 1, 2]) == [3, 2]
    assert VersionPolicy("all").select([1, 2]) == [2, 1]
    assert VersionPolicy("specific", versions=(1, 5)).select([1, 2, 3]) == [1]
    with pytest.raises(ValueError, match="num_versions"):
        VersionPolicy("latest", num_versions=0)


@pytest.mark.parametrize("text,message", [
    ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' "
     "base_path: '/y' } }", "appears twice"),
    ("model_config_list { config { base_path: '/x' } }", "has no name"),
    ("model_config_list { config { name: 'a' } }", "has no base_path"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'onnx' } }",
     "not supported"),
    ("model_config_list {\n  config { name: 'a' base_pth: '/x' }\n}", ":2:"),
    ("", "expected a model_config_list"),
])
def test_bad_model_configs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        parse_model_config(path)
    assert str(path) in str(caught.value)


def test_new_version_rolls_over_and_a_broken_one_is_reported(tmp_path):
    base = tmp_path / "encoder"
    shutil.copytree(os.path.join(export_base(), "encoder", "1"), base / "1")
    registry = ModelRegistry([ModelSource("encoder", str(base))])
    registry.refresh()
    assert registry.resolve("encoder").version == 1

    shutil.copytree(os.path.join(export_base(), "encoder", "2"), base / "2")
    registry.refresh()
    assert registry.resolve("encoder").version == 2
    with pytest.raises(ServingError) as caught:
        registry.resolve("encoder", version=1)  # latest-1 policy: version 1 unloaded
    assert caught.value.code == grpc.StatusCode.NOT_FOUND

    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    registry.refresh()
    assert registry.resolve("encoder").version == 2  # still serving the last good one
    rows = {row["version"]: row for row in registry.status("encoder")}
    assert rows[2]["state"] == "AVAILABLE"
    assert rows[3]["state"] == "END" and rows[3]["error_message"]
    with pytest.raises(ServingError) as caught:
        registry.resolve("missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
