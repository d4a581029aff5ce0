"""The evaluation report: report.json, report.md (a UNIMO-G Tables 2–3 style table) and image grids.

The report opens with the protocol of each benchmark (mumu/eval/protocol.py). The table has one row per run ×
benchmark and columns Subject ID, DINO, CLIP-I, CLIP-T — each with its chance level beside it (mumu/eval/runner.py)
— copy-paste (mumu/eval/copying.py) and FID, every score with its bootstrap interval over prompts; under each
benchmark's first run, its ceiling and copy rows (mumu/eval/reference_rows.py), and on the published benchmarks with
pretrained encoders the published figures of other models (mumu/eval/presets.py). `write_report` also returns the
rows and the markdown so flows/evaluate.py can publish them as Prefect table and markdown artifacts without
re-reading the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mumu.config.eval import ReportConfig
from mumu.eval import protocol
from mumu.eval.items import load_rgb, slug
from mumu.io import atomic_path, write_json_atomic, write_text_atomic

COLUMNS = ["Run", "Benchmark", "Subject ID", "Chance", "DINO", "DINO chance", "CLIP-I", "CLIP-I chance", "CLIP-T",
           "CLIP-T chance", "Copy-paste", "FID", "Images"]
# Columns with a bootstrap interval, and the score key it is stored under (score["ci"][key]).
INTERVALS = {"Subject ID": "subject_id", "DINO": "dino", "CLIP-I": "clip_i", "CLIP-T": "clip_t",
             "Copy-paste": "copy_paste", "FID": "fid"}
REFERENCE_ROW_NAMES = {"ceiling": "↳ ceiling: other real images of the subject",
                       "copy": "↳ copy: the prompt's reference image as output"}


@dataclass
class Report:
    rows: list[dict]  # one per run × benchmark, keys = COLUMNS (+ "CI": {column: [low, high]})
    markdown: str
    json_path: Path
    markdown_path: Path
    grids: list[Path] = field(default_factory=list)
    reference_rows: list[dict] = field(default_factory=list)  # ceiling and copy rows per benchmark, same keys


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


def _fmt_ci(value, interval, digits: int) -> str:
    """"0.512 [0.480, 0.541]": a value with its bootstrap interval, where it has one."""
    if value is None or not interval:
        return _fmt(value, digits)
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _interval(ci) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]  # a list: rows equal their JSON round trip


def run_row(s: dict, run_name: str) -> dict:
    """The table row of one scored benchmark."""
    ci = s.get("ci", {})
    return {"Run": run_name, "Benchmark": s["benchmark"], "Subject ID": s.get("subject_id"),
            "Chance": s.get("subject_id_chance"), "DINO": s["dino"], "DINO chance": s.get("dino_chance"),
            "CLIP-I": s["clip_i"], "CLIP-I chance": s.get("clip_i_chance"), "CLIP-T": s["clip_t"],
            "CLIP-T chance": s.get("clip_t_chance"), "Copy-paste": s.get("copy_paste"), "FID": s["fid"],
            "Images": s["n_images"], "CI": {col: _interval(ci.get(key)) for col, key in INTERVALS.items()}}


def reference_row(kind: str, benchmark: str, row: dict) -> dict:
    """A ceiling or copy row (mumu/eval/reference_rows.py) in the table's columns; "Images" counts the items
    it has a DINO value for."""
    return {"Run": REFERENCE_ROW_NAMES[kind], "Benchmark": benchmark, "Subject ID": None, "Chance": None,
            "DINO": row["dino"], "DINO chance": None, "CLIP-I": row["clip_i"], "CLIP-I chance": None,
            "CLIP-T": row["clip_t"], "CLIP-T chance": None, "Copy-paste": row["copy_paste"], "FID": None,
            "Images": row["n_dino"], "CI": {col: _interval(row["ci"].get(key)) for col, key in INTERVALS.items()
                                            if key in row["ci"]}}


def table_cells(r: dict) -> dict[str, str]:
    """A row as the table prints it ({column: text}; also the Prefect table artifact's rows)."""
    ci = r.get("CI", {})
    cells = {"Run": r["Run"], "Benchmark": r["Benchmark"],
             "Subject ID": _fmt_ci(r["Subject ID"], ci.get("Subject ID"), 2), "Chance": _fmt(r["Chance"], 2)}
    for col in COLUMNS[4:11]:
        cells[col] = _fmt_ci(r[col], ci.get(col), 3) if col in INTERVALS else _fmt(r[col], 3)
    cells.update({"FID": _fmt_ci(r["FID"], ci.get("FID"), 2), "Images": str(r["Images"])})
    return cells


def table_line(r: dict) -> str:
    return "| " + " | ".join(table_cells(r).values()) + " |"


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


def published_lines(scores: list[dict], run: str) -> list[str]:
    """Other models' published figures on the same benchmarks, under the run's table (mumu/eval/presets.py: only
    for the published benchmarks, scored with pretrained encoders)."""
    rows = []
    for s in scores:
        for f in s.get("published", []):
            rows.append(f"| {f['model']} (other model) | {s['benchmark']} | {f['dino']:.3f} | {f['clip_i']:.3f} | "
                        f"{f['clip_t']:.3f} | {f['source']} |")
    if not rows:
        return []
    return ["### Published figures: other models, not this run", "",
            f"Read beside {run}'s rows above only as far as the protocols match (see Protocol).", "",
            "| Model | Benchmark | DINO | CLIP-I | CLIP-T | Source |", "|---|---|---|---|---|---|",
            *dict.fromkeys(rows), ""]


def write_report(scores: list[dict], out_dir: str | Path, cfg: ReportConfig | None = None,
                 run: str = "mumu") -> Report:
    """Write report.json, report.md and grids/ under `out_dir`.

    `scores`: outputs of mumu.eval.runner.score; a score dict may carry "run" (for comparing several
    models or checkpoints in one table), else `run` names it.
    """
    cfg = cfg or ReportConfig()
    out_dir = Path(out_dir)
    rows, sections, grids, table_rows, references, protocols = [], [], [], [], [], {}
    for s in scores:
        run_name = s.get("run", run)
        rows.append(run_row(s, run_name))
        table_rows.append(rows[-1])
        # The ceiling and copy rows depend on the benchmark, not the run: printed once, under its first run.
        for kind, row in s.get("reference_rows", {}).items():
            ref = reference_row(kind, s["benchmark"], row)
            if not any(r == ref for r in references):
                references.append(ref)
                table_rows.append(ref)
        if s.get("protocol") and s["benchmark"] not in protocols:
            protocols[s["benchmark"]] = s["protocol"]
        lines = [f"### {run_name} · {s['benchmark']}" + (f" · {s['prompt_mode']} prompts" if s.get("prompt_mode") else ""), ""]
        for item in grid_items(s["items"], cfg.max_grids):
            refs = [p for group in item["references"] for p in group]
            rel = Path("grids") / slug(run_name) / s["benchmark"] / f"{item['id']}.png"
            with atomic_path(out_dir / rel) as tmp:
                make_grid(refs, item["images"], cfg.grid_cell).save(tmp, format="PNG")
            grids.append(out_dir / rel)
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            ident = f"subject ID {mean(item['subject_id']):.2f}, " if item.get("subject_id") else ""
            copied = f", copy-paste {mean(item['copy_paste']):.3f}" if item.get("copy_paste") else ""
            lines += [f"**{item['text']}** — references ({len(refs)}) | samples ({len(item['images'])}); "
                      f"{ident}DINO {mean(item['dino']):.3f}, CLIP-I {mean(item['clip_i']):.3f}, "
                      f"CLIP-T {mean(item['clip_t']):.3f}{copied}", "", f"![{item['id']}]({rel.as_posix()})", ""]
        sections.append("\n".join(lines))

    fid_kinds = sorted({s["fid_features"] for s in scores})
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += [table_line(r) for r in table_rows]  # runs, each benchmark's ceiling and copy rows under its first
    level = next((s["bootstrap_level"] for s in scores if s.get("bootstrap_level")), 0.95)
    protocol_lines = [line for name, p in protocols.items() for line in protocol.markdown(name, p)]
    markdown = "\n".join([
        "# Evaluation report", "",
        *(["## Protocol", "", *protocol_lines] if protocol_lines else []),
        "Subject ID: share of generated images whose nearest subjects, among all of the benchmark's, are the ones "
        "the prompt referenced, on weight-free colour and silhouette statistics (mumu/eval/identify.py); Chance: "
        "what an image unrelated to its prompt would score (1 / subjects; k / subjects for k referenced). "
        "Each \"chance\" column: the score beside it, of the same images against the prompts that share none of "
        "their subjects — a score no higher than its chance says the images do not follow their prompts, or "
        "(encoders with random weights, as the tiny profile's) that the score cannot tell. "
        "DINO / CLIP-I: mean cosine of generated images to their subjects' reference images (multi-subject: "
        "averaged over subjects). CLIP-T: cosine of generated image and prompt text (images replaced by subject "
        f"names). FID: Fréchet distance over **{', '.join(fid_kinds)}** features (not InceptionV3; "
        "see mumu/eval/metrics.py) — compare runs with each other, not with published FIDs. "
        "Copy-paste: DINO cosine of a generated image to the reference image its prompt gave minus its mean cosine "
        "to the subject's other real images (the toy benchmark: held-out renderings of the emoji), "
        "mumu/eval/copying.py — about 0 for a new image of the subject, high for a pasted reference. "
        f"[low, high]: {level:.0%} bootstrap interval over the benchmark's prompts (mumu/eval/bootstrap.py). "
        "Rows marked ↳ score real images, not a run: *ceiling* = the subject's other real images as outputs "
        "(what a perfect subject-driven generator gets), *copy* = the prompt's own reference image as output "
        "(what pasting the input gets); n/a where a subject has no other image.", "",
        *table, "", *published_lines(scores, run), "## Samples", "", *sections,
    ])
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json_atomic(json_path, {"rows": rows, "reference_rows": references, "protocol": protocols,
                                  "scores": scores})
    write_text_atomic(md_path, markdown)
    return Report(rows=rows, markdown=markdown, json_path=json_path, markdown_path=md_path, grids=grids,
                  reference_rows=references)
