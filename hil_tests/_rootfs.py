"""Run commands on the emulated arm64 flight computer, or on a real one.

The emulated one is the Debian bookworm root filesystem that
``hil_tests/arm64/build_rootfs.sh`` builds; a command runs there through
``chroot`` in a private mount namespace (with its own /proc and the host's
/dev), and the kernel hands every aarch64 binary to ``qemu-aarch64-static``
through binfmt_misc.  It shares the caller's network namespace, so wrapping
the argv in ``ip netns exec`` puts it behind an emulated link.

A real device is named by ``HIL_TARGET=ssh://user@host[:port]``.
"""

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hil_tests._ledger import WORK_DIR

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hil_tests" / "arm64" / "build_rootfs.sh"
ROOTFS = WORK_DIR / "rootfs-bookworm-arm64"
OPT = "/opt/orbitfl"
VENV_PYTHON = f"{OPT}/venv/bin/python"
SRC = f"{OPT}/src"
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable_reason(need_project: bool = True) -> str | None:
    """Why the emulated arm64 computer cannot run here, or None.

    ``need_project=False``: only the root filesystem and its venv, not
    orbitfl built inside (the ssh stand-in builds its own copy)."""
    if os.geteuid() != 0:
        return f"the arm64 root filesystem needs root for chroot (uid {os.geteuid()})"
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        return "`unshare` or `chroot` not found; install util-linux and coreutils"
    if not BINFMT_ENTRY.exists():
        return (
            f"{BINFMT_ENTRY} is missing: no qemu-aarch64 binfmt handler; run "
            f"{BUILD_SCRIPT} (it installs qemu-user-static and enables it)"
        )
    if not BINFMT_ENTRY.read_text().startswith("enabled"):
        return f"{BINFMT_ENTRY} is disabled; run update-binfmts --enable qemu-aarch64"
    if not (WORK_DIR / ".debootstrap.done").exists():
        return f"the arm64 root filesystem is not built; run {BUILD_SCRIPT}"
    if not any(WORK_DIR.glob(".venv-*.done")):
        return f"the arm64 root filesystem has no venv; run {BUILD_SCRIPT}"
    if need_project and not any(WORK_DIR.glob(".project-*.done")):
        return f"orbitfl is not built in the arm64 root filesystem; run {BUILD_SCRIPT}"
    return None


def rebuild_project() -> None:
    """Run the build script: a no-op unless the source changed since the last
    build, then only the sdist and kernel stage."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{BUILD_SCRIPT} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )


def rootfs_argv(
    argv: Sequence[str], env: dict[str, str] | None = None, cwd: str = SRC
) -> list[str]:
    """``argv`` wrapped to run inside the arm64 root filesystem.

    The environment inside is only ``env`` plus PATH, HOME and LANG: nothing
    from the host leaks in.
    """
    root = str(ROOTFS)
    setup = (
        f"mount -t proc proc {shlex.quote(root)}/proc && "
        f"mount --rbind /dev {shlex.quote(root)}/dev && "
        f'exec chroot {shlex.quote(root)} "$@"'
    )
    inner_env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"} | (env or {})
    inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in inner_env.items())]
    inner += ["/bin/sh", "-c", f'cd {shlex.quote(cwd)} && exec "$@"', "sh", *argv]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup,
            "sh", *inner]  # fmt: skip


def host_path(path_inside: str) -> Path:
    """Where a path inside the root filesystem is on the host."""
    return ROOTFS / path_inside.lstrip("/")


@dataclass(frozen=True)
class SshTarget:
    """An arm64 device reached over ssh (``HIL_TARGET=ssh://user@host``).

    ``identity`` and ``known_hosts`` are for a device the tests set up
    themselves (``hil_tests._sshd``); a real device uses the caller's ssh
    configuration and agent.
    """

    user: str | None
    host: str
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None

    @classmethod
    def from_env(cls) -> "SshTarget | None":
        raw = os.environ.get("HIL_TARGET", "").strip()
        if not raw:
            return None
        url = urlparse(raw)
        if url.scheme != "ssh" or not url.hostname:
            raise ValueError(
                f"HIL_TARGET={raw!r} is not ssh://[user@]host[:port], e.g. "
                "ssh://pi@192.0.2.20"
            )
        return cls(url.username, url.hostname, url.port or 22)

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def url(self) -> str:
        return f"ssh://{self.dest}:{self.port}"

    def _options(self) -> list[str]:
        # BatchMode: a key or nothing, never a password prompt in CI.
        opts = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=15"]  # fmt: skip
        if self.identity:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}",
                     "-o", "StrictHostKeyChecking=accept-new"]  # fmt: skip
        return opts

    def ssh_argv(self, remote_cmd: str) -> list[str]:
        return ["ssh", "-p", str(self.port), *self._options(), self.dest, remote_cmd]

    def scp_argv(self, local: Path, remote: str) -> list[str]:
        """scp a local file or directory (recursively) to ``remote``."""
        return ["scp", "-q", "-r", "-P", str(self.port), *self._options(),
                str(local), f"{self.dest}:{remote}"]  # fmt: skip

    def fetch_argv(self, remote: str, local: Path) -> list[str]:
        """scp a remote file or directory (recursively) to ``local``."""
        return ["scp", "-q", "-r", "-P", str(self.port), *self._options(),
                f"{self.dest}:{remote}", str(local)]  # fmt: skip
