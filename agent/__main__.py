"""``python -m agent COMMAND``: the onboard agent's command line."""

import sys
from collections.abc import Sequence

from agent._cli import dispatch

# command -> (module with add_arguments/main, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compress-demo": (
        "agent._cmd_compress_demo",
        "compress a real-sized gradient with every method and print the sizes",
    ),
    "run": (
        "agent._cmd_run",
        "run the onboard agent: python -m agent run --config agent.toml",
    ),
    "keygen": ("agent._cmd_keygen", "make a CURVE key pair: keygen DIR NAME"),
    "stage": (
        "agent._cmd_stage",
        "run one stage of a partitioned model as a ZeroMQ pipeline worker",
    ),
    "profile": (
        "agent._cmd_profile",
        "measure per-layer time and memory of a model spec on this device",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("agent", "orbitfl onboard agent", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
