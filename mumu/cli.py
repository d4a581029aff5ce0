"""`mumu` command line: one subcommand per flow. Bad input or config → one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from mumu.errors import UserError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples" / "scenes"


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (dotted key), got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _profile(args: argparse.Namespace):
    """Load and validate the profile before any Prefect start-up, so a bad one fails in a second."""
    from mumu.config import load_profile

    overrides = _overrides(args.set)
    return load_profile(args.profile, overrides), overrides


def _with_runner(flow, cfg):
    """The flow with the task runner its profile asks for (thread pool, or Dask for scale-out)."""
    from flows.runners import task_runner

    return flow.with_options(task_runner=task_runner(cfg.runtime))


def cmd_build_data(args: argparse.Namespace) -> None:
    cfg, overrides = _profile(args)
    if not Path(args.input).exists():
        raise UserError(f"--input {args.input}: no such file or directory")
    from flows.build_data import build_data
    from mumu.data.stages import plan_shards

    plan_shards(Path(args.input), cfg.data.ingest)  # an unusable input fails here, before Prefect starts

    manifest = _with_runner(build_data, cfg)(
        input_path=str(args.input), out=str(args.out), profile=args.profile, overrides=overrides
    )
    print(f"wrote {manifest['written']} samples in {len(manifest['shards'])} shards to {args.out} "
          f"({manifest['quarantined']} quarantined of {manifest['inputs']} inputs)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny", help="profile name (tiny, mumu-sdxl) or a YAML path [tiny]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile field, e.g. --set data.detect.box_threshold=0.3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mumu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-data", help="text–image pairs → multimodal-prompt webdataset shards")
    p.add_argument("--input", default=str(SAMPLES_DIR), help="folder of images (+captions.jsonl) or .tar shards")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json, quarantine.jsonl")
    _common(p)
    p.set_defaults(run=cmd_build_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except UserError as exc:
        print(f"mumu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mumu: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
