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

This file is also the worker's entry point (``python -I sandbox.py --worker``),
so it imports only the standard library at module level.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass

__all__ = ["RuleOutcome", "Sandbox", "SandboxError"]

_HEADER = struct.Struct("!II")  # request: header length, body length
_REPLY = struct.Struct("!I")  # reply: payload length
_MAX_REPLY = 64 * 1024 * 1024
_STARTUP_TIMEOUT_S = 10.0
_MAX_MESSAGE = 500  # characters of an error message kept per rule


@dataclass(frozen=True)
class RuleOutcome:
    name: str
    matched: bool  # False when it errored
    error: str | None


class SandboxError(RuntimeError):
    """The sandbox cannot evaluate at all (closed, or a worker cannot start)."""


# --------------------------------------------------------------------------
# JavaScript run inside the worker (one script per evaluation).
#
# Before it runs, dukpy has parsed the context JSON into the global `dukpy`.
# `call_python` is the only way back to the host; the prelude captures it in a
# closure and deletes the global, so rules cannot reach it (strict-mode
# functions have no `caller`/`arguments` path to the prelude).  The host only
# answers the names "s" (rules start) and "r" (one rule's outcome).
# --------------------------------------------------------------------------
_PRELUDE = r"""
(function (RULES, CHECK_ONLY, MAXLEN) {
  "use strict";
  var g = globalThis;
  var ctx = g.dukpy;
  var report = g.call_python;
  var Fn = Function, FnProto = Function.prototype, freeze = Object.freeze, isFrozen = Object.isFrozen;
  var getProto = Object.getPrototypeOf, ownKeys = Reflect.ownKeys;
  var getDesc = Object.getOwnPropertyDescriptor, defProp = Object.defineProperty;
  var isArray = Array.isArray, Str = String, jsonStr = JSON.stringify;

  var hostGlobals = ["dukpy", "call_python", "Atomics", "SharedArrayBuffer",
                     "FinalizationRegistry", "WeakRef", "queueMicrotask",
                     "process", "require", "module", "exports", "console"];
  for (var h = 0; h < hostGlobals.length; h++) { delete g[hostGlobals[h]]; }

  // Deep freeze of the intrinsics: everything reachable from the global object
  // through own properties (values and accessors) and prototypes, plus the
  // intrinsics that only syntax reaches.
  var roots = [g];
  function add(make) { try { roots.push(make()); } catch (e) { } }
  add(function () { return getProto(function* () {}); });
  add(function () { return getProto(async function () {}); });
  add(function () { return getProto(async function* () {}); });
  add(function () { return getProto(async function* () {}()); });
  add(function () { return getProto([][Symbol.iterator]()); });
  add(function () { return getProto(""[Symbol.iterator]()); });
  add(function () { return getProto(new Map().entries()); });
  add(function () { return getProto(new Set().entries()); });
  add(function () { return getProto(/a/[Symbol.matchAll]("")); });
  add(function () { return getProto(Iterator.from({ next: function () {} })); });
  add(function () { return getProto([].values().map(function (x) { return x; })); });
  add(function () { return getProto((function () { return arguments; })()); });
  var seen = new Set(), stack = roots;
  while (stack.length) {
    var o = stack.pop();
    if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
    seen.add(o);
    try { freeze(o); } catch (e) { }
    var keys = ownKeys(o);
    // Built-in methods hold nothing but `length` and `name` (and Function.prototype
    // as their prototype): freezing them is enough, no need to walk them.
    if (typeof o === "function" && keys.length === 2 && o !== FnProto &&
        keys[0] === "length" && keys[1] === "name") continue;
    stack.push(getProto(o));
    for (var k = 0; k < keys.length; k++) {
      var d = getDesc(o, keys[k]);
      if (!d) continue;
      if ("value" in d) stack.push(d.value); else { stack.push(d.get); stack.push(d.set); }
    }
  }
  seen = roots = stack = null;

  function message(e) {
    var text;
    try {
      if (e instanceof Error) {
        text = Str(e.name) + ": " + Str(e.message);
      } else if (e === null) {
        // QuickJS throws null when it runs out of memory while making the error itself.
        text = "out of memory (the interpreter threw null)";
      } else {
        text = "uncaught " + describe(e);
      }
    } catch (e2) { text = "uncaught exception"; }
    return text.length > MAXLEN ? text.slice(0, MAXLEN) + "..." : text;
  }
  function lineOf(e) {
    try {
      var s = e instanceof Error ? e.stack : undefined;
      if (typeof s !== "string") return 0;
      var m = /<input>:(\d+)/.exec(s);
      return m ? (+m[1]) - 2 : 0;
    } catch (e2) { return 0; }
  }
  function describe(v) {
    if (v === null) return "null";
    switch (typeof v) {
      case "undefined": return "undefined";
      case "number": case "boolean": return Str(v);
      case "bigint": return Str(v) + "n";
      case "string": var t = jsonStr(v); return t.length > 60 ? t.slice(0, 60) + '..."' : t;
      case "symbol": return "a symbol";
      case "function": return "a function";
      default: return isArray(v) ? "an array" : "an object";
    }
  }
  function compile(expr) {
    return new Fn("candidate", "members", "quorumCount",
                  '"use strict"; return (' + expr + "\n);");
  }
  function errorText(e) {
    var line = lineOf(e);
    return (line > 0 ? "line " + line + ": " : "") + message(e);
  }

  if (CHECK_ONLY) {
    try { compile(RULES[0][1]); return null; } catch (e) { return errorText(e); }
  }

  // `disks` and `gpus` are arrays that also behave as counts.  The shell of the
  // context (candidate, members, each member, its disks, gpus and facts object)
  // is frozen so a rule cannot change what later rules see; deeper facts are not
  // (a deep freeze of 1000 members costs as much as parsing them).
  function count() { return this.length; }
  function countText() { return Str(this.length); }
  freeze(count); freeze(countText);
  function counts(m) {
    if (typeof m !== "object" || m === null) return;
    var names = ["disks", "gpus"];
    for (var n = 0; n < 2; n++) {
      var a = m[names[n]];
      if (isArray(a)) {
        defProp(a, "valueOf", { value: count });
        defProp(a, "toString", { value: countText });
        freeze(a);
      }
    }
    if (typeof m.facts_json === "string") lazyFacts(m, m.facts_json);
    else if (typeof m.facts === "object" && m.facts !== null) freeze(m.facts);
    freeze(m);
  }
  // A member's facts may come as JSON text (`facts_json`): parsed, and frozen, only if a rule
  // reads them, so rules that look only at roles never pay for 1000 members' facts.
  // Only the facts a rule reads are parsed, so they can afford a deep freeze: no rule can
  // change them for the rules after it.
  var parseJson = JSON.parse;
  function deepFreeze(o) {
    if (typeof o !== "object" || o === null || isFrozen(o)) return o;
    freeze(o);
    for (var key in o) deepFreeze(o[key]);
    return o;
  }
  function lazyFacts(m, text) {
    var parsed;
    delete m.facts_json;
    defProp(m, "facts", { enumerable: true, get: function () {
      if (parsed === undefined) parsed = deepFreeze(parseJson(text));
      return parsed;
    } });
  }
  var candidate, members, quorumCount;
  if (typeof ctx === "object" && ctx !== null && !isArray(ctx)) {
    candidate = ctx.candidate; members = ctx.members; quorumCount = ctx.quorumCount;
  }
  counts(candidate);
  if (isArray(members)) {
    for (var i = 0; i < members.length; i++) counts(members[i]);
    freeze(members);
  }
  ctx = null;

  report("s");
  for (var r = 0; r < RULES.length; r++) {
    var name = RULES[r][0], matched = false, err = null;
    try {
      var result = compile(RULES[r][1])(candidate, members, quorumCount);
      if (result === true || result === false) matched = result;
      else err = "returned " + describe(result) + ", not true or false";
    } catch (e) {
      err = errorText(e);
    }
    report("r", r, matched, err);
  }
  return null;
})
"""


# --------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------
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
        data = _REPLY.pack(len(data)) + data
        while data:
            data = data[os.write(wfd, data):]

    prelude = _PRELUDE.encode()
    reply({"ready": os.getpid()})
    while True:
        try:
            hlen, blen = _HEADER.unpack(read_exact(_HEADER.size))
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
            [sys.executable, "-I", os.path.abspath(__file__), "--sandbox-worker",
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
        (n,) = _REPLY.unpack(self._read_exact(_REPLY.size, deadline))
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
        self._write(_HEADER.pack(len(h), len(body)) + h + body,
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


if __name__ == "__main__" and len(sys.argv) >= 4 and sys.argv[1] == "--sandbox-worker":
    try:
        _worker_main(sys.argv[2:])
    except KeyboardInterrupt:
        pass
