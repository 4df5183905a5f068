"""Terraform as a process: python-terraform's commands and options, run so that an activity can
watch and stop them.

python-terraform builds each command line (`init`, `apply` with `skip_plan=True`, `plan` with
`-detailed-exitcode`, `destroy`, `output -json`), but its own `cmd` inherits os.environ and
waits for the whole output. Here `cmd` runs the same command line with the run's environment
only (the state store's password lives there, never in os.environ or a file), in a process
group of its own, reading its output line by line (the last line is the run's progress), and
stops it when the activity is cancelled: SIGINT to the group, the way Ctrl-C stops Terraform
(it finishes the resource at hand, writes the state and releases the state lock), then SIGKILL
after a grace period.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import python_terraform

from activities.heartbeat import Progress

GRACE = 20.0  # seconds Terraform has to stop cleanly after SIGINT
LEFTOVER_GRACE = 2.0  # seconds what Terraform left running has after SIGTERM, before SIGKILL
READER_JOIN = 5.0  # seconds to wait for the output once the whole group is gone
POLL = 0.2  # seconds between looks at the cancel flag
MAX_ERROR = 300  # characters kept of each of Terraform's errors
MAX_ERRORS = 5
MAX_SUMMARY = 2000  # characters of a plan/apply summary
QUIET = ("output",)  # commands whose output holds values (sensitive ones too): never progress


class Interrupted(Exception):
    """The run was cancelled and Terraform stopped."""


class Terraform(python_terraform.Terraform):
    """python-terraform with its commands run by `run` (see the module's docstring)."""

    def __init__(self, binary: str, working_dir: Path, env: dict[str, str], progress: Progress) -> None:
        super().__init__(working_dir=str(working_dir), terraform_bin_path=binary, is_env_vars_included=False)
        self.env, self.progress = env, progress

    def cmd(self, cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
        kwargs.pop("capture_output", None)
        kwargs.pop("raise_on_error", None)
        # Variables travel as TF_VAR_* in the environment: python-terraform turns any dict
        # (its default `var={}` too) into a var file in /tmp.
        kwargs["var"] = None
        argv = self.generate_cmd_string(cmd, *args, **kwargs)
        return run(argv, Path(self.working_dir), self.env, self.progress, quiet=cmd in QUIET)


def _reader(stream, lines: list[str], progress: Progress | None) -> threading.Thread:
    def read() -> None:
        for line in stream:
            lines.append(line)
            if progress is not None and line.strip():
                progress.last = line.strip()[:200]

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt Terraform like Ctrl-C (it releases its state lock), kill it if it lingers."""
    _signal_group(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)  # what it started (a local-exec) goes with it


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal: still there
        return True


def _end_leftovers(pgid: int) -> None:
    """Terraform has exited: end what it left running in its group (a `local-exec` that put
    `sleep` in the background). Such a child holds Terraform's stdout open, so the readers would
    wait for it, and a cancelled run with them: SIGTERM, then SIGKILL after a short grace."""
    _signal_group(pgid, signal.SIGTERM)
    for _ in range(int(LEFTOVER_GRACE / POLL)):
        if not _group_alive(pgid):
            return
        time.sleep(POLL)
    _signal_group(pgid, signal.SIGKILL)


def run(argv: list[str], cwd: Path, env: dict[str, str], progress: Progress, quiet: bool = False) -> tuple[int, str, str]:
    """Run one Terraform command: (exit code, stdout, stderr). Interrupted if the run is
    cancelled before or while it runs."""
    if progress.cancel.is_set():
        raise Interrupted()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace", start_new_session=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [_reader(proc.stdout, out, None if quiet else progress), _reader(proc.stderr, err, None)]
    try:
        while proc.poll() is None:
            if progress.cancel.wait(POLL):
                _stop(proc)
                raise Interrupted()
    finally:
        if proc.poll() is None:  # an unexpected error here: never leave Terraform running
            _stop(proc)
        _end_leftovers(proc.pid)
        for reader in readers:
            reader.join(READER_JOIN)  # a child that left the group may hold a pipe: never wait on it
    return proc.returncode, "".join(out), "".join(err)


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def errors(text: str) -> list[str]:
    """Terraform's own `Error:` diagnostics (with -no-color), each on one line, trimmed, once."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("Error: "):
            current = [line]
            blocks.append(current)
        elif line.startswith("Warning: "):
            current = None
        elif current is not None:
            current.append(line.strip(" │╵╷├─"))
    found: list[str] = []
    for block in blocks:
        one = _trim(" ".join(" ".join(block).split()), MAX_ERROR)
        if one not in found:
            found.append(one)
    return found[:MAX_ERRORS]


def failure(command: str, code: int, out: str, err: str, secret: str) -> str:
    """Why a command failed, from Terraform's own error lines (else its last lines); `secret`
    (the state store's password) never appears in it."""
    found = errors(err) or errors(out)
    if not found:
        tail = [line.strip() for line in (err or out).splitlines() if line.strip()][-3:]
        found = [_trim(" ".join(tail) or "no output", MAX_ERROR)]
    message = f"terraform {command} failed (exit {code}): " + " | ".join(found)
    return message.replace(secret, "(hidden)") if secret else message


_SUMMARY = re.compile(r"^\s*# \S.* (will|must) be |^(Plan|Apply complete!|Destroy complete!|No changes\.)")


def summary(out: str) -> str:
    """The lines that say what changed or would change ("# terraform_data.vip will be created",
    "Plan: 1 to add, ...", "Apply complete! ..."), trimmed."""
    lines = [line.strip() for line in out.splitlines() if _SUMMARY.match(line)]
    return _trim("\n".join(lines), MAX_SUMMARY)


_RESOURCES = re.compile(r"Resources: (\d+) (?:added|destroyed)(?:, (\d+) changed, (\d+) destroyed)?")


def changed(out: str) -> bool:
    """Whether an apply or destroy changed anything ("Resources: 1 added, 0 changed, 0 destroyed")."""
    return any(int(n or 0) for m in _RESOURCES.finditer(out) for n in m.groups())
