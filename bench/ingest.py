"""Aggregator ingest over loopback: the ground daemon vs a raw ROUTER.

``python bench/ingest.py`` starts the real daemon (``python -m ground serve``,
FEDAVG, journal and checkpoints on, CURVE off on both sides) in its own
process, and 100 simulated agents (DEALER sockets in this process) that send
1%-top-k compressed updates of a 1e6-parameter float32 model, round after
round, each waiting for its ACK.  The baseline sends the very same bytes over
the same 100 DEALERs to a raw ROUTER process that answers each frame with a
short reply without decoding it.  Both are measured in the same run; the table
gives updates/s, payload MB/s, the ratio to the raw transfer, the daemon's CPU
time per update, and its memory against the float32 model size.

Memory: the daemon's peak RSS minus the peak RSS of the same daemon run on a
1000-parameter model (the interpreter, numpy, zmq and sqlite baseline), over
the float32 model bytes.  It is reported for 10 and 100 agents to show it
does not grow with the number of agents.

The simulated agents follow the credit protocol as ``agent.Agent`` does
(ask with ``CREDIT``, send the update when granted); the daemon grants at
most ``max_inflight`` (``--max-inflight``) at a time, which bounds what
libzmq queues toward it.  The raw baseline sends the updates unasked.

The daemon pushes no MODEL at round open here (``push_model = false``): this
measures ingest; model download is a separate cost (one model per agent per
round, the same bytes whatever the daemon does).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import _wire as w  # noqa: E402
from agent._compression import CompressionConfig, FederatedClient  # noqa: E402

RAW_ROUTER = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.RCVHWM, 0)
port = s.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
while True:
    ident, data = s.recv_multipart(copy=False)
    if len(data) == 4 and data.bytes == b"STOP":
        break
    s.send_multipart([ident, b"ok"])
"""


def _status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_updates(n_agents: int, n_params: int, density: float) -> list[bytes]:
    """One encoded UPDATE body per agent: real top-k with error feedback."""
    rng = np.random.default_rng(0)
    bodies = []
    config = CompressionConfig.from_dict({"method": "topk", "sparsity": 1 - density})
    for i in range(n_agents):
        client = FederatedClient(f"sat-{i:03d}", config)
        grad = {"w": rng.standard_normal(n_params, dtype=np.float32)}
        update = client.compress(grad, round_index=0)
        body = w.update_body(
            base_version=0, num_samples=100 + i, update=update.to_wire()
        )
        bodies.append(w.encode_body(w.MessageType.UPDATE, body))
    return bodies


def connect(ctx, endpoint: str, n: int) -> list[zmq.Socket]:
    socks = []
    for i in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, f"sat-{i:03d}".encode())
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    time.sleep(0.3)
    return socks


def drive(socks, frames_by_round: list[list[bytes]], *, credit: bool) -> float:
    """Send each round's frames, one per agent, wait for every reply; seconds.

    With ``credit`` each agent behaves as ``agent.Agent`` does: it asks for
    credit and sends its update when the daemon grants it.
    """
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    t0 = time.perf_counter()
    for r, frames in enumerate(frames_by_round):
        for i, (s, f) in enumerate(zip(socks, frames, strict=True)):
            if credit:
                of = (f"sat-{i:03d}", r, 1000 * r + i)
                s.send(w.encode(w.credit(of[0], 0, 0.0, of=of)))
            else:
                s.send(f, copy=False)
        waiting = len(socks)
        while waiting:
            for s, _ in poller.poll(30_000) or [(None, None)]:
                if s is None:
                    raise RuntimeError(f"{waiting} replies missing after 30 s")
                reply = s.recv()
                if reply != b"ok":
                    msg = w.decode(reply)
                    if msg.type is w.MessageType.CREDIT:
                        s.send(frames[index[s]], copy=False)
                        continue
                    if msg.type is not w.MessageType.ACK:
                        raise RuntimeError(f"daemon refused an update: {msg.body}")
                waiting -= 1
    return time.perf_counter() - t0


def envelopes(bodies: list[bytes], rounds: int) -> list[list[bytes]]:
    return [
        [
            w.encode_envelope(
                w.MessageType.UPDATE, f"sat-{i:03d}", r, 1000 * r + i, 0.0, body
            )
            for i, body in enumerate(bodies)
        ]
        for r in range(rounds)
    ]


def run_daemon(
    workdir: Path, n_params: int, n_agents: int, rounds: int, bodies, max_inflight=16
):
    """Ingest ``rounds`` rounds of ``n_agents`` updates; return measurements."""
    state = workdir / f"ground-{n_params}-{n_agents}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    endpoint_file = state / "endpoint"
    (state / "ground.toml").write_text(
        f"""
[ground]
bind = "tcp://127.0.0.1:0"
state_dir = "{state}"
endpoint_file = "{endpoint_file}"
max_inflight = {max_inflight}
[security]
curve = false
[rounds]
min_participants = {n_agents}
deadline_s = 3600
push_model = false
[model]
zeros = {{ w = [{n_params}] }}
[metrics]
enabled = false
"""
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ground", "--log-level", "WARNING", "serve",
         "--config", str(state / "ground.toml")],
        cwd=REPO, env=env,
    )  # fmt: skip
    try:
        while not endpoint_file.exists():
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited at start")
            time.sleep(0.05)
        endpoint = endpoint_file.read_text().strip()
        ctx = zmq.Context()
        socks = connect(ctx, endpoint, n_agents)
        frames = envelopes(bodies[:n_agents], rounds)
        rss_start_kb = _status_kb(proc.pid, "VmRSS")
        cpu0 = _cpu_s(proc.pid)
        elapsed = drive(socks, frames, credit=True)
        cpu = _cpu_s(proc.pid) - cpu0
        time.sleep(0.2)  # let the last round's checkpoint finish
        peak_kb = _status_kb(proc.pid, "VmHWM")
        ctx.destroy(linger=0)
    finally:
        proc.terminate()
        proc.wait(30)
    nbytes = sum(len(f) for r in frames for f in r)
    return {
        "updates": n_agents * rounds,
        "seconds": elapsed,
        "bytes": nbytes,
        "cpu_s": cpu,
        "rss_start_kb": rss_start_kb,
        "peak_kb": peak_kb,
    }


def run_raw(n_agents: int, rounds: int, bodies) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_ROUTER], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        ctx = zmq.Context()
        socks = connect(ctx, f"tcp://127.0.0.1:{port}", n_agents)
        frames = envelopes(bodies[:n_agents], rounds)
        cpu0 = _cpu_s(proc.pid)
        elapsed = drive(socks, frames, credit=False)
        cpu = _cpu_s(proc.pid) - cpu0
        socks[0].send(b"STOP")
        ctx.destroy(linger=0)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    nbytes = sum(len(f) for r in frames for f in r)
    return {"updates": n_agents * rounds, "seconds": elapsed, "bytes": nbytes,
            "cpu_s": cpu}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument(
        "--max-inflight", type=int, default=16, help="the daemon's max_inflight"
    )
    args = parser.parse_args()

    bodies = make_updates(args.agents, args.params, args.density)
    tiny = make_updates(args.agents, 1000, args.density)
    model_mb = args.params * 4 / 1e6
    print(
        f"model {args.params:,} float32 params ({model_mb:.1f} MB); "
        f"{args.agents} agents x {args.rounds} rounds; top-{args.density:.0%}; "
        f"update frame {len(bodies[0]) + 40:,} bytes"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = min(
            (run_raw(args.agents, args.rounds, bodies) for _ in range(args.repeat)),
            key=lambda m: m["seconds"],
        )
        daemon = min(
            (run_daemon(work, args.params, args.agents, args.rounds, bodies,
                        args.max_inflight)
             for _ in range(args.repeat)),
            key=lambda m: m["seconds"],
        )  # fmt: skip
        n = args.max_inflight
        base = run_daemon(work, 1000, args.agents, args.rounds, tiny, n)
        few = run_daemon(work, args.params, 10, args.rounds, bodies, n)
        base_few = run_daemon(work, 1000, 10, args.rounds, tiny, n)

    def rate(m):
        return m["updates"] / m["seconds"], m["bytes"] / m["seconds"] / 1e6

    ru, rmb = rate(raw)
    du, dmb = rate(daemon)
    print()
    print(f"{'path':<34}{'updates/s':>11}{'MB/s':>9}{'ratio':>8}{'CPU ms/upd':>12}")
    print(f"{'raw DEALER->ROUTER (baseline)':<34}{ru:>11.0f}{rmb:>9.1f}{1.0:>8.2f}"
          f"{1e3 * raw['cpu_s'] / raw['updates']:>12.3f}")  # fmt: skip
    ms = 1e3 * daemon["cpu_s"] / daemon["updates"]
    print(f"{'ground daemon FEDAVG (journal on)':<34}{du:>11.0f}{dmb:>9.1f}"
          f"{du / ru:>8.2f}{ms:>12.3f}")  # fmt: skip
    print(f"daemon updates per CPU-second (one core): "
          f"{daemon['updates'] / daemon['cpu_s']:.0f}")  # fmt: skip
    print()
    print(f"{'daemon memory':<34}{'agents':>8}{'peak RSS MB':>13}{'over base MB':>14}"
          f"{'x model':>9}")  # fmt: skip
    for label, m, b, n in (
        ("1e6-param model", daemon, base, args.agents),
        ("1e6-param model", few, base_few, 10),
    ):
        over = (m["peak_kb"] - b["peak_kb"]) / 1024
        print(f"{label:<34}{n:>8}{m['peak_kb'] / 1024:>13.1f}{over:>14.1f}"
              f"{over * 1.048576 / model_mb:>9.2f}")  # fmt: skip
    print(f"(base: the same daemon on a 1000-parameter model, peak "
          f"{base['peak_kb'] / 1024:.1f} MB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
