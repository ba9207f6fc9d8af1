"""`orchestrate submit FILE --address http://HEAD:8265`: a sweep run as a Ray job on a running
cluster, what `ray job submit -- orchestrate sweep FILE` does, plus the parts that command leaves
to the user:

- the file is validated here first: bad input is one line and exit 2, and no job is created;
- what travels is the sweep file alone (the job's working_dir is a folder holding only it) and this
  machine's `orchestrator` and `archs` packages (`py_modules`), so the cluster runs the models and
  the code the file was validated against, a user's own archs included; data never travels;
- the storage and the tracking URI are handed to the job as they resolve here (relative paths
  against the current folder), so they must name a place the head reaches under that name: S3, a
  tracking server, a folder the cluster shares, or this machine when it is the head. A password in
  the tracking URI is refused: the job's command line is shown to anyone who lists the jobs;
- the job's output (the live view, a line per event, then the summary) is streamed here, and the
  exit code is the sweep's own; 143 when the job was stopped elsewhere (`ray job stop`), 130 after
  Ctrl-C here;
- Ctrl-C stops the job the way `ray job stop` does and streams the sweep's stopping: its trials
  end, its runs are marked interrupted and the resume command printed; a second Ctrl-C stops
  waiting for that.

`ray job stop` sends the entrypoint SIGTERM and SIGKILL `RAY_JOB_STOP_WAIT_TIME_S` later (Ray's
default 3 s: often too soon for a sweep to stop Tune and mark its runs). The jobs made here carry
sweep.JOB_STOP_WAIT_S (the supervisor reads the variable from the job's own environment), or this
machine's RAY_JOB_STOP_WAIT_TIME_S where it is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from orchestrator import preflight
from orchestrator.config import SweepSpec
from orchestrator.schema import cut, mask
from orchestrator.sweep import JOB_STOP_WAIT_S, JOB_STOP_WAIT_VAR

ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # where Ray's job client looks, in order


class SubmitError(Exception):
    """Bad input found before a job exists: (key, message) for the one-line error."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")


def resolved_here(uri: str) -> str:
    """A tracking URI with a relative file path (sqlite:///mlflow.db, ./mlruns) made absolute
    against this folder, as `orchestrate sweep` here would read it; any other URI as it is."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri if "://" in uri or ":" in uri.split("/")[0] else os.path.abspath(uri)


def entrypoint(spec: SweepSpec, *, resume: bool, verbosity: int) -> str:
    """The job's shell command: `orchestrate sweep` on the uploaded file, with the storage and
    tracking URI as they resolved here."""
    args = ["orchestrate", "sweep", os.path.basename(spec.file), "--tracking-uri", spec.tracking_uri,
            "--storage", spec.storage_path]
    args += ["--resume"] if resume else []
    args += ["-v"] * max(verbosity, 0) + ["-q"] * max(-verbosity, 0)
    return preflight.command_line(*args)


def client(address: str | None):
    """Ray's job client for `address` (else RAY_API_SERVER_ADDRESS / RAY_ADDRESS), its token
    from the same place every Ray client takes it (RAY_AUTH_MODE=token and the token file)."""
    if not address and not any(os.environ.get(v) for v in ADDRESS_VARS):
        raise SubmitError("--address", f"not given and {' / '.join(ADDRESS_VARS)} are not set; give the "
                                       f"cluster's dashboard, e.g. http://127.0.0.1:8265")
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Ray's job client logs each upload and the log stream's end at INFO: not among our lines.
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    shown = address or next(os.environ[v] for v in ADDRESS_VARS if os.environ.get(v))
    try:
        c = JobSubmissionClient(address)
        c.list_jobs()  # a request that needs the token
    except AuthenticationError:
        raise SubmitError("--address", f"{cut(mask(shown), 80)}: the cluster refused this client's token; set "
                                       f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the cluster's token file "
                                       f"(or RAY_AUTH_TOKEN)") from None
    except Exception as e:  # noqa: BLE001 - connection refused, a bad address ...
        raise SubmitError("--address", f"{cut(mask(shown), 80)}: no Ray job server answered "
                                       f"({type(e).__name__}: {cut(mask(str(e)), 200)})") from None
    return c


def run(spec: SweepSpec, *, address: str | None, resume: bool, verbosity: int, out=sys.stdout) -> int:
    spec = dataclasses.replace(spec, tracking_uri=resolved_here(spec.tracking_uri))
    if mask(spec.tracking_uri) != spec.tracking_uri:
        raise SubmitError("tracking uri", "has a password, which would be stored in the job's command line "
                                          "(`ray job list` shows it); set MLFLOW_TRACKING_USERNAME and "
                                          "MLFLOW_TRACKING_PASSWORD in the cluster's environment instead")
    jobs = client(address)
    import archs
    import orchestrator

    upload = tempfile.mkdtemp(prefix="orchestrate-submit-")
    try:
        shutil.copy(spec.file, os.path.join(upload, os.path.basename(spec.file)))
        job_id = jobs.submit_job(entrypoint=entrypoint(spec, resume=resume, verbosity=verbosity), runtime_env={
            "working_dir": upload, "excludes": ["__pycache__"],
            "py_modules": [os.path.dirname(orchestrator.__file__), os.path.dirname(archs.__file__)],
            "env_vars": {JOB_STOP_WAIT_VAR: os.environ.get(JOB_STOP_WAIT_VAR, str(JOB_STOP_WAIT_S))}})
    except Exception as e:  # noqa: BLE001 - the upload refused (too large ...), the server's answer
        raise SubmitError(mask(jobs.get_address()), f"the job server refused the job ({type(e).__name__}: "
                                                    f"{cut(mask(str(e)), 200)})") from None
    finally:
        shutil.rmtree(upload, ignore_errors=True)
    if verbosity >= 0:
        print(f"Ray job {job_id} on {jobs.get_address()}: storage {preflight.show_uri(spec.storage_path)}, "
              f"tracking {preflight.show_uri(spec.tracking_uri)} (`ray job stop {job_id}` or Ctrl-C stops it)",
              file=out, flush=True)
    stopped = _follow(jobs, job_id, out)
    info = jobs.get_job_info(job_id)
    status = info.status.value
    if status == "SUCCEEDED":
        return 0
    if stopped and status not in ("STOPPED", "FAILED"):  # a second Ctrl-C: not waiting any more
        print(f"Ray job {job_id} is still stopping on the cluster (`ray job status {job_id}`)", file=sys.stderr,
              flush=True)
        return 128 + signal.SIGINT
    if status == "STOPPED":
        print("\nThe job was stopped. Continue the sweep on the cluster with:\n  " + preflight.command_line(
            "orchestrate", "submit", spec.file, "--resume", "--address", jobs.get_address(),
            "--tracking-uri", spec.tracking_uri, "--storage", spec.storage_path), file=out, flush=True)
        return 128 + (signal.SIGINT if stopped else signal.SIGTERM)
    if info.driver_exit_code is None:  # the entrypoint never ran (its runtime env failed ...)
        print(f"Ray job {job_id} {status.lower()}: {cut(info.message or 'no message', 500)}", file=sys.stderr,
              flush=True)
        return 1
    return info.driver_exit_code


def _follow(jobs, job_id: str, out) -> bool:
    """Stream the job's output until it ends; the first Ctrl-C stops the job (and the stream goes
    on: the sweep's stopping, its resume command), a second one stops waiting. Whether it was
    stopped from here."""
    stopped, stream = False, _Stream(out)
    # SIGINT explicitly: a process started in the background (a shell's `&`, a CI job) inherits it
    # ignored, and then neither Python nor asyncio.run ever raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _follow_until_done(jobs, job_id, out, stream)
    finally:
        signal.signal(signal.SIGINT, previous)


def _follow_until_done(jobs, job_id: str, out, stream) -> bool:
    stopped = False
    while True:
        try:
            asyncio.run(stream.tail(jobs, job_id))
            return stopped
        except KeyboardInterrupt:
            if stopped:
                return stopped
            stopped = True
            print(f"\nCtrl-C: stopping Ray job {job_id} (Ctrl-C again to stop waiting for it)", file=sys.stderr,
                  flush=True)
            jobs.stop_job(job_id)
        except RuntimeError:  # the stream cut (the dashboard restarting ...): wait for the job's end
            while jobs.get_job_status(job_id).value not in ("SUCCEEDED", "FAILED", "STOPPED"):
                time.sleep(1)
            return stopped


class _Stream:
    """A job's log written to `out` once: a tail started again (after a Ctrl-C) begins at the
    log's start, so what was already written is skipped."""

    def __init__(self, out):
        self.out, self.written = out, 0

    async def tail(self, jobs, job_id: str) -> None:
        at = 0
        async for chunk in jobs.tail_job_logs(job_id):
            new = chunk[max(0, self.written - at):]
            at += len(chunk)
            if new:
                self.out.write(new)
                self.out.flush()
                self.written = at
