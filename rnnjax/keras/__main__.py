"""``python -m rnnjax.keras inspect FILE [--json]``: describe a Keras file without loading it."""

from __future__ import annotations

import argparse
import json
import sys

from rnnjax.keras.inspect import format_report, inspect_keras


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnnjax.keras", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="format, Keras version, layers, weight shapes, what cannot load")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print the description as JSON")
    args = parser.parse_args(argv)
    info = inspect_keras(args.file)
    print(json.dumps(info, indent=1, default=list) if args.json else format_report(info))
    return 1 if info["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
