"""`mumu` command line: one subcommand per flow. Bad input or config → one line on stderr, exit 2.

Each command checks its profile and input before it imports its flow, so a bad one fails in a second and `--help`
never loads Prefect or torch (several seconds).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

import yaml

from mumu import SAMPLES_DIR, TRAIN_SAMPLES_DIR
from mumu.config import ProfileConfig, load_profile
from mumu.errors import UserError
from mumu.runs import model_dir, profile_yaml
from mumu.stage_list import RUN_INPUT, STAGES, Stage, chain, top_folders


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (dotted key), got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _profile(args: argparse.Namespace, **flags: Any) -> ProfileConfig:
    """The command's config, resolved once (before any Prefect start-up, so a bad one fails in a second) and
    handed to its flow as the object.

    `flags` are command-line options that stand for profile fields (dotted key -> value, None = not
    given): they are validated with the profile, so their bounds are the field's."""

    overrides = _overrides(args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_profile(args.profile, overrides)


def cmd_build_data(args: argparse.Namespace) -> None:
    cfg = _profile(args)
    if not Path(args.input).exists():
        raise UserError(f"--input {args.input}: no such file or directory")
    # Prefect loads only now, after the checks above
    from flows.build_data import build_data
    from mumu.data.stages import plan_shards

    plan_shards(Path(args.input), cfg.data.ingest)  # an unusable input fails here, before Prefect starts

    manifest = build_data(input_path=str(args.input), out=str(args.out), profile=cfg)
    print(f"wrote {manifest['written']} samples in {len(manifest['shards'])} shards to {args.out} "
          f"({manifest['quarantined']} quarantined of {manifest['inputs']} inputs)")


def cmd_cache_features(args: argparse.Namespace) -> None:
    cfg = _profile(args)
    # torch: only for this command
    from mumu.train.feature_stage import plan_cache

    plan_cache(args.data, cfg.model, cfg.train)  # no data manifest → one line here, before Prefect starts
    # Prefect loads only now, after the checks above
    from flows.cache_features import cache_features

    result = cache_features(data=str(args.data), profile=cfg)
    if result["key"] is None:
        print("nothing to cache for this model and config (train.features): training computes every part")
    else:
        print(f"cached features of {result['samples']} samples in {result['shards']} shards "
              f"({result['bytes'] / 1e6:.1f} MB) to {result['folder']}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    cfg = _profile(args, **{"train.pretrain.max_steps": args.max_steps})
    # torch: only for this command
    from mumu.data.shards import shard_urls

    shard_urls(args.data)  # no shards → one line here, before Prefect starts
    # Prefect loads only now, after the checks above
    from flows.pretrain import pretrain
    from mumu.train.entry import final_line

    result = pretrain(data=args.data, out=args.out, profile=cfg, resume=args.resume)
    print(final_line(result))


def cmd_tune(args: argparse.Namespace) -> None:
    cfg = _profile(args, **{"train.tune.attn_loss.weight": args.attn_loss_weight,
                            "train.tune.max_steps": args.max_steps})
    # torch: only for this command
    from mumu.data.shards import shard_urls

    shard_urls(args.data), model_dir(args.init)
    # Prefect loads only now, after the checks above
    from flows.tune import tune
    from mumu.train.entry import final_line

    result = tune(data=args.data, init=args.init, out=args.out, profile=cfg, resume=args.resume)
    print(final_line(result))


def cmd_generate(args: argparse.Namespace) -> None:
    cfg = _profile(args, **{"eval.sampler.steps": args.steps, "eval.sampler.guidance_scale": args.guidance_scale,
                               "eval.sampler.name": args.sampler})
    # torch and diffusers load only for this command, after the profile is checked
    from mumu.devices import runtime_device
    from mumu.generate import generate_to_file

    paths = generate_to_file(args.checkpoint, args.prompt, args.out, n=args.n, seed=args.seed,
                             sampler_cfg=cfg.eval.sampler, base_dir=args.base_dir, device=runtime_device(cfg.runtime))
    print("wrote " + ", ".join(str(p) for p in paths))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mumu.eval.presets import protocol_overrides  # only this command reads benchmarks and presets

    # A named protocol's settings sit between the profile and --set: the user's own overrides still win (and the
    # report names every setting that then differs from the protocol).
    overrides = {**(protocol_overrides(args.protocol) if args.protocol else {}), **_overrides(args.set)}
    if args.compare:
        from mumu.eval.compare import compare_folders, format_comparison  # numpy and the bootstrap: only here

        cfg = load_profile(args.profile, overrides)
        run_a, run_b = args.compare
        comparisons = compare_folders(run_a, run_b, cfg.eval.bootstrap)
        print(format_comparison(comparisons, run_a, run_b, cfg.eval.bootstrap.level))
        return
    if not args.checkpoint or not args.out:
        raise UserError("evaluate needs --checkpoint and --out (or --compare RUN_A RUN_B)")
    from mumu.eval.benchmarks import build_benchmarks, profile_for_checkpoint  # only this command reads them

    cfg = profile_for_checkpoint(args.profile, overrides, args.checkpoint)
    model_dir(args.checkpoint)  # a missing or unfinished checkpoint fails here, before Prefect starts
    # A bad benchmark folder (unknown MultiBench slot, unreadable image, ...) fails here, before Prefect starts.
    bench_cfg = cfg.eval.benchmark
    build_benchmarks(bench_cfg if args.bench == "toy" else bench_cfg.model_copy(update={"root": args.bench}))
    # Prefect loads only now, after the checks above
    from flows.evaluate import evaluate

    report = evaluate(checkpoint=args.checkpoint, out=args.out, bench=args.bench, profile=cfg)
    print(f"report: {report['markdown']}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    cfg = _profile(args)
    # Prefect loads only now, after the checks above
    from flows.pipeline import pipeline

    result = pipeline(input_path=args.input, out=args.out, profile=cfg)
    print(f"pipeline finished: report in {result['report']}")


def _stage_command(stage: Stage) -> Callable[[argparse.Namespace], None]:
    """`mumu STAGE --PARAM FOLDER ...` for a stage of mumu/stage_list.py that has no subcommand of its own: its flow
    on the folders given, one option per folder parameter the list names."""

    def run(args: argparse.Namespace) -> None:
        cfg = _profile(args)
        run_stage = getattr(import_module(stage.module), stage.function)  # Prefect and the flow load only now
        run_stage(**{param: getattr(args, param) for param in stage.parameters}, profile=cfg)
        print(f"{stage.name} finished" + (f": {args.out}" if "out" in stage.parameters else ""))

    return run


def _stage_parser(sub, stage: Stage, folders: dict[str, str]) -> None:
    p = sub.add_parser(stage.name, help=f"the {stage.name} stage (flow {stage.entrypoint})")
    for param, of in stage.parameters.items():
        what = "the run's input" if of == RUN_INPUT else f"RUN/{folders[of]} of a run"
        p.add_argument(f"--{param.replace('_', '-')}", dest=param, required=True, help=f"folder: {what}")
    _common(p)
    p.set_defaults(run=_stage_command(stage))


def cmd_profile_show(args: argparse.Namespace) -> None:
    sys.stdout.write(profile_yaml(load_profile(args.name, _overrides(args.set))))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny", help="profile name (tiny, mumu-sdxl) or a YAML path [tiny]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile field, e.g. --set data.detect.box_threshold=0.3 (repeatable)")


def _training(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--max-steps", type=int, metavar="N",
                   help=f"shorthand for --set train.{stage}.max_steps=N (raising it on a finished run extends it)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT's last checkpoint (default); --no-resume starts over")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mumu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-data", help="text–image pairs → multimodal-prompt webdataset shards")
    p.add_argument("--input", default=str(SAMPLES_DIR), help="folder of images (+captions.jsonl) or .tar shards")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.json, quarantine.jsonl")
    _common(p)
    p.set_defaults(run=cmd_build_data)

    p = sub.add_parser("cache-features", help="the frozen parts' outputs (VAE posteriors, vision features or "
                                              "prompt states) for every shard, once, beside the data")
    p.add_argument("--data", required=True, help="a build-data output folder (writes DATA/features/<key>/)")
    _common(p)
    p.set_defaults(run=cmd_cache_features)

    p = sub.add_parser("pretrain", help="stage 1: text-to-image pretraining from shards")
    p.add_argument("--data", required=True, help="a build-data output folder (its manifest lists the shards)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, tb/, samples/, model/")
    _training(p, "pretrain")
    p.set_defaults(run=cmd_pretrain)

    p = sub.add_parser("tune", help="stage 2: multimodal instruction tuning with the attention-mask loss")
    p.add_argument("--data", required=True, help="a build-data output folder")
    p.add_argument("--init", required=True, help="the stage-1 run folder (or its model/ folder)")
    p.add_argument("--out", required=True, help="run folder of this stage")
    p.add_argument("--attn-loss-weight", type=float, help="W in diffusion loss + W·L_attn (0 disables it)")
    _training(p, "tune")
    p.set_defaults(run=cmd_tune)

    p = sub.add_parser("generate", help="generate images from a multimodal prompt")
    p.add_argument("--checkpoint", required=True, help="a training run folder or a saved model folder")
    p.add_argument("--prompt", required=True,
                   help='e.g. "a <image:cat.png> cat on a <image:sofa.jpg> sofa", or a JSON list of segments')
    p.add_argument("--out", required=True, help="output PNG (out-0.png, out-1.png, ... when --n > 1)")
    p.add_argument("--n", type=int, default=1, help="number of images [1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampling steps (default: the profile's eval.sampler.steps)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    p.add_argument("--sampler", choices=["ddim", "euler"], help="sampler (default: the profile's)")
    p.add_argument("--base-dir", default=".", help="folder that relative image paths in the prompt start from")
    _common(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("evaluate", help="DINO, CLIP-I, CLIP-T, FID on single- and multi-subject benchmarks")
    p.add_argument("--checkpoint", help="a training run folder or a saved model folder (required unless --compare)")
    p.add_argument("--bench", default="toy",
                   help="'toy' (bundled emoji subjects) or a benchmark folder (DreamBench, MultiBench or subjects/)")
    p.add_argument("--out", help="report folder: report.json, report.md, grids (required unless --compare)")
    p.add_argument("--protocol", metavar="NAME",
                   help="a published evaluation protocol's settings, e.g. unimo-g (DDIM 50 steps, guidance 5.0, "
                        "4 images per prompt); --set overrides still apply on top")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="instead of evaluating: print each metric's paired difference A - B over the items two "
                        "evaluation folders share, with its bootstrap interval")
    _common(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("profile", help="inspect profiles")
    profile_sub = p.add_subparsers(dest="profile_command", required=True)
    p = profile_sub.add_parser("show", help="print a profile resolved (overrides applied, defaults filled in) as YAML")
    p.add_argument("name", help="profile name (tiny, mumu-sdxl, ...) or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile field (repeatable)")
    p.set_defaults(run=cmd_profile_show)

    p = sub.add_parser("pipeline", help=f"the whole DAG: {chain(STAGES)}")
    p.add_argument("--input", default=str(TRAIN_SAMPLES_DIR),
                   help="images (+captions.jsonl) or .tar shards [the bundled training samples]")
    p.add_argument("--out", default="runs/tiny",
                   help=f"run folder: {', '.join(f + '/' for f in top_folders(STAGES))} [runs/tiny]")
    _common(p)
    p.set_defaults(run=cmd_pipeline)

    folders = {stage.name: stage.folder for stage in STAGES}
    for stage in STAGES:  # a stage without a subcommand of its own above gets the generic one
        if stage.name not in sub.choices:
            _stage_parser(sub, stage, folders)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Against a server with the crashed-run automation (deployments/automations.yaml) a run must beat
    # more often than Prefect's default 180 s, or a long healthy stage would be marked Crashed.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
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
