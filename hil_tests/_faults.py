"""Processes that can be killed: the daemon and agents under ``kill -9``.

``Proc`` runs one command (in a namespace or a chroot when its argv says so)
in its own process group with its output in a log file, and can be killed
with SIGKILL and started again with the same argv.  ``Chaos`` kills a
``Proc`` at seeded random instants and restarts it, counting each kill.
"""

import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


class Proc:
    """One restartable process with its output appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> "Proc":
        if self.running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(
            f"\n=== start {self.starts} of {self.name} at {time.time():.3f}\n".encode()
        )
        log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group (``ip netns exec`` and chroot wrappers
        included) and reap it."""
        if not self.running():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=30)
        self.kills += 1

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        return self.popen.returncode

    def log_text(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )


class Chaos:
    """Kill ``proc`` with SIGKILL ``n_kills`` times at seeded random instants.

    The gaps between kills are drawn uniformly from ``gap_s``; after each kill
    the process stays dead for a draw from ``down_s`` and is started again.
    ``aim(k)``, when given, is polled (every 20 ms, for at most ``aim_max_s``)
    after the gap of kill ``k`` and the kill waits until it returns True: a
    way to land a kill at an interesting moment (an update in flight).
    """

    def __init__(
        self,
        proc: Proc,
        seed: int,
        n_kills: int,
        gap_s: tuple[float, float],
        down_s: tuple[float, float] = (0.0, 0.5),
        on_kill: Callable[[int, float], None] | None = None,
        restart: bool = True,
        aim: Callable[[int], bool] | None = None,
        aim_max_s: float = 10.0,
    ) -> None:
        if n_kills < 0:
            raise ValueError(f"n_kills={n_kills}; expected >= 0")
        self.proc = proc
        self.rng = random.Random(seed)
        self.n_kills = n_kills
        self.gap_s = gap_s
        self.down_s = down_s
        self.on_kill = on_kill
        self.restart = restart
        self.aim = aim
        self.aim_max_s = aim_max_s
        self.kill_times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"chaos-{proc.name}", daemon=True
        )

    def start(self) -> "Chaos":
        self._thread.start()
        return self

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        for k in range(self.n_kills):
            if self._stop.wait(self.rng.uniform(*self.gap_s)):
                return
            if self.aim is not None:
                until = time.monotonic() + self.aim_max_s
                while time.monotonic() < until and not self._stop.is_set():
                    try:
                        if self.aim(k):
                            break
                    except Exception:  # the target may be mid-restart
                        pass
                    time.sleep(0.02)
            if not self.proc.running():
                # It died by itself: that is a failure the test will see in
                # the log; start it again and keep going.
                logger.warning("%s was not running before kill %d", self.proc.name, k)
                self.proc.start()
                continue
            self.proc.kill9()
            t = time.time()
            self.kill_times.append(t)
            if self.on_kill:
                self.on_kill(k, t)
            if self._stop.wait(self.rng.uniform(*self.down_s)):
                return
            if self.restart:
                self.proc.start()
