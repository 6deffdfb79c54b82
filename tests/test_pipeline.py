"""A partition plan executed by three agent processes over ZeroMQ on loopback."""

import os
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from agent._nn import example_cnn, example_mlp, load_model, save_model
from agent._pipeline import (
    PipelineClient,
    PipelineError,
    StageWorker,
    decode_message,
    encode_batch,
)
from ground._partition import ModelProfile, NodeConfig, NodeType, PartitionOptimizer

REPO = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_S = 20.0
LOOPBACK_LINK = (10_000.0, 0.05)  # Mbit/s, ms: what the plan assumes for loopback
NUMPY_TFLOPS = 0.001  # what NumPy achieves on these small layers, roughly


def start_stage(spec_path, start, stop, next_endpoint):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "agent", "--log-level", "WARNING", "stage",
            "--model", str(spec_path), "--layers", f"{start}:{stop}",
            "--next", next_endpoint, "--idle-timeout-s", "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith("READY tcp://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"stage did not start: {line!r} {proc.stderr.read()}")
    return proc, line.split()[1]


def plan_three_stages(spec_path):
    profile = ModelProfile.from_spec(spec_path)
    nodes = [
        NodeConfig(f"sat-{i}", NodeType.SATELLITE, 1.0, NUMPY_TFLOPS) for i in range(3)
    ]
    table = {
        (a.name, b.name): LOOPBACK_LINK for a in nodes for b in nodes if a.name < b.name
    }
    plan = PartitionOptimizer("throughput", table).optimize(profile, nodes)
    assert len(plan.stages) == 3, plan.to_dict()
    return plan


@pytest.fixture
def pipeline(tmp_path, request):
    """Three stage processes chained after a plan, and the ground's client."""
    spec, weights = request.param()
    spec_path = save_model(tmp_path / f"{spec['name']}.json", spec, weights)
    plan = plan_three_stages(spec_path)
    client = PipelineClient("")
    procs = []
    next_endpoint = client.endpoint
    try:
        # start from the last stage so each one knows where its output goes
        for stage in reversed(plan.stages):
            proc, endpoint = start_stage(
                spec_path, stage.first_layer, stage.end_layer, next_endpoint
            )
            procs.append(proc)
            next_endpoint = endpoint
        client.connect(next_endpoint)
        yield load_model(spec_path), client, procs
        client.stop()
        assert client.wait_stopped(RECV_TIMEOUT_S)
        for proc in procs:
            assert proc.wait(timeout=RECV_TIMEOUT_S) == 0, proc.stderr.read()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pipeline", [example_mlp, example_cnn], indirect=True)
def test_three_process_pipeline_equals_the_whole_model(pipeline):
    model, client, _ = pipeline
    rng = np.random.default_rng(11)
    batches = [
        rng.normal(size=(n, *model.input_shape)).astype(np.float32)
        for n in (1, 4, 7, 2)
    ] * 3
    outputs = client.run(batches, timeout_s=RECV_TIMEOUT_S, window=4)
    for x, y in zip(batches, outputs, strict=True):
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, model.forward(x), rtol=1e-6, atol=1e-7)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pipeline", [example_cnn], indirect=True)
def test_a_bad_batch_comes_back_as_an_error_and_the_pipeline_goes_on(pipeline):
    model, client, _ = pipeline
    client.submit(5, np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(PipelineError, match=r"takes batches of shape") as err:
        client.receive(RECV_TIMEOUT_S)
    assert err.value.seq == 5
    x = np.ones((1, *model.input_shape), np.float32)
    client.submit(6, x)
    seq, y = client.receive(RECV_TIMEOUT_S)
    assert seq == 6
    np.testing.assert_allclose(y, model.forward(x), rtol=1e-6)


# -- the message format, in process --------------------------------------------


def test_decode_refuses_oversized_and_malformed_frames():
    frame = encode_batch(3, np.zeros((4, 4), np.float32))
    msg = decode_message(frame, max_message_bytes=1 << 20, max_elements=16)
    assert msg["seq"] == 3 and msg["x"].shape == (4, 4)
    with pytest.raises(PipelineError, match="exceeds the limit of 10"):
        decode_message(frame, max_message_bytes=10, max_elements=16)
    with pytest.raises(PipelineError, match="more than the limit of 15") as err:
        decode_message(frame, max_message_bytes=1 << 20, max_elements=15)
    assert err.value.seq == 3
    with pytest.raises(PipelineError, match="v=1"):
        decode_message(msgpack.packb({"v": 2}), max_message_bytes=99, max_elements=1)
    with pytest.raises(PipelineError, match="seq=-1"):
        decode_message(
            msgpack.packb({"v": 1, "kind": "batch", "seq": -1}),
            max_message_bytes=99,
            max_elements=1,
        )
    with pytest.raises(PipelineError, match="not valid bounded msgpack"):
        decode_message(b"\xc1", max_message_bytes=99, max_elements=1)
    ext = msgpack.packb(msgpack.ExtType(1, b"x" * 8))
    with pytest.raises(PipelineError, match="not valid bounded msgpack"):
        decode_message(ext, max_message_bytes=99, max_elements=1)


def test_in_process_worker_forwards_to_the_collector(tmp_path):
    spec, weights = example_mlp()
    model = load_model(save_model(tmp_path / "m.json", spec, weights))
    ctx = zmq.Context()
    client = PipelineClient("", context=ctx)
    worker = StageWorker(model, 0, len(model), client.endpoint, context=ctx)
    client.connect(worker.endpoint)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    client.submit(0, x)
    frame = worker._pull.recv()
    worker._push.send(worker.handle(frame))
    seq, y = client.receive(RECV_TIMEOUT_S)
    assert seq == 0
    np.testing.assert_array_equal(y, model.forward(x))
    worker.close()
    client.close()
    ctx.term()


@pytest.mark.timeout(60)
def test_sigterm_ends_a_direct_stage_with_its_counts_and_exit_0(tmp_path):
    import signal

    spec, weights = example_mlp()
    spec_path = save_model(tmp_path / "m.json", spec, weights)
    model = load_model(spec_path)
    client = PipelineClient("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "INFO", "stage",
         "--model", str(spec_path), "--layers", f"0:{len(model)}",
         "--next", client.endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), (line, proc.stderr.read())
        client.connect(line.split()[1])
        x = np.ones((2, *model.input_shape), np.float32)
        (y,) = client.run([x], timeout_s=RECV_TIMEOUT_S)
        np.testing.assert_allclose(y, model.forward(x), rtol=1e-6)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=RECV_TIMEOUT_S)
        assert proc.returncode == 0, err
        assert f"stage 0:{len(model)} done: 1 batches, 0 refused" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
