"""The MODEL frames the ground sends, and which coordinates changed between them.

The daemon builds one full MODEL frame per (round, version).  Before it drops
the previous frame it diffs that frame's weights (read in place from the
frame's bytes) against the new model and records the changed flat indices.
An agent that says in its HELLO that it holds version ``h`` then gets a patch
made of the union of the changes since ``h`` and the current values there
(:mod:`agent._model_patch`), when that is clearly smaller than the weights.

Memory is bounded: the log keeps at most ``max_fraction`` of the model's
element count in stored indices (4 bytes each), dropping the oldest steps
first; a step that changed more than that is not recorded and ends every
chain that crosses it, so agents behind it get the full weights.
"""

from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from agent import _wire as wire
from agent._model_patch import changed_indices, model_crc32


class PatchLog:
    """Changed indices per step between successive model versions sent."""

    def __init__(self, max_fraction: float = 0.25) -> None:
        if not 0.0 < max_fraction <= 1.0:
            raise ValueError(f"max_fraction={max_fraction!r} must be in (0, 1]")
        self.max_fraction = max_fraction
        # (from_version, to_version, {name: indices}), oldest first
        self._steps: deque[tuple[int, int, dict[str, np.ndarray]]] = deque()
        self._stored = 0
        self._head: int | None = None  # version the newest step ends at

    def record(
        self,
        old: Mapping[str, np.ndarray] | None,
        old_version: int,
        new: Mapping[str, np.ndarray],
        new_version: int,
    ) -> None:
        """Log the step from the model sent as ``old_version`` to ``new``."""
        total = sum(a.size for a in new.values())
        budget = int(self.max_fraction * total)
        same_layout = old is not None and set(old) == set(new)
        if same_layout:
            for name, a in new.items():
                b = old[name]
                if b.shape != a.shape or b.dtype != a.dtype:
                    same_layout = False
                    break
        if not same_layout or self._head not in (None, old_version):
            self.clear()
        step: dict[str, np.ndarray] | None = {}
        if same_layout:
            count = 0
            for name, a in new.items():
                idx = changed_indices(old[name], a)
                count += idx.size
                if count > budget:
                    step = None
                    break
                step[name] = idx
        else:
            step = None
        if step is None:
            self.clear()
        elif old_version != new_version or any(i.size for i in step.values()):
            self._steps.append((old_version, new_version, step))
            self._stored += sum(i.size for i in step.values())
            while self._stored > budget and self._steps:
                _, _, dropped = self._steps.popleft()
                self._stored -= sum(i.size for i in dropped.values())
        self._head = new_version

    def clear(self) -> None:
        self._steps.clear()
        self._stored = 0
        self._head = None

    def changed_since(self, version: int) -> dict[str, np.ndarray] | None:
        """Union of the indices changed since ``version``, or None if not known.

        ``{}`` means nothing changed (the agent holds the newest model).
        """
        if self._head is None:
            return None
        if version == self._head:
            return {}
        parts: dict[str, list[np.ndarray]] = {}
        for frm, _, step in reversed(self._steps):
            for name, idx in step.items():
                parts.setdefault(name, []).append(idx)
            if frm == version:
                return {
                    name: np.unique(np.concatenate(p)).astype(np.uint32, copy=False)
                    for name, p in parts.items()
                }
        return None


class ModelFrames:
    """The MODEL frames the daemon sends: one full frame per (round, version),
    and patches from the versions its agents hold.

    ``header()`` gives the ``(seq, send_time_s)`` of a new frame; ``counted``
    is called with ``"weights"`` or ``"patch"`` for each frame handed out.
    """

    def __init__(
        self,
        sender: str,
        header: Callable[[], tuple[int, float]],
        counted: Callable[[str], None],
        max_peers: int = 65536,
    ) -> None:
        self.sender = sender
        self._header = header
        self._counted = counted
        self._max_peers = max_peers
        self._log = PatchLog()
        self._full: tuple[tuple[int, int], bytes] | None = None
        self._crc = 0
        self._patches: dict[int, bytes] = {}  # base version -> frame (or b"")
        self._held: dict[bytes, tuple[int, bool]] = {}  # version, patches?

    def heard(self, identity: bytes, version: int, patches: bool) -> None:
        """Note what an agent's HELLO says it holds."""
        if len(self._held) >= self._max_peers and identity not in self._held:
            # Only a cache: a forgotten agent gets the full weights once.
            self._held.clear()
        self._held[identity] = (version, patches)

    def forget(self, identity: bytes) -> None:
        self._held.pop(identity, None)

    def full(
        self, round: int, version: int, deadline_s: float, model: Mapping
    ) -> bytes:
        """The encoded MODEL with the full weights, built once per (round, version).

        One cached frame (the model's size) serves every HELLO and push of a
        (round, version); all copies share its seq and send time.
        """
        key = (round, version)
        if self._full is None or self._full[0] != key:
            self._log_step(version, model)
            self._full = None  # free the old one before building anew
            self._patches.clear()
            self._crc = model_crc32(model)
            seq, now_s = self._header()
            body = wire.encode_body(
                wire.MessageType.MODEL,
                {"version": version, "deadline_s": deadline_s, "weights": model},
            )
            frame = wire.encode_envelope(
                wire.MessageType.MODEL, self.sender, round, seq, now_s, body
            )
            del body
            self._full = (key, frame)
        return self._full[1]

    def for_peer(
        self,
        identity: bytes,
        round: int,
        version: int,
        deadline_s: float,
        model: Mapping[str, np.ndarray],
    ) -> bytes:
        """The MODEL for one agent: a patch from what it holds, if smaller.

        What the agent holds is what its last HELLO said, or the model last
        sent to it; a patch that does not fit is refused by the agent's CRC
        check, and its next HELLO asks for the full weights.
        """
        full = self.full(round, version, deadline_s, model)
        held, patches = self._held.get(identity, (-1, False))
        self._held[identity] = (version, patches)
        frame = b""
        if patches and held >= 0:
            frame = self._patches.get(held)
            if frame is None:
                frame = self._patch(held, round, version, deadline_s, model, full)
                # At most one full frame's worth of patches is kept.
                if sum(map(len, self._patches.values())) + len(frame) > len(full):
                    self._patches.clear()
                self._patches[held] = frame
        self._counted("patch" if frame else "weights")
        return frame or full

    def _patch(self, held, round, version, deadline_s, model, full) -> bytes:
        """Encode the patch from version ``held``; b"" if unknown or not smaller."""
        changed = self._log.changed_since(held)
        if changed is None:
            return b""
        nbytes = sum(i.size * (4 + model[n].itemsize) for n, i in changed.items())
        if nbytes > len(full) // 2:
            return b""
        seq, now_s = self._header()
        patch = {n: (i, model[n].reshape(-1)[i]) for n, i in changed.items()}
        return wire.encode(
            wire.model_patch(
                self.sender, round, seq, now_s,
                version=version, deadline_s=deadline_s, base_version=held,
                patch=patch, crc32=self._crc,
            )
        )  # fmt: skip

    def _log_step(self, version: int, model: Mapping[str, np.ndarray]) -> None:
        """Record what changed since the frame about to be replaced was built."""
        if self._full is None:
            self._log.record(None, -1, model, version)
            return
        (_, old_version), frame = self._full
        # Our own frame: bounded by its own size, not by the inbound cap.
        limits = wire.Limits(max(len(frame), 64), 1 << 62)
        old = wire.decode(frame, limits).body["weights"]
        self._log.record(old, old_version, model, version)
