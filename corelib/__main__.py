"""Command line: ``python -m corelib run params/<file>.yaml``; ``python -m corelib pretrain-demo <folder>`` remakes
the bundled demo encoder."""

from __future__ import annotations

import argparse
import sys

from corelib.encoders.pretrained import train_demo
from corelib.runs import pipeline
from corelib.runs.guards import describe_os_error


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m corelib`` (and the ``corelib`` script)."""
    parser = argparse.ArgumentParser(prog="python -m corelib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the numbered notebooks for a params file (papermill)")
    run_p.add_argument("params", help="a params file, e.g. params/demo.yaml")
    run_p.add_argument(
        "--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks (e.g. 01_embed)"
    )
    run_p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="recompute and replace results made from other inputs (instead of stopping)",
    )
    run_p.add_argument("--no-progress", action="store_true", help="hide the per-cell progress bar")
    pretrain_p = sub.add_parser(
        "pretrain-demo",
        help="train the demo's scVI as bundled in corelib/datasets/pretrained/pbmc3k_scvi (about 2 min on 2 cores)",
    )
    pretrain_p.add_argument("folder", help="where to write it, e.g. corelib/datasets/pretrained/pbmc3k_scvi")
    pretrain_p.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
    args = parser.parse_args(argv)
    if args.command == "pretrain-demo":
        folder = train_demo(args.folder, progress=not args.no_progress)
        print(f"Wrote the demo encoder and its record to {folder}")
        return 0
    try:
        return run_command(args)
    except KeyboardInterrupt as err:  # the pipeline has recorded the attempt; its message says what was kept
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return getattr(err, "exit_code", 130)  # 143 after SIGTERM


def run_command(args: argparse.Namespace) -> int:
    """``python -m corelib run``: execute the notebooks, print where the outputs are; errors in one line."""
    try:
        run_dir = pipeline.run(
            args.params, only=args.only, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (pipeline.PipelineError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full disk, a folder that cannot be written: one line naming the path
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    print(f"Executed notebooks: {run_dir.root / 'notebooks'}")
    print(f"HTML report:        {run_dir.path('report')}")
    if run_dir.locate("atlas").exists():
        print(f"Concept atlas:      {run_dir.path('atlas')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
