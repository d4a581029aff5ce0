"""watch-inputs: poll a folder for new images / tar shards and emit one `mumu.data.landed` per new batch.

Meant to run on an interval schedule (prefect.yaml). Each run lists the inputs the data stage would read
(same extensions, hidden entries skipped), compares them with the snapshot recorded by the previous run,
emits one event naming the new or changed files, then records the new snapshot. A re-run with nothing
new emits nothing.

Order matters: the event is emitted *before* the snapshot is saved, so a crash in between re-announces
the batch on the next poll (at least once) rather than losing it. That is safe because build-data skips
the shards it already wrote.

A file modified less than `settle_seconds` ago is left for the next poll: it may still be being copied.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Callable

from prefect import flow, get_run_logger

from deployments.events import emit_data_landed
from mumu.data.ingest import IMAGE_EXTS, TAR_SUFFIXES
from mumu.errors import UserError
from mumu.io import write_json_atomic

STATE_NAME = ".mumu-watch.json"
STATE_VERSION = 1

Snapshot = dict[str, list[int]]  # relative path → [size, mtime_ns]


def is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(TAR_SUFFIXES) or path.suffix.lower().lstrip(".") in IMAGE_EXTS


def list_inputs(input_dir: Path, settle_seconds: float = 0.0, now: float | None = None) -> Snapshot:
    """Input files under `input_dir` (recursive, hidden entries skipped) that have settled."""
    now = time.time() if now is None else now
    found: Snapshot = {}
    for p in sorted(input_dir.rglob("*")):
        rel = p.relative_to(input_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file() or not is_input_file(p):
            continue
        st = p.stat()
        if now - st.st_mtime < settle_seconds:
            continue
        found[rel.as_posix()] = [st.st_size, st.st_mtime_ns]
    return found


def state_path(input_dir: Path, state_file: str | Path | None) -> Path:
    return Path(state_file) if state_file else input_dir / STATE_NAME


def load_state(path: Path) -> Snapshot:
    """The snapshot the last poll recorded ({} on the first poll). A corrupt file is a clear error."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION or not isinstance(data.get("files"), dict):
            raise ValueError("unexpected layout")
        return {str(k): [int(v[0]), int(v[1])] for k, v in data["files"].items()}
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"watch state {path} is unreadable ({exc}); delete it to start over") from exc


def save_state(path: Path, input_dir: Path, files: Snapshot) -> None:
    write_json_atomic(path, {"version": STATE_VERSION, "input": str(input_dir), "files": files})


def new_files(current: Snapshot, seen: Snapshot) -> list[str]:
    """Files that appeared, or whose size or mtime changed, since the last snapshot (sorted)."""
    return sorted(rel for rel, sig in current.items() if seen.get(rel) != sig)


def poll(
    input_dir: str | Path,
    state_file: str | Path | None = None,
    settle_seconds: float = 0.0,
    emit: Callable[[str | Path, list[str]], object] = emit_data_landed,
) -> list[str]:
    """One poll: emit one event for the new batch (if any), record the snapshot → the new files."""
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise UserError(f"watched input {input_dir} is not a folder")
    path = state_path(root, state_file)
    seen = load_state(path)
    current = list_inputs(root, settle_seconds)
    # Files still settling keep their old record, so they count as new once they have settled.
    pending = {rel: sig for rel, sig in seen.items() if rel not in current and (root / rel).exists()}
    batch = new_files(current, seen)
    if batch:
        emit(root, batch)
    state = {**pending, **current}
    if state != seen:  # removed files are forgotten, so one that comes back counts as new
        save_state(path, root, state)
    return batch


@flow(name="watch-inputs", log_prints=False)
def watch_inputs(input_dir: str, state_file: str | None = None, out: str | None = None,
                 settle_seconds: float = 5.0, create_missing: bool = False) -> dict:
    """Emit `mumu.data.landed` for files that landed in `input_dir` since the previous run.

    `out`: the run folder the triggered build-data (and the stages it chains) write under
    (default runs/landed/<input folder name>), sent in the event's payload.
    """
    log = get_run_logger()
    root = Path(input_dir).resolve()
    if create_missing:
        root.mkdir(parents=True, exist_ok=True)
    run_root = Path(out) if out else Path("runs") / "landed" / root.name
    emit = functools.partial(emit_data_landed, out=str(run_root.resolve()))
    batch = poll(input_dir, state_file, settle_seconds, emit=emit)
    if batch:
        log.info("%d new input file(s) in %s: %s", len(batch), input_dir,
                 ", ".join(batch[:10]) + (" …" if len(batch) > 10 else ""))
    else:
        log.info("nothing new in %s", input_dir)
    return {"input": str(root), "new": batch, "count": len(batch)}
