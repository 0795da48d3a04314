"""`spanbert-tf serve-local` as a real subprocess, and `spanbert-tf predict` against it
(gRPC and REST)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from serving import client_command
from serving.client import GrpcClient, RestClient
from serving_helpers import SENTENCES, direct_outputs, export_base, free_port, max_abs_diff

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_predict_command(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser()
    client_command.register(parser.add_subparsers())
    args = parser.parse_args(["predict", *argv])
    code = args.func(args)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.fixture(scope="module")
def served():
    """serve-local in a subprocess on free ports, over EXPORT_BASE with --model-name."""
    grpc_port, rest_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "spanbert_tf.cli", "serve-local", "--model-base-path",
         export_base(), "--model-name", "encoder", "--port", str(grpc_port),
         "--rest-port", str(rest_port), "--host", "127.0.0.1", "--workers", "4"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process, grpc_port, rest_port
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def test_serve_local_subprocess_serves_grpc_and_rest_then_stops_on_sigterm(served):
    process, grpc_port, rest_port = served
    with GrpcClient(f"127.0.0.1:{grpc_port}", timeout=120, retries=1000, backoff=0.2,
                    max_backoff=1.0) as client:
        outputs = client.predict("encoder", {"text": SENTENCES})
    reference = direct_outputs("encoder", 2, SENTENCES)
    assert max_abs_diff(outputs["embedding"], reference["embedding"]) <= 1e-6
    status = RestClient(f"127.0.0.1:{rest_port}", timeout=30).status("encoder")
    assert status["model_version_status"][0]["version"] == "2"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "development endpoint, not TF Serving" in output


@pytest.fixture(scope="module")
def shared():
    from serving_helpers import shared_server

    return shared_server()


def test_predict_command_grpc(shared, capsys):
    code, result, _ = run_predict_command(
        ["--server", f"127.0.0.1:{shared.grpc_port}", "--model", "encoder", *SENTENCES[:2]],
        capsys)
    assert code == 0
    assert (result["model"], result["version"], result["signature"]) == (
        "encoder", 2, "serving_default")
    reference = direct_outputs("encoder", 2, SENTENCES[:2])
    assert [row["inputs"]["text"] for row in result["results"]] == SENTENCES[:2]
    embeddings = np.array([row["outputs"]["embedding"] for row in result["results"]])
    assert max_abs_diff(embeddings, reference["embedding"]) <= 1e-6


def test_predict_command_rest_version_and_fields(shared, capsys):
    code, result, _ = run_predict_command(
        ["--server", f"127.0.0.1:{shared.rest_port}", "--rest", "--model", "encoder",
         "--version", "1", "--signature", "tokenize", "--field", "text=The river froze."],
        capsys)
    assert code == 0 and result["version"] == 1
    reference = direct_outputs("encoder", 1, ["The river froze."], "tokenize")
    assert result["results"][0]["outputs"]["input_ids"] == reference["input_ids"][0].tolist()


def test_predict_command_reports_server_errors(shared, capsys):
    code, _, err = run_predict_command(
        ["--server", f"127.0.0.1:{shared.grpc_port}", "--model", "nope", "hello"], capsys)
    assert code == 1 and "NOT_FOUND" in err and "nope" in err
    with pytest.raises(ValueError, match="unknown input"):
        run_predict_command(["--server", f"127.0.0.1:{shared.grpc_port}", "--model",
                             "encoder", "--field", "txt=hello"], capsys)
