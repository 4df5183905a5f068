"""activities/tfprocess.py: a process that outlives Terraform neither blocks the run nor
survives it (issue 16 review, item 2)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from activities import tfprocess
from activities.heartbeat import Progress


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_child_left_running_goes_with_the_run(tmp_path):
    argv = ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"]
    code, out, _ = tfprocess.run(argv, tmp_path, dict(os.environ), Progress())
    leftover = int(out.strip())
    try:
        assert code == 0
        assert not _alive(leftover), "the backgrounded sleep was ended with the run"
    finally:
        _kill(leftover)


def test_a_child_holding_the_output_does_not_block_the_run(tmp_path):
    """The child keeps Terraform's stdout open: the readers must not wait for it."""
    result: list = []
    argv = ["sh", "-c", "sleep 60 & echo $!"]
    runner = threading.Thread(target=lambda: result.append(
        tfprocess.run(argv, tmp_path, dict(os.environ), Progress())), daemon=True)
    runner.start()
    runner.join(20)  # a deadline for the condition below, far under the child's 60 s
    try:
        assert not runner.is_alive(), "the run returned while its child still held its stdout"
        leftover = int(result[0][1].strip())
        assert not _alive(leftover)
    finally:
        for pid in (int(result[0][1].strip()),) if result else ():
            _kill(pid)
