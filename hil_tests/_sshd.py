"""A stand-in for a real device: sshd inside the arm64 root filesystem.

When ``HIL_TARGET`` is not set, the real-device tests still run their whole
path (scp the sdist, build on the device, digests, the agent against the
host's daemon) over real ssh against an aarch64 userland: the root
filesystem's own ``/usr/sbin/sshd`` (installed by
``hil_tests/arm64/add_sshd.sh``), started chrooted under qemu-user on a
random loopback port, with a client key generated for the run.  Everything
the device runs is aarch64 code under qemu; only the network stack is the
host's (the chroot shares its network namespace).

What this does not stand in for: a device's own kernel, its memory limits,
its clock and a network path with real loss.  It proves the scripts, not
the board.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from hil_tests import _rootfs
from hil_tests._faults import Proc
from hil_tests._ledger import WORK_DIR

ADD_SCRIPT = _rootfs.REPO / "hil_tests" / "arm64" / "add_sshd.sh"
STAMP = WORK_DIR / ".openssh.done"
# Wheels the root filesystem's venv was installed from: the device installs
# the same pinned set offline instead of from PyPI.
OFFLINE_PIP_ARGS = f"--no-index --find-links {_rootfs.OPT}/wheels"
START_TIMEOUT_S = 90.0  # sshd's first connection under qemu takes seconds


def unavailable_reason() -> str | None:
    """Why the sshd stand-in cannot run here, or None."""
    reason = _rootfs.unavailable_reason(need_project=False)
    if reason:
        return reason
    if not STAMP.exists() or not _rootfs.host_path("/usr/sbin/sshd").exists():
        return f"the arm64 root filesystem has no sshd; run {ADD_SCRIPT}"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on the host; install openssh-client"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSshd:
    """sshd of the root filesystem on ``127.0.0.1:port``, root by key only."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.tag = f"hil-{os.getpid()}"
        self.config_inside = f"/etc/ssh/sshd_config_{self.tag}"
        self.keys_inside = f"/root/.ssh/authorized_keys_{self.tag}"
        self.proc: Proc | None = None

    def start(self) -> _rootfs.SshTarget:
        self.work.mkdir(parents=True, exist_ok=True)
        key = self.work / "id_ed25519"
        key.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.tag,
             "-f", str(key)],
            check=True, timeout=30,
        )  # fmt: skip
        auth = _rootfs.host_path(self.keys_inside)
        auth.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth.write_text(key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        _rootfs.host_path("/run/sshd").mkdir(parents=True, exist_ok=True)
        port = free_port()
        _rootfs.host_path(self.config_inside).write_text(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            f"AuthorizedKeysFile {self.keys_inside}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            # PAM would want a login session the chroot does not have.
            "UsePAM no\n"
            "PidFile none\n"
            "Subsystem sftp internal-sftp\n"
        )
        argv = ["/usr/sbin/sshd", "-D", "-e", "-f", self.config_inside]
        self.proc = Proc(
            "sshd", _rootfs.rootfs_argv(argv, cwd="/"), self.work / "sshd.log"
        ).start()
        target = _rootfs.SshTarget(
            "root", "127.0.0.1", port, identity=key,
            known_hosts=self.work / "known_hosts",
        )  # fmt: skip
        try:
            self._wait_ready(target)
        except BaseException:
            self.stop()
            raise
        return target

    def _wait_ready(self, target: _rootfs.SshTarget) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if not self.proc.running():
                raise RuntimeError(f"sshd exited:\n{self.proc.log_text()[-3000:]}")
            proc = subprocess.run(
                target.ssh_argv("uname -m"), capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            if proc.returncode == 0 and proc.stdout.strip() == "aarch64":
                return
            last = proc.stderr.strip() or proc.stdout.strip()
            time.sleep(1.0)
        raise RuntimeError(
            f"ssh to {target.url} did not work in {START_TIMEOUT_S} s: {last}\n"
            f"sshd log:\n{self.proc.log_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        for inside in (self.config_inside, self.keys_inside):
            _rootfs.host_path(inside).unlink(missing_ok=True)
