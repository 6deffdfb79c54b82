"""A small subcommand dispatcher shared by ``python -m agent`` and ``-m ground``.

Each subcommand lives in its own module, imported only when it is chosen, so
``python -m agent run`` on a flight computer never loads planning or plotting
code.  A command module defines ``add_arguments(parser)`` and
``main(args) -> int``.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module


class CommandError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""


def dispatch(
    prog: str,
    description: str,
    commands: dict[str, tuple[str, str]],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # argparse needs every subparser up front, but only the chosen command's
    # module is imported to fill in its arguments.
    raw = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in raw if a in commands), None)
    for name, (module_name, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            import_module(module_name).add_arguments(p)

    args = parser.parse_args(raw)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = import_module(commands[args.command][0])
    try:
        return int(module.main(args) or 0)
    except CommandError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
