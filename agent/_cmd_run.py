"""``python -m agent run --config agent.toml``: run the onboard agent."""

import argparse
import logging
import signal

from agent._cli import CommandError
from agent._config import ConfigError, load_agent_config

log = logging.getLogger("agent.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="agent TOML file (see README: agent.toml)"
    )


def main(args: argparse.Namespace) -> int:
    from agent._agent import Agent

    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    try:
        agent = Agent(config)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{args.config}: {exc}") from None

    # SIGTERM (systemd stop) ends the loop cleanly; the outbox keeps the rest.
    signal.signal(signal.SIGTERM, lambda *_: agent.stop(timeout_s=0))
    agent.run()
    return 0
