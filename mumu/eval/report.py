"""The evaluation report: report.json, report.md (a UNIMO-G Tables 2–3 style table) and image grids.

The table has one row per run × benchmark and columns Subject ID, DINO, CLIP-I, CLIP-T — each with its chance
level beside it (mumu/eval/runner.py) — and FID. `write_report` also returns the rows and the markdown so flows/evaluate.py can publish them as Prefect table and markdown
artifacts without re-reading the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mumu.config.eval import ReportConfig
from mumu.eval.benchmarks import _slug, load_rgb
from mumu.io import atomic_path, write_json_atomic, write_text_atomic

COLUMNS = ["Run", "Benchmark", "Subject ID", "Chance", "DINO", "DINO chance", "CLIP-I", "CLIP-I chance", "CLIP-T",
           "CLIP-T chance", "FID", "Images"]


@dataclass
class Report:
    rows: list[dict]  # one per run × benchmark, keys = COLUMNS
    markdown: str
    json_path: Path
    markdown_path: Path
    grids: list[Path] = field(default_factory=list)


def grid_items(items: list[dict], n: int) -> list[dict]:
    """The `n` items shown as grids: the first item of each distinct subject set first (benchmark order), so a
    report shows as many subjects as it has grids, then the rest in order."""
    seen: set[tuple] = set()
    first, rest = [], []
    for item in items:
        key = tuple(item.get("subjects", [item["id"]]))
        (rest if key in seen else first).append(item)
        seen.add(key)
    return (first + rest)[:n]


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def make_grid(references: list[str], samples: list[str], cell: int) -> Image.Image:
    """One row: reference images, then generated samples, each fitted (aspect kept) into a cell² square."""
    paths = references + samples
    grid = Image.new("RGB", (cell * len(paths), cell), (255, 255, 255))
    for i, path in enumerate(paths):
        image = load_rgb(path)
        # Large images shrink smoothly; small ones (the tiny profile's 64 px) grow blocky but visible.
        scale = cell / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC if scale < 1 else Image.Resampling.NEAREST)
        grid.paste(image, (i * cell + (cell - image.width) // 2, (cell - image.height) // 2))
    return grid


def write_report(scores: list[dict], out_dir: str | Path, cfg: ReportConfig | None = None,
                 run: str = "mumu") -> Report:
    """Write report.json, report.md and grids/ under `out_dir`.

    `scores`: outputs of mumu.eval.runner.score; a score dict may carry "run" (for comparing several
    models or checkpoints in one table), else `run` names it.
    """
    cfg = cfg or ReportConfig()
    out_dir = Path(out_dir)
    rows, sections, grids = [], [], []
    for s in scores:
        run_name = s.get("run", run)
        rows.append({"Run": run_name, "Benchmark": s["benchmark"], "Subject ID": s.get("subject_id"),
                     "Chance": s.get("subject_id_chance"), "DINO": s["dino"], "DINO chance": s.get("dino_chance"),
                     "CLIP-I": s["clip_i"], "CLIP-I chance": s.get("clip_i_chance"), "CLIP-T": s["clip_t"],
                     "CLIP-T chance": s.get("clip_t_chance"), "FID": s["fid"], "Images": s["n_images"]})
        lines = [f"### {run_name} · {s['benchmark']}" + (f" · {s['prompt_mode']} prompts" if s.get("prompt_mode") else ""), ""]
        for item in grid_items(s["items"], cfg.max_grids):
            refs = [p for group in item["references"] for p in group]
            rel = Path("grids") / _slug(run_name) / s["benchmark"] / f"{item['id']}.png"
            with atomic_path(out_dir / rel) as tmp:
                make_grid(refs, item["images"], cfg.grid_cell).save(tmp, format="PNG")
            grids.append(out_dir / rel)
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            ident = f"subject ID {mean(item['subject_id']):.2f}, " if item.get("subject_id") else ""
            lines += [f"**{item['text']}** — references ({len(refs)}) | samples ({len(item['images'])}); "
                      f"{ident}DINO {mean(item['dino']):.3f}, CLIP-I {mean(item['clip_i']):.3f}, "
                      f"CLIP-T {mean(item['clip_t']):.3f}", "", f"![{item['id']}]({rel.as_posix()})", ""]
        sections.append("\n".join(lines))

    fid_kinds = sorted({s["fid_features"] for s in scores})
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r["Run"], r["Benchmark"], _fmt(r["Subject ID"], 2), _fmt(r["Chance"], 2),
                 *(_fmt(r[c], 3) for c in COLUMNS[4:10]), _fmt(r["FID"], 2), str(r["Images"])]
        table.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join([
        "# Evaluation report", "",
        "Subject ID: share of generated images whose nearest subjects, among all of the benchmark's, are the ones "
        "the prompt referenced, on weight-free colour and silhouette statistics (mumu/eval/identify.py); Chance: "
        "what an image unrelated to its prompt would score (1 / subjects; k / subjects for k referenced). "
        "Each \"chance\" column: the score beside it, of the same images against the prompts that share none of "
        "their subjects — a score no higher than its chance says the images do not follow their prompts, or "
        "(encoders with random weights, as the tiny profile's) that the score cannot tell. "
        "DINO / CLIP-I: mean cosine of generated images to their subjects' reference images (multi-subject: "
        "averaged over subjects). CLIP-T: cosine of generated image and prompt text (images replaced by subject "
        f"names). FID: Fréchet distance over **{', '.join(fid_kinds)}** features (not InceptionV3; "
        "see mumu/eval/metrics.py) — compare runs with each other, not with published FIDs.", "",
        *table, "", "## Samples", "", *sections,
    ])
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json_atomic(json_path, {"rows": rows, "scores": scores})
    write_text_atomic(md_path, markdown)
    return Report(rows=rows, markdown=markdown, json_path=json_path, markdown_path=md_path, grids=grids)
