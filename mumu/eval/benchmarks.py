"""Subject-driven benchmarks: DreamBench-style single subject and MultiBench-style 2–3 subjects.

DreamBench's own repository layout (dataset/<subject>/*.jpg + dataset/prompts_and_classes.txt) is read as
published: mumu/eval/dreambench.py; so is MultiBench's (living/, wearing/, toy/, food/ + prompt_templates.txt):
mumu/eval/multibench.py. Folder layout of any other benchmark (`eval.benchmark.root`)::

    <root>/subjects/<subject>/*.png|*.jpg|*.jpeg|*.webp   one folder per subject, 1+ images each
    <root>/prompts.json                                    optional; else mumu/samples/bench/prompts.json

prompts.json::

    {"single": ["a {} in the jungle", ...],              # one placeholder: the subject
     "multi":  ["a {0} and a {1} on the beach", ...],     # k placeholders: a k-subject combination
     "names":  {"backpack_dog": "backpack"}}              # optional: subject folder -> name in text

A subject's *name* (used in place of its image in the CLIP-T text) is `names[<subject>]`, else the
folder name with "_" read as a space. The bundled toy benchmark (root = None) takes its subjects
from mumu/samples/emoji: each emoji file is one subject, named by `names.json`, and its templates from
`prompts.json` there: the plain and gradient backgrounds of the toy training scenes (mumu/data/scenes.py).

Items:
- single: every image of every subject × every single template (KOSMOS-G's DreamBench loop). Where the
  template has "{}" the prompt takes the subject's image the way the checkpoint was tuned
  (`prompt_mode`, mumu/data/compose.py): "mumu" puts it before the subject's name ("a <image:...> dog
  in the jungle"), "unimo" in place of the name ("a <image:...> in the jungle").
- multi: for each size k in `multi_sizes`, `multi_combinations` distinct k-subject combinations
  drawn under `seed` (all of them when fewer exist) × every multi template with k placeholders;
  each subject contributes its first image.
Each item is generated `samples_per_prompt` times by the runner. Ordering is deterministic: sorted
subjects, sorted images, templates in file order.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from mumu.config import ProfileConfig, resolve_profile
from mumu.config.eval import BenchmarkConfig, EvalConfig
from mumu.errors import UserError
from mumu.eval import dreambench, multibench
from mumu.eval.items import BenchItem, Benchmark, PromptMode, Subject, make_item, n_placeholders, slug
from mumu.runs import model_dir

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
DEFAULT_PROMPTS = SAMPLES_DIR / "bench" / "prompts.json"
EMOJI_DIR = SAMPLES_DIR / "emoji"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def single_items(subjects: list[Subject], templates: list[str], references: str,
                 prompt_mode: PromptMode) -> list[BenchItem]:
    items = []
    for subject in subjects:
        for image in subject.images:
            refs = [[image]] if references == "input" else [list(subject.images)]
            for ti, template in enumerate(templates):
                if n_placeholders(template) != 1:
                    raise UserError(f"single-subject template {template!r} must have exactly one placeholder")
                item_id = f"single-{slug(subject.key)}-{slug(Path(image).stem)}-t{ti:02d}"
                items.append(make_item("single", item_id, template, ti, [subject], [image], refs, prompt_mode))
    return items


def multi_items(subjects: list[Subject], templates: list[str], sizes: tuple[int, ...], combinations: int,
                references: str, seed: int, prompt_mode: PromptMode, max_templates: int | None = None) -> list[BenchItem]:
    items = []
    for k in sizes:
        k_templates = [(ti, t) for ti, t in enumerate(templates) if n_placeholders(t) == k][:max_templates]
        if not k_templates or len(subjects) < k:
            continue
        all_combos = list(itertools.combinations(range(len(subjects)), k))
        if len(all_combos) > combinations:
            all_combos = sorted(random.Random(f"{seed}:{k}").sample(all_combos, combinations))
        for combo in all_combos:
            chosen = [subjects[i] for i in combo]
            inputs = [s.images[0] for s in chosen]
            refs = [[s.images[0]] if references == "input" else list(s.images) for s in chosen]
            key = "+".join(slug(s.key) for s in chosen)
            for ti, template in k_templates:
                items.append(make_item("multi", f"multi{k}-{key}-t{ti:02d}", template, ti, chosen, inputs, refs,
                                        prompt_mode))
    return items


def load_prompts(path: Path | None) -> dict:
    path = path if path is not None and path.exists() else DEFAULT_PROMPTS
    try:
        prompts = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read prompt templates {path}: {exc}") from None
    if not isinstance(prompts, dict) or not isinstance(prompts.get("single", []), list) \
            or not isinstance(prompts.get("multi", []), list):
        raise UserError(f"{path}: expected {{'single': [...], 'multi': [...], 'names': {{...}}}}")
    return prompts


def folder_subjects(root: Path, names: dict[str, str] | None = None) -> list[Subject]:
    """Subjects of the documented layout `<root>/subjects/<subject>/*.png|jpg|webp`."""
    subjects_dir = root / "subjects"
    if not subjects_dir.is_dir():
        raise UserError(f"benchmark {root}: no subjects/ folder (expected {root}/subjects/<name>/*.png)")
    subjects = []
    for folder in sorted(p for p in subjects_dir.iterdir() if p.is_dir()):
        images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            name = (names or {}).get(folder.name, folder.name.replace("_", " "))
            subjects.append(Subject(key=folder.name, name=name, images=images))
    if not subjects:
        raise UserError(f"benchmark {root}: subjects/ holds no subject folder with images")
    return subjects


def emoji_subjects(emoji_dir: Path = EMOJI_DIR) -> list[Subject]:
    """One subject per emoji of a folder with names.json ({file: name}; files beside it or in images/)."""
    names_file = emoji_dir / "names.json"
    if not names_file.exists():
        raise UserError(f"toy benchmark: {names_file} is missing (the bundled emoji samples)")
    names = json.loads(names_file.read_text())
    subjects = []
    for file_name, name in sorted(names.items()):
        path = next((p for p in (emoji_dir / file_name, emoji_dir / "images" / file_name) if p.exists()), None)
        if path is None:
            raise UserError(f"toy benchmark: {file_name} is listed in {names_file} but not found")
        subjects.append(Subject(key=Path(file_name).stem, name=name, images=[str(path)]))
    return subjects


def dreambench_items(subjects: list[Subject], templates: dict[str, list[str]], max_templates: int | None,
                     references: str, prompt_mode: PromptMode) -> list[BenchItem]:
    """DreamBench's protocol: one item per subject and template, the subject's first photo in the prompt."""
    items = []
    for subject in subjects:
        image = subject.images[0]
        refs = [[image]] if references == "input" else [list(subject.images)]
        for ti, template in enumerate(templates[subject.key][:max_templates]):
            item_id = f"single-{slug(subject.key)}-{slug(Path(image).stem)}-t{ti:02d}"
            items.append(make_item("single", item_id, template, ti, [subject], [image], refs, prompt_mode))
    return items


def checkpoint_prompt_mode(model_dir: str | Path) -> PromptMode | None:
    """The prompt mode a saved model was tuned with (its training.json, written by mumu/train/loop.py): "mumu"
    or "unimo"; a text-only stage never saw an image, so its benchmark keeps the names ("mumu"). None for a
    model saved without one."""
    path = Path(model_dir) / "training.json"
    if not path.is_file():
        return None
    mode = json.loads(path.read_text()).get("prompt_mode")
    return "unimo" if mode == "unimo" else "mumu"


def profile_for_checkpoint(profile: str | ProfileConfig, overrides: dict | None, checkpoint: str | Path) -> ProfileConfig:
    """The config a checkpoint is evaluated under: a profile's name or path is loaded with benchmark prompts built
    the way the checkpoint was tuned (checkpoint_prompt_mode), unless `overrides` name a mode. A config resolved
    upstream is taken as it is (`overrides` laid on it): the pipeline's evaluates the model that config tuned, and
    the CLI resolves its config here. The profile is checked before the checkpoint is read."""
    cfg = resolve_profile(profile, overrides)
    if isinstance(profile, ProfileConfig) or "eval.benchmark.prompt_mode" in (overrides or {}):
        return cfg
    tuned = checkpoint_prompt_mode(model_dir(checkpoint))
    if tuned is None or tuned == cfg.eval.benchmark.prompt_mode:
        return cfg
    return resolve_profile(cfg, {"eval.benchmark.prompt_mode": tuned})


def build_benchmarks(cfg: BenchmarkConfig, emoji_dir: Path = EMOJI_DIR) -> list[Benchmark]:
    """The benchmarks of `cfg.kinds` (named "<root name or toy>-single" / "-multi"), in that order.

    A root in DreamBench's own layout (mumu/eval/dreambench.py) gives DreamBench's single-subject benchmark as
    published; its multi-subject benchmark combines DreamBench's subjects with the bundled multi templates."""
    if cfg.root is not None and (multi_dataset := multibench.find_dataset(Path(cfg.root))) is not None:
        return [multibench_benchmark(cfg, multi_dataset)]
    dream_templates, protocol_samples = None, None
    if cfg.root is None:
        # The toy world's own words (the backgrounds its training scenes show, mumu/data/scenes.py): the toy
        # model never saw "jungle" or "snow", so DreamBench's templates would test words it cannot know.
        prefix, subjects, prompts = "toy", emoji_subjects(emoji_dir), load_prompts(emoji_dir / "prompts.json")
    elif (dataset := dreambench.find_dataset(Path(cfg.root))) is not None:
        prefix, prompts = slug(Path(cfg.root).name), load_prompts(None)
        subjects, dream_templates = dreambench.load(dataset, IMAGE_SUFFIXES)
        protocol_samples = dreambench.SAMPLES_PER_PROMPT
    else:
        root = Path(cfg.root)
        prompts = load_prompts(root / "prompts.json")
        prefix, subjects = slug(root.name), folder_subjects(root, prompts.get("names"))
    subjects = subjects[:cfg.max_subjects]
    single_templates = list(prompts.get("single", []))[:cfg.max_templates]
    # A profile fills prompt_mode in from train.tune.prompt_mode (mumu/config/profile.py); a bare
    # BenchmarkConfig has no tune stage, so it takes the tune stage's default mode.
    mode = cfg.prompt_mode or "mumu"
    benches = []
    for kind in cfg.kinds:
        samples = None
        if kind == "single" and dream_templates is not None:
            items = dreambench_items(subjects, dream_templates, cfg.max_templates, cfg.references, mode)
            samples = protocol_samples
        elif kind == "single":
            items = single_items(subjects, single_templates, cfg.references, mode)
        else:
            items = multi_items(subjects, list(prompts.get("multi", [])), cfg.multi_sizes, cfg.multi_combinations,
                                cfg.references, cfg.seed, mode, cfg.max_templates)
        if not items:
            raise UserError(f"benchmark {prefix}-{kind}: no items (check its templates and subject count)")
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise UserError(f"benchmark {prefix}-{kind}: item ids collide (subject or image names differ "
                            "only in punctuation)")
        # DreamBench's multi-subject benchmark is this project's (its subjects in the bundled templates): "folder".
        source = "toy" if cfg.root is None else "dreambench" if samples is not None else "folder"
        benches.append(Benchmark(name=f"{prefix}-{kind}", kind=kind, prompt_mode=mode, subjects=subjects, items=items,
                                 samples_per_prompt=samples, held_out_renderings=cfg.root is None, source=source))
    return benches


def multibench_benchmark(cfg: BenchmarkConfig, dataset: Path) -> Benchmark:
    """MultiBench as published (mumu/eval/multibench.py): its multi-subject benchmark only, since it has no
    single-subject protocol of its own."""
    if "multi" not in cfg.kinds:
        raise UserError(f"{cfg.root} is a MultiBench folder, a multi-subject benchmark only: set "
                        "eval.benchmark.kinds to include multi")
    mode = cfg.prompt_mode or "mumu"
    subjects, category_of, templates = multibench.load(dataset, IMAGE_SUFFIXES, cfg.max_subjects, cfg.max_templates)
    items = multibench.items(subjects, category_of, templates, cfg.multi_combinations, cfg.references, cfg.seed, mode)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise UserError(f"MultiBench {dataset}: item ids collide (subject names differ only in punctuation)")
    return Benchmark(name=f"{slug(Path(cfg.root).name)}-multi", kind="multi", prompt_mode=mode, subjects=subjects,
                     items=items, source="multibench")


def eval_config_for(bench: Benchmark, ev: EvalConfig) -> EvalConfig:
    """The evaluation settings of one benchmark: its protocol's images per prompt, where it fixes them."""
    if bench.samples_per_prompt is None or bench.samples_per_prompt == ev.samples_per_prompt:
        return ev
    return ev.model_copy(update={"samples_per_prompt": bench.samples_per_prompt})
