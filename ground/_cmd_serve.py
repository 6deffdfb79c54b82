"""``python -m ground serve --config ground.toml``: run the aggregator daemon."""

import argparse
import signal

from agent._cli import CommandError
from ground._config import ConfigError, load_ground_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="ground TOML file (see README: ground.toml)"
    )


def main(args: argparse.Namespace) -> int:
    from ground._daemon import GroundDaemon

    try:
        config = load_ground_config(args.config)
        daemon = GroundDaemon(config)
    except (ConfigError, OSError, ValueError) as exc:
        raise CommandError(f"{exc}") from None
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop(timeout_s=0))
    daemon.run()
    return 0
