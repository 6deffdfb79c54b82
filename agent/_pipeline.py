"""Run a partitioned model as a pipeline of stage workers over ZeroMQ.

Each stage worker holds a layer range ``[start, stop)`` of a model.  It pulls
activation batches on a PULL socket, runs its layers, and pushes the result
to the next stage (or back to the ground's collector) on a PUSH socket.  The
ground side (``PipelineClient``) pushes input batches to the first stage and
pulls the outputs from the last one, matching them to inputs by sequence
number.  PUSH/PULL keeps the pipeline streaming: a stage computes batch k+1
while its output k is still on the wire, which is what the partition plan's
throughput estimate assumes.

A message is one frame holding a msgpack map::

    {"v": 1, "kind": "batch", "seq": int, "x": [dtype, shape, bytes]}
    {"v": 1, "kind": "error", "seq": int, "message": str}
    {"v": 1, "kind": "stop"}

Frames are untrusted: ZeroMQ drops frames above ``max_message_bytes``
(``MAXMSGSIZE``), msgpack's length limits bound every field, and the array
goes through ``agent._arrays.unpack_array`` with an element limit.  A batch
that cannot be decoded or has the wrong shape does not stop the stage: it is
answered downstream with an ``error`` message for its sequence number, which
reaches the ground in place of the output.

This module is the direct mode: each stage is given the ZeroMQ endpoint of
the next one.  ``agent._pipeline_mesh`` runs the same stages over the mesh:
batches carry a destination node id and travel hop by hop through each
node's routing row, relayed by satellites that run no layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from agent._arrays import ArrayFormatError, pack_array, unpack_array, unpack_bounded
from agent._nn import Model

PIPELINE_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_ELEMENTS = 1 << 26
_MAX_STR_LEN = 4096

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A pipeline message was refused, or the pipeline did not answer in time."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


def encode_batch(seq: int, x: np.ndarray) -> bytes:
    return msgpack.packb(
        {"v": PIPELINE_VERSION, "kind": "batch", "seq": int(seq), "x": pack_array(x)}
    )


def encode_error(seq: int, message: str) -> bytes:
    text = message[:_MAX_STR_LEN]
    return msgpack.packb(
        {"v": PIPELINE_VERSION, "kind": "error", "seq": int(seq), "message": text}
    )


def encode_stop() -> bytes:
    return msgpack.packb({"v": PIPELINE_VERSION, "kind": "stop"})


def decode_message(
    frame: bytes, *, max_message_bytes: int, max_elements: int
) -> dict[str, Any]:
    """Decode and validate one frame; PipelineError names what is wrong."""
    if len(frame) > max_message_bytes:
        raise PipelineError(
            f"message of {len(frame)} bytes exceeds the limit of {max_message_bytes}"
        )
    msg = unpack_bounded(
        frame,
        PipelineError,
        "message is not valid bounded msgpack",
        max_bin_len=max_message_bytes,
        max_str_len=_MAX_STR_LEN,
        max_array_len=16,
        max_map_len=8,
    )
    if not isinstance(msg, dict) or msg.get("v") != PIPELINE_VERSION:
        raise PipelineError(
            f"message must be a map with v={PIPELINE_VERSION}, got "
            f"{type(msg).__name__}"
            + (f" with v={msg.get('v')!r}" if isinstance(msg, dict) else "")
        )
    kind = msg.get("kind")
    if kind == "stop":
        return msg
    seq = msg.get("seq")
    if type(seq) is not int or seq < 0:
        raise PipelineError(f"message seq={seq!r} must be a non-negative int")
    if kind == "error":
        if not isinstance(msg.get("message"), str):
            raise PipelineError("error message without a text 'message'", seq)
        return msg
    if kind != "batch":
        raise PipelineError(
            f"message kind={kind!r}; expected batch, error or stop", seq
        )
    try:
        msg["x"] = unpack_array(msg.get("x"), max_elements=max_elements)
    except ArrayFormatError as exc:
        raise PipelineError(f"batch {seq}: {exc}", seq) from exc
    return msg


@dataclass
class StageStats:
    batches: int = 0
    errors: int = 0
    compute_s: float = 0.0


class Stage:
    """Layers ``[start, stop)`` of ``model`` as a frame-in, frame-out step.

    No sockets: ``StageWorker`` (direct mode) and
    ``agent._pipeline_mesh.MeshStageWorker`` (mesh mode) move the frames.
    """

    def __init__(
        self,
        model: Model,
        start: int,
        stop: int,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self.model = model
        self.in_shape, self.out_shape = model.stage_shapes(start, stop)
        self.start, self.stop = start, stop
        self.max_message_bytes = max_message_bytes
        self.max_elements = max_elements
        self.stats = StageStats()

    def handle(self, frame: bytes) -> bytes | None:
        """Turn one incoming frame into the frame to forward (None after stop)."""
        try:
            msg = decode_message(
                frame,
                max_message_bytes=self.max_message_bytes,
                max_elements=self.max_elements,
            )
        except PipelineError as exc:
            self.stats.errors += 1
            log.warning("stage %d:%d refused a message: %s", self.start, self.stop, exc)
            return None if exc.seq is None else encode_error(exc.seq, str(exc))
        if msg["kind"] == "stop":
            return None
        if msg["kind"] == "error":
            return frame
        x = msg["x"]
        try:
            t0 = time.perf_counter()
            y = self.model.forward(x, self.start, self.stop)
            self.stats.compute_s += time.perf_counter() - t0
        except ValueError as exc:
            self.stats.errors += 1
            return encode_error(msg["seq"], f"stage {self.start}:{self.stop}: {exc}")
        self.stats.batches += 1
        return encode_batch(msg["seq"], y)


class StageWorker(Stage):
    """One pipeline stage pulling frames on ``bind`` and pushing to the next.

    ``bind`` is the endpoint to pull from (``tcp://127.0.0.1:*`` picks a free
    port; ``endpoint`` says which); ``next_endpoint`` is where results go.
    """

    def __init__(
        self,
        model: Model,
        start: int,
        stop: int,
        next_endpoint: str,
        *,
        bind: str = "tcp://127.0.0.1:*",
        context: zmq.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        super().__init__(
            model,
            start,
            stop,
            max_message_bytes=max_message_bytes,
            max_elements=max_elements,
        )
        ctx = context or zmq.Context.instance()
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._pull.bind(bind)
        self.endpoint: str = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._push = ctx.socket(zmq.PUSH)
        # let a final stop message drain to the next stage when closing
        self._push.setsockopt(zmq.LINGER, 2000)
        self._push.connect(next_endpoint)

    def serve(
        self,
        idle_timeout_s: float | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> StageStats:
        """Process batches until a stop, an idle timeout or ``stop_requested()``.

        The stop message is forwarded on; ``stop_requested`` is checked
        between messages, at least every 0.25 s.
        """
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        last = time.monotonic()
        while not stop_requested():
            wait_ms = 250
            if idle_timeout_s is not None:
                left_s = last + idle_timeout_s - time.monotonic()
                wait_ms = min(wait_ms, max(0, int(left_s * 1000)))
            if not poller.poll(wait_ms):
                if idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
                    continue
                log.info("stage %d:%d idle for %s s, stopping", self.start, self.stop,
                         idle_timeout_s)  # fmt: skip
                break
            last = time.monotonic()
            frame = self._pull.recv(copy=True)
            out = self.handle(frame)
            if out is not None:
                self._push.send(out, copy=False)
                continue
            if _is_stop(frame):
                self._push.send(encode_stop())
                break
        return self.stats

    def close(self) -> None:
        self._pull.close()
        self._push.close()


def _is_stop(frame: bytes) -> bool:
    try:
        msg = msgpack.unpackb(frame, max_bin_len=0, max_str_len=16, max_map_len=8)
    except Exception:  # any malformed frame is simply not a stop
        return False
    return isinstance(msg, dict) and msg.get("kind") == "stop"


class _ClientBase:
    """Submit inputs and collect outputs; subclasses move the frames."""

    max_message_bytes: int
    max_elements: int

    def _send(self, seq: int, frame: bytes) -> None:
        raise NotImplementedError

    def _recv_frame(self, timeout_s: float) -> bytes | None:
        """The next frame addressed to the ground, or None after ``timeout_s``."""
        raise NotImplementedError

    def submit(self, seq: int, x: np.ndarray) -> None:
        self._send(seq, encode_batch(seq, x))

    def receive(self, timeout_s: float) -> tuple[int, np.ndarray]:
        """The next output as (seq, array); PipelineError on an error or timeout."""
        frame = self._recv_frame(timeout_s)
        if frame is None:
            raise PipelineError(f"no output from the pipeline within {timeout_s} s")
        msg = decode_message(
            frame,
            max_message_bytes=self.max_message_bytes,
            max_elements=self.max_elements,
        )
        if msg["kind"] == "error":
            raise PipelineError(msg["message"], msg["seq"])
        if msg["kind"] != "batch":
            raise PipelineError(f"unexpected {msg['kind']!r} message from the pipeline")
        return msg["seq"], msg["x"]

    def run(
        self, batches: Iterable[np.ndarray], timeout_s: float = 30.0, window: int = 8
    ) -> list[np.ndarray]:
        """Stream batches through the pipeline, at most ``window`` in flight.

        Returns the outputs in input order.
        """
        todo = list(batches)
        out: dict[int, np.ndarray] = {}
        sent = 0
        while len(out) < len(todo):
            while sent < len(todo) and sent - len(out) < max(1, window):
                self.submit(sent, todo[sent])
                sent += 1
            seq, y = self.receive(timeout_s)
            if not 0 <= seq < len(todo) or seq in out:
                raise PipelineError(f"output for unknown or repeated seq {seq}", seq)
            out[seq] = y
        return [out[i] for i in range(len(todo))]

    def stop(self) -> None:
        """Send a stop down the chain; each stage passes it on to the next."""
        self._send(0, encode_stop())

    def wait_stopped(self, timeout_s: float) -> bool:
        """True when the stop came back through the last stage."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            frame = self._recv_frame(left)
            if frame is None:
                return False
            if _is_stop(frame):
                return True
        return False


class PipelineClient(_ClientBase):
    """The ground side: push inputs to the first stage, collect the outputs.

    ``endpoint`` is the collector the last stage must push to.
    """

    def __init__(
        self,
        first_endpoint: str,
        *,
        bind: str = "tcp://127.0.0.1:*",
        context: zmq.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        ctx = context or zmq.Context.instance()
        self.max_message_bytes = max_message_bytes
        self.max_elements = max_elements
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._pull.bind(bind)
        self.endpoint: str = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._push = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 2000)
        self._first = first_endpoint
        if first_endpoint:
            self._push.connect(first_endpoint)

    def connect(self, first_endpoint: str) -> None:
        """Connect to the first stage (when it was not known at construction)."""
        self._first = first_endpoint
        self._push.connect(first_endpoint)

    def _send(self, seq: int, frame: bytes) -> None:
        self._push.send(frame, copy=False)

    def _recv_frame(self, timeout_s: float) -> bytes | None:
        if not self._pull.poll(int(timeout_s * 1000)):
            return None
        return self._pull.recv()

    def close(self) -> None:
        self._pull.close()
        self._push.close()
