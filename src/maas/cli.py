"""The ``maas`` command line: one sub-command per concern, each in its own module.

Each sub-command module defines ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its command runs, so ``maas serve`` never loads training code and
``maas --help`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("maas.serving.cli", "serve a model repository over HTTP (TF Serving v1, OIP v2)"),
    "models": ("maas.registry.cli", "model versions: list, show, register, promote, rollback"),
    "train": ("maas.training.cli", "train the classifier: one device, mirrored, multi-worker, ps"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maas",
        description="Model as a Service: train, compress, serve and version text classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
