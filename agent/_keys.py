"""CURVE key pairs for agents and the ground, in ZeroMQ's certificate files.

``make_keypair(dir, name)`` writes ``NAME.key`` (public) and
``NAME.key_secret`` (secret, mode 0600) with ``zmq.auth.create_certificates``.
The ground's allowlist is a directory of agents' public ``.key`` files; the
file name (without ``.key``) is the agent id the key may speak for.
"""

import os
from pathlib import Path

import zmq
import zmq.auth


class KeyFileError(ValueError):
    """A key file is missing or unreadable; the message names the path."""


def make_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create ``name.key`` and ``name.key_secret`` in ``directory``.

    Refuses to overwrite an existing pair: a replaced ground key would lock out
    every agent, and a replaced agent key would be refused by the ground.
    """
    if not zmq.has("curve"):
        raise KeyFileError("this libzmq was built without CURVE; keys cannot be made")
    directory = Path(directory)
    public = directory / f"{name}.key"
    secret = directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(
                f"{path} already exists; remove it first to make a new key pair"
            )
    directory.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.auth.create_certificates(directory, name)
    os.chmod(sec, 0o600)
    return Path(pub), Path(sec)


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """Return ``(public, secret)`` z85 keys from a ``.key_secret`` file."""
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read CURVE secret key file {path}: {exc}") from None
    if secret is None:
        raise KeyFileError(
            f"{path} holds no secret key; pass the .key_secret file, not the .key"
        )
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    """Return the z85 public key from a ``.key`` (or ``.key_secret``) file."""
    path = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read CURVE public key file {path}: {exc}") from None
    return public


def load_allowlist(directory: str | os.PathLike) -> dict[bytes, str]:
    """Map each z85 public key in ``directory/*.key`` to its agent id (file stem).

    Unreadable files are skipped, not fatal: one bad file must not lock out
    every agent.  The caller logs the returned ``skipped`` list.
    """
    keys, _ = load_allowlist_checked(directory)
    return keys


def load_allowlist_checked(
    directory: str | os.PathLike,
) -> tuple[dict[bytes, str], list[str]]:
    """Like :func:`load_allowlist`, also returning the problems found."""
    directory = Path(directory)
    keys: dict[bytes, str] = {}
    problems: list[str] = []
    if not directory.is_dir():
        return keys, [f"allowlist directory {directory} does not exist"]
    for path in sorted(directory.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        keys[public] = path.stem
    return keys, problems
