"""Sandboxed evaluation of rule expressions (the README's Rules section).

Rule expressions are JavaScript run by dukpy (QuickJS-ng inside).  dukpy's
default globals are not a sandbox and it never releases the GIL, so rules run in
separate worker processes:

* each worker is started with an empty environment (``python -I``, ``env={}``)
  and limits its own address space with ``RLIMIT_AS`` once dukpy is imported;
* every evaluation builds a fresh QuickJS context straight from ``_dukpy`` (no
  ``require``/``process``/``console`` shims), removes the host globals
  (``dukpy``, ``call_python``, ``Atomics``, ``SharedArrayBuffer``, ...) and deep
  freezes every intrinsic reachable from the global object (plus the ones only
  reachable through syntax), so no rule can poison a prototype for another rule;
  a fresh context per evaluation means nothing survives to the next one;
* the time limit is enforced from outside the JS engine: ``SIGALRM`` in the
  worker after ``timeout_s`` (QuickJS polls its interrupt handler, which runs the
  Python signal handler; a JS ``catch`` cannot swallow it), and the parent kills
  the worker after about ``2 * timeout_s`` and starts a new one;
* the context is sent as JSON bytes and parsed by QuickJS itself (dukpy's
  ``jsvars`` argument), one JS evaluation per rule set.

This module is the parent side: the pool of workers, their deadlines and the
outcomes. The worker process is ``sandbox_worker.py`` (its own entry point, standard
library only) and the JavaScript it runs is ``sandbox_prelude.js``.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass

from activities import sandbox_worker
from activities.sandbox_worker import HEADER, REPLY

__all__ = ["RuleOutcome", "Sandbox", "SandboxError"]

_MAX_REPLY = 64 * 1024 * 1024
_STARTUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RuleOutcome:
    name: str
    matched: bool  # False when it errored
    error: str | None


class SandboxError(RuntimeError):
    """The sandbox cannot evaluate at all (closed, or a worker cannot start)."""


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------
def _dukpy_path() -> str:
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("dukpy")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("dukpy is not installed")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


class _WorkerDied(Exception):
    pass


class _WorkerTimeout(Exception):
    pass


class _Worker:
    def __init__(self, dukpy_path: str, memory_mb: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(sandbox_worker.__file__), "--sandbox-worker",
             dukpy_path, str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
            close_fds=True,
            start_new_session=True,  # no terminal signals from the parent's group
        )
        self.pid = self.proc.pid
        self._wfd = self.proc.stdin.fileno()
        self._rfd = self.proc.stdout.fileno()
        os.set_blocking(self._wfd, False)
        self.ready = False

    # -- I/O with deadlines --------------------------------------------------
    def _write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._wfd, select.POLLOUT)
        while view:
            try:
                n = os.write(self._wfd, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, OSError) as e:
                raise _WorkerDied(str(e)) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise _WorkerTimeout()
            poller.poll(max(1, int(left * 1000)))

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks = []
        poller = select.poll()
        poller.register(self._rfd, select.POLLIN)
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _WorkerTimeout()
            if not poller.poll(max(1, int(left * 1000 + 1))):
                continue
            b = os.read(self._rfd, min(n, 1 << 20))
            if not b:
                raise _WorkerDied("closed")
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def _read_reply(self, deadline: float) -> dict:
        (n,) = REPLY.unpack(self._read_exact(REPLY.size, deadline))
        if n > _MAX_REPLY:
            raise _WorkerDied("oversized reply")
        return json.loads(self._read_exact(n, deadline))

    def wait_ready(self) -> None:
        if not self.ready:
            self._read_reply(time.monotonic() + _STARTUP_TIMEOUT_S)
            self.ready = True

    def request(self, header: dict, body: bytes, hard_s: float) -> dict:
        self.wait_ready()
        h = json.dumps(header).encode()
        start = time.monotonic()
        # Transfer time is not the worker's fault: allow ~1 s per 64 MB extra.
        self._write(HEADER.pack(len(h), len(body)) + h + body,
                    start + hard_s + len(body) / (64 << 20) + 1.0)
        return self._read_reply(time.monotonic() + hard_s)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self._reap()

    def stop(self) -> None:
        """Graceful: EOF on stdin makes the worker exit; kill if it does not."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _kill_all(workers: set) -> None:
    for w in list(workers):
        w.kill()
    workers.clear()


class Sandbox:
    """Evaluates rule expressions in worker processes; thread-safe; reusable."""

    def __init__(self, workers: int = 2, memory_mb: int = 256, timeout_s: float = 1.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.memory_mb = memory_mb
        self.timeout_s = float(timeout_s)
        self._dukpy = _dukpy_path()
        self._lock = threading.Lock()
        self._closed = False
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._finalizer = weakref.finalize(self, _kill_all, self._all)
        for _ in range(workers):
            self._idle.put(self._spawn())

    # -- pool ---------------------------------------------------------------
    def _spawn(self) -> _Worker:
        try:
            w = _Worker(self._dukpy, self.memory_mb)
        except OSError as e:
            raise SandboxError(f"cannot start a rule worker: {e}") from e
        with self._lock:
            self._all.add(w)
        return w

    def _discard(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._all.discard(w)

    def _acquire(self) -> _Worker:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        w = self._idle.get()
        if w is None:  # close() woke us up
            self._idle.put(None)
            raise SandboxError("the sandbox is closed")
        return w

    def _release(self, w: _Worker | None) -> None:
        if self._closed:
            if w is not None:
                self._discard(w)
            return
        if w is None:
            try:
                w = self._spawn()
            except SandboxError:
                # Keep the pool size: try again on the next call.
                w = None
        if w is None:
            threading.Thread(target=self._respawn_later, daemon=True).start()
        else:
            self._idle.put(w)

    def _respawn_later(self) -> None:
        time.sleep(1.0)
        self._release(None)

    def _run(self, header: dict, body: bytes) -> tuple[dict | None, str | None]:
        """One request; returns (reply, None) or (None, reason the worker was lost)."""
        w = self._acquire()
        try:
            try:
                reply = w.request(header, body, 2 * self.timeout_s)
            except _WorkerTimeout:
                self._discard(w)
                w = None
                return None, "timeout"
            except (_WorkerDied, ValueError, OSError) as e:
                code = w.proc.poll()
                self._discard(w)
                if code is None:
                    code = w.proc.returncode
                w = None
                if code is not None and code < 0:
                    detail = f"signal {-code}"
                else:
                    detail = f"exit status {code}"
                why = f"the rule worker died ({detail}; its memory limit is {self.memory_mb} MB)"
                return None, why if not isinstance(e, ValueError) else "the rule worker sent a bad reply"
            return reply, None
        except BaseException:
            # e.g. KeyboardInterrupt while waiting: the worker's state is unknown.
            if w is not None:
                self._discard(w)
                w = None
            raise
        finally:
            self._release(w)

    # -- API ------------------------------------------------------------------
    def evaluate(self, rules: list[tuple[str, str]], context: dict | bytes) -> list[RuleOutcome]:
        """rules: [(name, expression)] in order; context: JSON object (dict or bytes)
        with keys candidate, members, quorumCount.  One JS evaluation runs every rule,
        each in its own try/catch.  Failures of the whole evaluation (time or memory
        limit) give every affected rule matched=False with an error saying why."""
        rules = [(str(n), str(e)) for n, e in rules]
        if not rules:
            return []
        if isinstance(context, (bytes, bytearray, memoryview)):
            body = bytes(context)
        else:
            body = json.dumps(context, separators=(",", ":"), ensure_ascii=False).encode()
        t = _seconds(self.timeout_s)
        reply, lost = self._run(
            {"op": "eval", "rules": [list(r) for r in rules], "timeout": self.timeout_s}, body
        )
        if lost == "timeout":
            return [
                RuleOutcome(n, False, f"rule '{n}' took longer than {t} s "
                            f"(the rule set was stopped after {_seconds(2 * self.timeout_s)} s)")
                for n, _ in rules
            ]
        if lost is not None:
            return [RuleOutcome(n, False, f"rule '{n}' not evaluated: {lost}") for n, _ in rules]

        results = reply.get("results") or [None] * len(rules)
        out: list[RuleOutcome] = []
        blame: str | None = None  # why the remaining rules did not run
        for i, (name, _) in enumerate(rules):
            r = results[i] if i < len(results) else None
            if r is not None:
                matched, err = r
                if err is not None:
                    out.append(RuleOutcome(name, False, f"rule '{name}'{_with_line(err)}"))
                else:
                    out.append(RuleOutcome(name, bool(matched), None))
                continue
            if blame is not None:
                out.append(RuleOutcome(name, False, f"rule '{name}' not evaluated: {blame}"))
            elif reply.get("timeout"):
                if reply.get("started"):
                    out.append(RuleOutcome(name, False, f"rule '{name}' took longer than {t} s"))
                    blame = f"rule '{name}' took longer than {t} s"
                else:
                    blame = f"the context took longer than {t} s to load"
                    out.append(RuleOutcome(name, False, f"rule '{name}' not evaluated: {blame}"))
            else:
                blame = reply.get("fatal") or "the evaluation stopped"
                if "JSON" in blame and not reply.get("started"):
                    blame = f"the context is not valid JSON: {blame}"
                out.append(RuleOutcome(name, False, f"rule '{name}' not evaluated: {blame}"))
        return out

    def check(self, expression: str) -> str | None:
        """Compile only (no run): None if valid, else a message with the line,
        e.g. "line 2: SyntaxError: unexpected token in expression: ')'"."""
        reply, lost = self._run(
            {"op": "check", "rules": [["check", str(expression)]], "timeout": self.timeout_s}, b"{}"
        )
        if lost == "timeout" or (reply is not None and reply.get("timeout")):
            return f"compiling took longer than {_seconds(self.timeout_s)} s"
        if lost is not None:
            return f"could not compile: {lost}"
        if reply.get("fatal"):
            return reply["fatal"]
        return reply.get("check")

    def close(self) -> None:
        """Stop every worker.  Idle workers stop now; a worker still busy with a
        call stops when that call returns.  Further calls raise SandboxError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            if w is not None:
                w.stop()
                with self._lock:
                    self._all.discard(w)
        self._idle.put(None)  # wake any thread blocked in _acquire

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (for tests and diagnostics)."""
        with self._lock:
            return sorted(w.pid for w in self._all)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _seconds(s: float) -> str:
    return repr(float(s))


def _with_line(err: str) -> str:
    # "rule 'x' line 3: TypeError: ...", "rule 'x' returned 3, not ...", and
    # without a line "rule 'x': uncaught 3"
    if err.startswith("line ") or err.startswith("returned "):
        return " " + err
    return ": " + err

