"""``python -m ground COMMAND``: the ground segment's command line."""

import sys
from collections.abc import Sequence

from agent._cli import dispatch

# command -> (module with add_arguments/main, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "ground._cmd_demo",
        "federated training across a constellation, end to end, on defaults",
    ),
    "serve": (
        "ground._cmd_serve",
        "run the aggregator daemon: serve --config ground.toml",
    ),
    "keygen": ("ground._cmd_keygen", "make a CURVE key pair: keygen DIR NAME"),
    "passes": (
        "ground._cmd_passes",
        "contact windows: passes --tle FILE --station NAME,LAT,LON,ALT_KM --start T "
        "--hours H",
    ),
    "plan": (
        "ground._cmd_plan",
        "place a model's layers on nodes: plan --model spec.json --nodes nodes.toml",
    ),
    "routes": (
        "ground._cmd_routes",
        "write each node's routing row: routes --nodes nodes.toml --out DIR",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("ground", "orbitfl ground segment", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
