"""CURVE admission: which public keys may connect, and who each one is.

One allowlist serves every ZeroMQ endpoint that authenticates agents: the
ground daemon's ROUTER (keys read from its allowlist directory, re-read when
the directory changes) and an agent's inter-satellite link endpoint (a fixed
key -> agent id map).  The authenticator is a ``zmq.auth`` ZAP handler whose
``User-Id`` is the agent id a key belongs to, so a receiver can check that a
message names the agent its key does.
"""

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from agent._keys import load_allowlist_checked

log = logging.getLogger(__name__)


class Allowlist:
    """The admitted keys (z85 public key -> agent id).

    Give ``directory`` to read the keys from an allowlist directory, re-read
    whenever its modification time changes, or ``names`` for a fixed map.
    ``on_refused`` is called once per refused connection (e.g. a metric).
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        names: dict[bytes, str] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        if (directory is None) == (names is None):
            raise ValueError("give exactly one of directory= and names=")
        self.directory = directory
        self.on_refused = on_refused
        self._mtime_ns: int | None = None
        self._names: dict[bytes, str] = dict(names or {})
        self._warned: set[bytes] = set()
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        if self.directory is None:
            return
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime == self._mtime_ns:
            return
        names, problems = load_allowlist_checked(self.directory)
        for p in problems:
            log.warning("allowlist: %s", p)
        self._names, self._mtime_ns = names, mtime
        log.info("allowlist %s: %d agent key(s)", self.directory, len(names))

    def callback(self, domain: str, key_z85: bytes) -> bool:
        with self._lock:
            self._reload()
            if key_z85 in self._names:
                return True
            # Refused agents retry every reconnect interval: warn once per key.
            level = logging.DEBUG if key_z85 in self._warned else logging.WARNING
            self._warned.add(key_z85)
        if self.on_refused is not None:
            self.on_refused()
        log.log(
            level,
            "refused CURVE client key %s on ZAP domain %r: not in the allowlist%s",
            key_z85.decode("ascii", "replace"),
            domain,
            f" {self.directory}" if self.directory is not None else "",
        )
        return False

    def name_of(self, key_z85: bytes) -> str:
        with self._lock:
            return self._names.get(key_z85, "")

    def names(self) -> set[str]:
        """The agent ids of the admitted keys."""
        with self._lock:
            self._reload()
            return set(self._names.values())


class AllowlistAuthenticator(ThreadAuthenticator):
    """ZAP handler whose User-Id is the agent id the key belongs to."""

    def __init__(
        self, context: zmq.Context, allowlist: Allowlist, log_name: str
    ) -> None:
        super().__init__(context, log=logging.getLogger(log_name))
        self.allowlist = allowlist

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowlist.name_of(z85.encode(client_public_key))
