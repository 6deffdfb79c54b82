"""``python -m ground keygen DIR NAME``: make a CURVE key pair (ground or agent)."""

import argparse

from agent._cli import CommandError
from agent._keys import KeyFileError, make_keypair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to write NAME.key and NAME.key_secret")
    parser.add_argument(
        "name", help="the key's owner: 'ground', or an agent id for an allowlist"
    )


def main(args: argparse.Namespace) -> int:
    try:
        public, secret = make_keypair(args.directory, args.name)
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"public key: {public}")
    print(f"secret key: {secret}  (mode 0600; never leaves its owner)")
    return 0
