"""Importing spanbert_tf turns TensorFlow's oneDNN CPU kernels on, unless the user chose."""

import os
import subprocess
import sys

import pytest

PROBE = ("import spanbert_tf; from tensorflow.python.util import _pywrap_util_port as port; "
         "print(port.IsMklEnabled())")


def onednn_enabled(**env_overrides: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(env_overrides, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, check=True, timeout=300)
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_import_turns_onednn_on_unless_the_variable_is_set(setting, expected):
    overrides = {} if setting is None else {"TF_ENABLE_ONEDNN_OPTS": setting}
    assert onednn_enabled(**overrides) == expected
