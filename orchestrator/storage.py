"""Where a sweep keeps its state: the storage path (a local folder, or any URI Ray's storage
accepts: s3://, gs://, ...) holds Tune's experiment folders and, beside Tune's own state, our
`orchestrate_sweep.json` (the MLflow parent run and experiment), so `--resume` can find both.
Checkpoints reported from remote storage are fetched here for the tracker. No MLflow here."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from typing import Any

import pyarrow
import pyarrow.fs

from orchestrator.schema import cut, mask

STATE_FILE = "orchestrate_sweep.json"


def storage_fs(uri: str):
    """(pyarrow filesystem, path) for a storage path."""
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(uri)


def join(storage_path: str, name: str) -> str:
    """The storage path of `name` under `storage_path`, a URI's query kept last
    (s3://bucket/results?endpoint_override=host:9000 -> s3://bucket/results/NAME?endpoint_override=...)."""
    path, sep, query = storage_path.partition("?") if "://" in storage_path else (storage_path, "", "")
    return f"{path.rstrip('/')}/{name}{sep}{query}"


def write_state(storage_path: str, run_name: str, meta: dict[str, Any]) -> None:
    """Our state beside Tune's. A tracking URI is stored with its password masked: --resume takes
    the real one from the sweep file, --tracking-uri or MLFLOW_TRACKING_URI, as the first run did."""
    if "tracking_uri" in meta:
        meta = {**meta, "tracking_uri": mask(meta["tracking_uri"])}
    fs, root = storage_fs(storage_path)
    fs.create_dir(f"{root}/{run_name}", recursive=True)
    with fs.open_output_stream(f"{root}/{run_name}/{STATE_FILE}") as f:
        f.write(json.dumps(meta).encode())


def read_state(storage_path: str, run_name: str) -> dict[str, Any] | None:
    fs, root = storage_fs(storage_path)
    try:
        with fs.open_input_stream(f"{root}/{run_name}/{STATE_FILE}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, pyarrow.ArrowException):
        return None


def unreadable_tune_state(storage_path: str, run_name: str) -> str | None:
    """Why Ray Tune cannot restore the experiment folder `run_name` (its newest experiment state
    file is cut short: a full disk, a kill while Tune saved it), or None. Tune itself would log
    that and start the sweep over: new trials, new MLflow runs beside the old ones. No state file
    at all (a sweep stopped before Tune saved any) is left to Tune, which starts over."""
    fs, root = storage_fs(storage_path)
    folder = f"{root}/{run_name}"
    try:
        names = [e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
                 if fnmatch.fnmatch(e.base_name, "experiment_state-*.json")]
        if not names:
            return None
        newest = f"{folder}/{max(names)}"  # Tune's own choice: the newest session's
        with fs.open_input_stream(newest) as f:
            json.loads(f.read().decode())
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        return f"Ray Tune's state under {folder} cannot be read ({type(e).__name__}: {cut(str(e))})"
    return None


def find_resumable(storage_path: str, experiment: str) -> str | None:
    """The newest experiment folder (its name) of sweep `experiment` under the storage path."""
    fs, root = storage_fs(storage_path)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    found = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        meta = read_state(storage_path, entry.base_name)
        if meta and meta.get("experiment") == experiment:
            found.append((meta.get("created", 0), entry.base_name))
    return max(found)[1] if found else None


def older_checkpoints(fs, path: str) -> list[str]:
    """The checkpoints written before the one at `path` beside it (same trial, same folder), newest
    first. Tune numbers its folders (checkpoint_000003), Ray Train stamps them with the time
    (checkpoint_2026-12-02_01-10-00.123456): in both the name sorts by age."""
    parent, name = path.rstrip("/").rsplit("/", 1)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        return []
    return sorted((e.path for e in entries if e.type == pyarrow.fs.FileType.Directory
                   and e.base_name.startswith("checkpoint_") and e.base_name < name), reverse=True)


@contextlib.contextmanager
def local_checkpoint(storage_path: str, path: str | None):
    """A local folder for a reported checkpoint path: as it is on a local or shared filesystem,
    downloaded to a temporary folder from remote storage (s3://...: Ray reports `bucket/key`).
    None when there is none or it cannot be fetched (that must not fail the sweep)."""
    if path is None or os.path.isdir(path):
        yield path
        return
    import ray.train  # only for remote storage: `orchestrate compare` never loads Ray Train

    with tempfile.TemporaryDirectory(prefix="orchestrate-ckpt-") as tmp:
        try:
            fs, _ = storage_fs(storage_path)
            local = ray.train.Checkpoint(path=path, filesystem=fs).to_directory(os.path.join(tmp, "ckpt"))
        except Exception:  # noqa: BLE001 - an unreachable checkpoint must not fail the sweep
            local = None
        yield local


def trial_results(storage_path: str, experiment_dir: str, trial_dir: str) -> tuple[list[dict[str, Any]],
                                                                                  dict[int, tuple[str, bool]]]:
    """What Ray Tune kept of one trial in the storage: every result it reported with an epoch, in
    order (the trial folder's result.json, one JSON object a line; a DDP trial's results come up
    through TuneReportCallback, so they are there too; a last line cut short is left out), and
    each checkpoint those results name, by epoch: (its path as Ray reports it, whether it is still
    there). A single-worker trial's checkpoint is `checkpoint_dir_name` in its trial folder, a DDP
    trial's the `checkpoint_path` its Ray Train run reported."""
    fs, root = storage_fs(storage_path)
    folder = f"{root}/{experiment_dir}/{trial_dir}"
    try:
        with fs.open_input_stream(f"{folder}/result.json") as f:
            text = f.read().decode(errors="replace")
    except (FileNotFoundError, OSError, pyarrow.ArrowException):
        return [], {}
    results = []
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and isinstance(result.get("epoch"), int):
            results.append(result)
    named = {}
    for result in results:
        path = result.get("checkpoint_path") or (result.get("checkpoint_dir_name") and
                                                  f"{folder}/{result['checkpoint_dir_name']}")
        if path:
            named[int(result["epoch"])] = path  # a re-trained epoch: the copy written last
    checkpoints = {}
    for epoch, path in named.items():
        try:
            there = fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
        except (OSError, pyarrow.ArrowException):
            there = False
        checkpoints[epoch] = (path, there)
    return results, checkpoints


SEARCHER_STATE = "searcher-state-*.pkl"  # Ray Tune's name for a searcher's saved state (Searcher.CKPT_FILE_TMPL)


@contextlib.contextmanager
def searcher_state(storage_path: str, run_name: str):
    """A local folder holding the newest searcher state Tune saved in the experiment folder
    `run_name` (from remote storage: a temporary copy), for `Searcher.restore_from_dir`."""
    fs, root = storage_fs(storage_path)
    folder = f"{root}/{run_name}"
    names = [e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
             if fnmatch.fnmatch(e.base_name, SEARCHER_STATE)]
    with tempfile.TemporaryDirectory(prefix="orchestrate-searcher-") as tmp:
        if names:
            newest = max(names)
            pyarrow.fs.copy_files(f"{folder}/{newest}", os.path.join(tmp, newest), source_filesystem=fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield tmp
