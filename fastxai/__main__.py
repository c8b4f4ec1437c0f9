"""Command line: ``fastxai demo`` (the default) and ``fastxai backends``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastxai", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="attribute a digits CNN on every backend and print timings")
    demo.add_argument("--samples", type=int, default=256, help="test images to explain (default 256)")
    demo.add_argument("--points", type=int, default=32, help="SmoothGrad samples and IG steps (default 32)")
    demo.add_argument("--repeats", type=int, default=5, help="timing repeats, best kept (default 5)")
    commands.add_parser("backends", help="which backends this machine has, and why not the others")
    args = parser.parse_args(argv)

    import fastxai as fx

    if args.command == "backends":
        for info in fx.backends().values():
            print(info)
        return 0
    from fastxai._demo import run_demo

    samples = getattr(args, "samples", 256)
    points = getattr(args, "points", 32)
    repeats = getattr(args, "repeats", 5)
    for name, value in (("--samples", samples), ("--points", points), ("--repeats", repeats)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    try:
        run_demo(samples=samples, points=points, repeats=repeats)
    except ImportError as error:
        print(f"fastxai: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
