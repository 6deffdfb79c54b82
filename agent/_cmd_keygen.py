"""``python -m agent keygen DIR NAME``: make a CURVE key pair for an agent."""

import argparse

from agent._cli import CommandError
from agent._keys import KeyFileError, make_keypair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to write NAME.key and NAME.key_secret")
    parser.add_argument("name", help="the agent id (the key files' name)")


def main(args: argparse.Namespace) -> int:
    try:
        public, secret = make_keypair(args.directory, args.name)
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"public key: {public}  (copy into the ground's allowlist_dir)")
    print(f"secret key: {secret}  (keep on this agent only, mode 0600)")
    return 0
