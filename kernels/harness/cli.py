"""``pagesim kernels validate|bench``: the kernel harnesses as pagesim subcommands.

Importing this module imports neither torch nor triton; the handlers do, after
``--device cpu`` has selected the Triton interpreter.
"""
from __future__ import annotations

import argparse


def _cmd_validate(args: argparse.Namespace) -> int:
    from kernels.harness.validate import validate

    return validate(args.device, args.quick)


def _cmd_bench(args: argparse.Namespace) -> int:
    from kernels.harness.bench import run

    argv = [*(["--quick"] if args.quick else []), *(["--out", args.out] if args.out else []),
            *(["--sweep"] if args.sweep else [])]
    return run(args.quick, args.out, args.sweep, argv)


def register(subparsers) -> None:
    """Add ``kernels validate`` and ``kernels bench`` to an argparse subparsers
    object; each leaf sets ``func(args) -> exit code``."""
    from kernels.harness import bench, validate

    kernels = subparsers.add_parser(
        "kernels", help="validate or benchmark the Triton attention kernels",
        description="Check the Triton kernels against torch references, or time them on the GPU.")
    sub = kernels.add_subparsers(dest="kernels_command", required=True, metavar="ACTION")
    p = sub.add_parser("validate", help="every kernel against its torch reference; "
                                        "non-zero exit on any failure",
                       description=validate.__doc__.split("\n\n")[0])
    validate.add_arguments(p)
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("bench", help="time the kernels and write CSV + summary.md",
                       description=bench.__doc__.split("\n\n")[0])
    bench.add_arguments(p)
    p.set_defaults(func=_cmd_bench)
