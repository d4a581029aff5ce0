"""Entry point of one training process under `accelerate launch` (multi-GPU stages).

    accelerate launch --num_processes N -m mumu.train.entry pretrain --profile P --data D --out O

Each process runs mumu.train.loop.train; the main process writes OUT/result.json for the Prefect task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accelerate import PartialState

from mumu.config import load_profile
from mumu.data.shards import shard_urls
from mumu.errors import UserError
from mumu.io import write_json_atomic
from mumu.train.loop import train


def result_summary(result) -> dict:
    """What a stage reports to its flow (and, under accelerate, through OUT/result.json)."""
    return {"stage": result.stage, "out": str(result.out_dir), "model": str(result.model_dir),
            "resumed_from": result.start_step, "steps": result.steps, "final_loss": result.final_loss,
            "seconds": round(result.seconds, 2)}


def resumed_line(stage: str, step: int, checkpoint) -> str:
    """The log line of a run that continues from a checkpoint (the same under a Prefect task and accelerate)."""
    return f"{stage}: resumed from step {step} ({checkpoint})"


def final_line(result: dict) -> str:
    """The one line a finished stage ends with (the CLI prints it)."""
    resumed = f" (resumed from step {result['resumed_from']})" if result.get("resumed_from") else ""
    return (f"{result['stage']}: {result['steps']} steps{resumed}, final loss {result['final_loss']:.4f}; "
            f"model in {result['model']}")


def _say(line: str) -> None:
    """One write per line: the ranks share the launcher's unbuffered pipe (see mumu.launch.run_launcher)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mumu.train.entry")
    p.add_argument("stage", choices=["pretrain", "tune"])
    p.add_argument("--profile", default="tiny", help="a profile name or YAML path, e.g. the OUT/config.yaml a "
                   "launching task wrote (its config, resolved)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    try:
        cfg = load_profile(args.profile)
        result = train(args.stage, cfg, shard_urls(args.data), args.out, init=args.init, resume=args.resume,
                       on_log=lambda step, m: _say(f"{args.stage} step {step}: loss {m['loss']:.4f}"),
                       on_resume=lambda step, ckpt: _say(resumed_line(args.stage, step, ckpt)),
                       on_info=lambda line: _say(f"{args.stage}: {line}"))
        if PartialState().is_main_process:
            write_json_atomic(Path(args.out) / "result.json", result_summary(result))
    except UserError as exc:
        print(f"mumu: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
