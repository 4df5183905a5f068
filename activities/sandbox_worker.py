"""The rule worker: one process of the sandbox's pool, evaluating rule sets with dukpy.

The parent (activities/sandbox.py) starts it as ``python -I sandbox_worker.py --sandbox-worker
DUKPY_PATH MEMORY_MB`` with an empty environment. ``-I`` leaves this file's folder off sys.path,
so the worker imports nothing of ours: only the standard library at module level, and dukpy
from the path it is given, after which it limits its own address space. The JavaScript it runs
per evaluation is ``sandbox_prelude.js`` beside it, read once at import.

Protocol on stdin/stdout: a request is ``HEADER`` (header length, body length), the JSON header
({op, rules, timeout}) and the context JSON; a reply is ``REPLY`` (length) and a JSON object
({ready} once at start, then {results, started} or {check}, {timeout} or {fatal}).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from pathlib import Path

HEADER = struct.Struct("!II")  # request: header length, body length
REPLY = struct.Struct("!I")  # reply: payload length
_MAX_MESSAGE = 500  # characters of an error message kept per rule
_PRELUDE = (Path(__file__).resolve().parent / "sandbox_prelude.js").read_bytes()


class _Timeout(BaseException):
    pass


class _Host:
    """The object dukpy's C code calls back into (instead of JSInterpreter).

    It exports no functions but "s" and "r", which only record progress."""

    def __init__(self, ctx, count, state):
        self._ctx = ctx
        self.count = count
        self.started = False
        self.results: dict[int, tuple[bool, str | None]] = {}
        self._state = state

    def _check_exported_function_exists(self, func):
        return func in (b"s", b"r")

    def _call_python(self, func, json_args):
        if self._state["timed_out"]:
            raise _Timeout()
        args = json.loads(json_args)
        if func == b"s":
            self.started = True
        elif func == b"r" and len(args) == 3:
            i, matched, err = args
            if type(i) is int and 0 <= i < self.count and i not in self.results:
                self.results[i] = (matched is True, err if isinstance(err, str) else None)
        return None


def _worker_main(argv):
    dukpy_path, memory_mb = argv[0], int(argv[1])
    # Nothing from the host environment: -I already ignores PYTHON* variables,
    # the parent passes env={}; drop whatever is left anyway.
    os.environ.clear()
    if dukpy_path and dukpy_path not in sys.path:
        sys.path.insert(0, dukpy_path)
    from dukpy import _dukpy  # noqa: PLC0415

    import resource  # noqa: PLC0415

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    except (ValueError, OSError):
        pass

    rfd, wfd = 0, 1
    state = {"timed_out": False, "active": False}

    def on_alarm(signum, frame):
        if not state["active"]:
            return
        state["timed_out"] = True
        # Keep interrupting until the evaluation has really stopped (a timeout
        # raised inside a host callback reaches JS as a catchable error).
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def read_exact(n):
        chunks = []
        while n:
            b = os.read(rfd, min(n, 1 << 20))
            if not b:
                raise EOFError
            chunks.append(b)
            n -= len(b)
        return b"".join(chunks)

    def reply(obj):
        data = json.dumps(obj).encode()
        data = REPLY.pack(len(data)) + data
        while data:
            data = data[os.write(wfd, data):]

    prelude = _PRELUDE
    reply({"ready": os.getpid()})
    while True:
        try:
            hlen, blen = HEADER.unpack(read_exact(HEADER.size))
            header = json.loads(read_exact(hlen))
            body = read_exact(blen) if blen else b"{}"
        except EOFError:
            return
        rules = header["rules"]
        check_only = header.get("op") == "check"
        timeout = float(header["timeout"])
        state["timed_out"] = False
        code = (
            prelude
            + b"("
            + json.dumps(rules).encode()
            + (b", true, " if check_only else b", false, ")
            + str(_MAX_MESSAGE).encode()
            + b");"
        )
        host = None
        out: dict = {}
        def disarm():
            state["active"] = False  # from here on the handler does nothing
            signal.setitimer(signal.ITIMER_REAL, 0)

        try:
            try:
                state["active"] = True
                signal.setitimer(signal.ITIMER_REAL, timeout)
                host = _Host(_dukpy.create_context(), len(rules), state)
                res = _dukpy.eval_string(host, code, body, False, "<sandbox>")
            finally:
                disarm()
            if state["timed_out"]:
                raise _Timeout()
            if check_only:
                out["check"] = json.loads(res) if res is not None else None
        except _Timeout:
            disarm()
            out["timeout"] = True
        except MemoryError:
            out["fatal"] = "ran out of memory"
        except Exception as e:  # JSRuntimeError from outside the rules, e.g. bad JSON
            disarm()
            state_text = str(e).split("\n", 1)[0][:_MAX_MESSAGE]
            if state["timed_out"]:
                out["timeout"] = True
            else:
                out["fatal"] = state_text
        if not check_only and host is not None:
            out["started"] = host.started
            out["results"] = [host.results.get(i) for i in range(len(rules))]
        host = None
        try:
            reply(out)
        except MemoryError:
            reply({"fatal": "ran out of memory"})


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == "--sandbox-worker":
    try:
        _worker_main(sys.argv[2:])
    except KeyboardInterrupt:
        pass
