"""Tests of activities.sandbox: rule evaluation in sandboxed dukpy workers."""

from __future__ import annotations

import json
import os
import threading

import pytest

from activities.sandbox import RuleOutcome, Sandbox, SandboxError

SEED_RULES = [
    ("always", "true"),
    ("quorum", 'members.filter(m => m.role.startsWith("master")).length < quorumCount'),
    ("first-master", 'members.filter(m => m.role.startsWith("master")).length < 1'),
    ("storage", "candidate.disks.length > 1"),
    ("gpu", "candidate.gpus > 0"),
    ("cpus", "candidate.facts.processors.count >= 4"),
    ("vga", 'candidate.facts.lspci["VGA compatible controller"].length > 0'),
]


def machine(role="", disks=2, gpus=0, cpus=8, vga=1, hostname="m"):
    return {
        "role": role,
        "state": "new" if not role else "ready",
        "hostname": hostname,
        "macs": ["52:54:00:00:00:01"],
        "disks": [{"name": f"sd{chr(97 + i)}", "size": 1 << 40} for i in range(disks)],
        "gpus": [{"vendor": "10de", "device": "2204"} for _ in range(gpus)],
        "facts": {
            "processors": {"count": cpus},
            "processor0": "Intel(R) Xeon(R) CPU",
            "lspci": {"VGA compatible controller": ["Matrox G200eR2"] * vga},
            "memory": {"total": 64 << 30},
        },
    }


def context(candidate=None, members=(), quorum=3):
    return {
        "candidate": candidate if candidate is not None else machine(),
        "members": list(members),
        "quorumCount": quorum,
    }


def run1(sb, expression, ctx=None):
    return sb.evaluate([("r", expression)], ctx if ctx is not None else context())[0]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def sb():
    s = Sandbox(workers=2, memory_mb=256, timeout_s=0.5)
    yield s
    s.close()


def assert_healthy(sb):
    """The evaluation after a hostile one is still correct."""
    out = sb.evaluate(SEED_RULES, context(machine(disks=2, gpus=1), [machine("master-prime")]))
    assert [o.matched for o in out] == [True, True, False, True, True, True, True]
    assert all(o.error is None for o in out)


# -- correct results ------------------------------------------------------------


def test_seed_rules_new_cluster(sb):
    out = sb.evaluate(SEED_RULES, context(machine(disks=1, gpus=0, cpus=2, vga=0), [], quorum=3))
    assert [o.name for o in out] == [n for n, _ in SEED_RULES]
    assert [o.matched for o in out] == [True, True, True, False, False, False, False]
    assert all(o.error is None for o in out)
    assert all(isinstance(o, RuleOutcome) for o in out)


def test_seed_rules_with_masters(sb):
    members = [machine("master-prime"), machine("master"), machine("worker"), machine("")]
    out = sb.evaluate(SEED_RULES, context(machine(disks=3, gpus=2, cpus=4), members, quorum=3))
    assert [o.matched for o in out] == [True, True, False, True, True, True, True]
    members.append(machine("master"))
    out = sb.evaluate(SEED_RULES[1:2], context(machine(), members, quorum=3))
    assert out == [RuleOutcome("quorum", False, None)]


def test_context_as_bytes(sb):
    raw = json.dumps(context(machine(gpus=1), [machine("master")], quorum=1)).encode()
    out = sb.evaluate(SEED_RULES, raw)
    assert [o.matched for o in out] == [True, False, False, True, True, True, True]


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("candidate.disks == 2", True),
        ("candidate.disks === 2", False),  # strict equality: still an array
        ("candidate.disks > 1 && candidate.disks < 3", True),
        ("candidate.disks.filter(d => d.name === 'sdb').length === 1", True),
        ("candidate.gpus == 0", True),
        ("`${candidate.disks}` === '2'", True),
        ("candidate.disks + 1 === 3", True),
        ("members.every(m => m.gpus > 0)", True),
        ("members[0].disks == 5", True),
        ("Array.isArray(candidate.disks)", True),
        ("JSON.stringify(candidate.gpus) === '[]'", True),
        ("candidate.role === ''", True),
        ("candidate.facts.processor0.includes('Xeon')", True),
        ("candidate.facts.memory?.total >= 32 * 2**30", True),
        ("(candidate.facts.nothing?.x ?? 7) === 7", True),
        ("quorumCount === 3", True),
        ("candidate.hostname.startsWith('m') &&\n  members.length === 1", True),
    ],
)
def test_expressions(sb, expression, expected):
    ctx = context(machine(disks=2, gpus=0), [machine("worker", disks=5, gpus=1)])
    assert run1(sb, expression, ctx) == RuleOutcome("r", expected, None)


def test_empty_rule_list(sb):
    assert sb.evaluate([], context()) == []


def test_missing_context_keys(sb):
    out = sb.evaluate([("a", "candidate === undefined && members === undefined"), ("b", "true")], {})
    assert out == [RuleOutcome("a", True, None), RuleOutcome("b", True, None)]


# -- errors -------------------------------------------------------------------


def test_reference_error_has_line(sb):
    o = run1(sb, "foo.bar")
    assert o == RuleOutcome("r", False, "rule 'r' line 1: ReferenceError: foo is not defined")
    o = run1(sb, "1 +\n  nope")
    assert o == RuleOutcome("r", False, "rule 'r' line 2: ReferenceError: nope is not defined")
    o = run1(sb, "candidate.facts.nope.x")
    assert o == RuleOutcome(
        "r", False, "rule 'r' line 1: TypeError: cannot read property 'x' of undefined")


@pytest.mark.parametrize(
    "expression, shown",
    [("3", "3"), ('"yes"', '"yes"'), ("undefined", "undefined"), ("null", "null"),
     ("candidate", "an object"), ("members", "an array"), ("1 > 0 ? 1 : 0", "1")],
)
def test_non_boolean_result(sb, expression, shown):
    o = run1(sb, expression)
    assert o == RuleOutcome("r", False, f"rule 'r' returned {shown}, not true or false")


def test_thrown_non_error(sb):
    o = run1(sb, "(() => { throw 3 })()")
    assert not o.matched and o.error == "rule 'r': uncaught 3"


def test_thrown_null_reads_as_out_of_memory(sb):
    """QuickJS throws null when it cannot even allocate its "out of memory" error."""
    o = run1(sb, "(() => { throw null })()")
    assert o == RuleOutcome("r", False, "rule 'r': out of memory (the interpreter threw null)")


def test_one_failing_rule_does_not_stop_the_others(sb):
    rules = [("a", "true"), ("b", "nope()"), ("c", "42"), ("d", "candidate.disks.length > 1"),
             ("e", "(")]
    out = sb.evaluate(rules, context())
    assert out[0] == RuleOutcome("a", True, None)
    assert out[1].error == "rule 'b' line 1: ReferenceError: nope is not defined"
    assert out[2].error == "rule 'c' returned 42, not true or false"
    assert out[3] == RuleOutcome("d", True, None)
    assert not out[4].matched and out[4].error.startswith("rule 'e' line ")
    assert "SyntaxError" in out[4].error


def test_invalid_context_bytes(sb):
    out = sb.evaluate([("a", "true"), ("b", "false")], b"{not json")
    assert [o.matched for o in out] == [False, False]
    assert all("not valid JSON" in o.error for o in out)
    assert_healthy(sb)


def test_check(sb):
    assert sb.check("true") is None
    assert sb.check('members.filter(m => m.role.startsWith("master")).length < quorumCount') is None
    assert sb.check("undefinedVariable.x") is None  # compile only: not run
    assert sb.check("while(true){}") is not None  # not an expression
    msg = sb.check("candidate.disks.length > 1 &&\n  (members.length +)")
    assert msg.startswith("line 2: SyntaxError:"), msg
    msg = sb.check("1 +\n+ )")
    assert msg == "line 2: SyntaxError: unexpected token in expression: ')'"
    assert sb.check("with (candidate) true").startswith("line 1: SyntaxError")  # strict mode


# -- hostile rules ------------------------------------------------------------------


def test_infinite_loop(sb):
    rules = [("before", "true"), ("loop", "(() => { while (true) {} })()"), ("after", "true")]
    out = sb.evaluate(rules, context())
    assert out[0] == RuleOutcome("before", True, None)
    assert out[1] == RuleOutcome("loop", False, "rule 'loop' took longer than 0.5 s")
    assert not out[2].matched and "took longer than" in out[2].error
    assert_healthy(sb)


def test_loop_that_catches_cannot_escape_time_limit(sb):
    o = run1(sb, "(() => { for (;;) { try { while (true) {} } catch (e) {} } })()")
    assert o == RuleOutcome("r", False, "rule 'r' took longer than 0.5 s")
    assert_healthy(sb)


def test_catastrophic_regex(sb):
    o = run1(sb, '/^(a+)+$/.test("a".repeat(40) + "b")')
    assert o == RuleOutcome("r", False, "rule 'r' took longer than 0.5 s")
    assert_healthy(sb)


def test_memory_bomb(sb):
    rules = [("bomb", "(() => { let a = []; while (true) a.push(new Array(1e6).fill(1)); })()"),
             ("after", "true")]
    out = sb.evaluate(rules, context())
    assert not out[0].matched
    assert "memory" in out[0].error or "took longer than" in out[0].error, out[0].error
    assert_healthy(sb)


def test_string_memory_bomb(sb):
    o = run1(sb, '(() => { let s = "x"; while (true) s += s; })()')
    assert not o.matched and o.error
    assert_healthy(sb)


def test_deep_recursion(sb):
    o = run1(sb, "(function f() { return f(); })()")
    assert not o.matched and "RangeError" in o.error
    assert_healthy(sb)


@pytest.mark.parametrize(
    "expression, missing",
    [("process.env.HOME !== undefined", "process"),
     ("Object.keys(process.env).length > 0", "process"),
     ('call_python("dukpy.load_module", "/etc/passwd") !== null', "call_python"),
     ('require("fs").readFileSync("/etc/passwd") !== null', "require"),
     ("dukpy !== undefined", "dukpy"),
     ("console.log('x') || true", "console")],
)
def test_no_host_globals(sb, expression, missing):
    o = run1(sb, expression)
    assert o == RuleOutcome("r", False, f"rule 'r' line 1: ReferenceError: {missing} is not defined")


def test_no_host_globals_via_global_object(sb):
    expr = ('["process", "require", "call_python", "dukpy", "console", "Atomics"]'
            '.every(k => !(k in globalThis))')
    assert run1(sb, expr) == RuleOutcome("r", True, None)
    # Indirect routes to a global or to Function do not find anything either.
    assert run1(sb, 'typeof Function("return this")().call_python === "undefined"').matched
    assert run1(sb, 'typeof (0, eval)("this").process === "undefined"').matched


def test_environment_not_reachable(sb, monkeypatch):
    # Even Function("return this") or an indirect eval has nothing host-side.
    o = run1(sb, 'Object.getOwnPropertyNames(globalThis).some(k => /env|python|require/i.test(k))')
    assert o == RuleOutcome("r", False, None)


@pytest.mark.parametrize(
    "poison",
    ["(Array.prototype.filter = () => [], true)",
     '(Object.prototype.role = "master", true)',
     '(Object.defineProperty(Object.prototype, "role", {get() { return "master" }}), true)',
     "(String.prototype.startsWith = () => true, true)",
     "(Function.prototype.call = () => true, true)",
     "(RegExp.prototype.test = () => true, true)",
     "(JSON.parse = () => ({}), true)",
     "(Array.prototype[Symbol.iterator] = function* () {}, true)",
     "(Object.getPrototypeOf([].values()).next = () => ({done: true}), true)",
     "(Object.setPrototypeOf(Array.prototype, null), true)",
     "(globalThis.members = [], true)",
     "(Math.max = () => 0, true)"],
)
def test_poisoning_does_not_leak(sb, poison):
    master = machine("master")
    master_less = machine("")
    check = [("count", 'members.filter(m => m.role.startsWith("master")).length === 1'),
             ("proto", '({}).role === undefined')]
    # Within the same evaluation: the poisoning fails with a clear error and the
    # later rules see the pristine intrinsics.
    out = sb.evaluate([("poison", poison)] + check, context(machine(), [master, master_less]))
    assert not out[0].matched and out[0].error.startswith("rule 'poison' line 1: TypeError"), out[0]
    assert out[1:] == [RuleOutcome("count", True, None), RuleOutcome("proto", True, None)]
    # And in the next evaluations (both workers).
    for _ in range(4):
        out = sb.evaluate(check, context(machine(), [master, master_less]))
        assert out == [RuleOutcome("count", True, None), RuleOutcome("proto", True, None)]


def test_poisoning_via_syntax_only_intrinsics(sb):
    for expr in ["(Object.getPrototypeOf(function*(){}).prototype.next = null, true)",
                 "(Object.getPrototypeOf(async function(){}).constructor = null, true)",
                 "(Object.getPrototypeOf(Int8Array).prototype.map = null, true)"]:
        o = run1(sb, expr)
        assert not o.matched and "TypeError" in o.error, (expr, o)


def test_counts_are_not_writable_shared_state(sb):
    # valueOf on one array cannot be replaced to fool the next rule.
    out = sb.evaluate(
        [("p", "(candidate.disks.valueOf = () => 100, true)"), ("c", "candidate.disks == 2")],
        context(machine(disks=2)))
    assert not out[0].matched and "TypeError" in out[0].error
    assert out[1] == RuleOutcome("c", True, None)


@pytest.mark.parametrize(
    "mutation",
    ["(members.length = 0, true)", "(members.push(members[0]), true)",
     '(members[0].role = "worker", true)', '(candidate.disks = [], true)',
     "(candidate.gpus.push(1), true)", '(candidate.facts.processors = null, true)',
     "(delete candidate.role, true)"],
)
def test_context_shell_is_read_only(sb, mutation):
    check = [("c", 'members.length === 1 && members[0].role === "master" && candidate.disks == 2'
                   ' && candidate.gpus == 0 && candidate.facts.processors.count === 8'
                   ' && candidate.role === ""')]
    out = sb.evaluate([("m", mutation)] + check, context(machine(), [machine("master")]))
    assert not out[0].matched and "TypeError" in out[0].error, out[0]
    assert out[1] == RuleOutcome("c", True, None)


def test_hostile_then_normal_many_times(sb):
    hostile = ["(() => { while (true) {} })()", "process.env", "require('fs')",
               "(Array.prototype.filter = () => [], true)"]
    for expr in hostile:
        run1(sb, expr)
        assert_healthy(sb)


# -- concurrency and lifecycle ----------------------------------------------------


def test_concurrent_evaluations(sb):
    errors = []

    def work(i):
        try:
            for j in range(10):
                n = (i + j) % 5
                members = [machine("master") for _ in range(n)]
                out = sb.evaluate(
                    [("n", f"members.filter(m => m.role.startsWith('master')).length === {n}"),
                     ("q", "members.length < quorumCount")],
                    context(machine(hostname=f"m{i}"), members, quorum=3))
                assert out == [RuleOutcome("n", True, None), RuleOutcome("q", n < 3, None)]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_concurrent_with_a_hostile_rule():
    with Sandbox(workers=2, timeout_s=0.3) as s:
        results = {}

        def work(key, rules):
            results[key] = s.evaluate(rules, context())

        threads = [threading.Thread(target=work, args=("loop", [("x", "(() => { while(true){} })()")]))]
        threads += [threading.Thread(target=work, args=(i, [("t", "candidate.disks == 2")]))
                    for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["loop"][0].error == "rule 'x' took longer than 0.3 s"
        for i in range(5):
            assert results[i] == [RuleOutcome("t", True, None)]


def test_close_leaves_no_workers():
    s = Sandbox(workers=3)
    assert s.evaluate([("a", "true")], context()) == [RuleOutcome("a", True, None)]
    pids = s.worker_pids()
    assert len(pids) == 3 and all(alive(p) for p in pids)
    s.close()
    assert s.worker_pids() == []
    assert not any(alive(p) for p in pids)
    with pytest.raises(SandboxError):
        s.evaluate([("a", "true")], context())
    s.close()  # idempotent


def test_hard_kill_replaces_worker():
    # Atomics is deleted, so simulate a worker that ignores SIGALRM by stopping it.
    s = Sandbox(workers=1, timeout_s=0.3)
    try:
        (pid,) = s.worker_pids()
        assert s.evaluate([("a", "true")], context()) == [RuleOutcome("a", True, None)]
        os.kill(pid, 19)  # SIGSTOP: the worker cannot answer at all
        o = s.evaluate([("a", "true"), ("b", "false")], context())
        assert [x.matched for x in o] == [False, False]
        assert all("took longer than 0.3 s" in x.error for x in o)
        assert not alive(pid)
        (new_pid,) = s.worker_pids()
        assert new_pid != pid
        assert s.evaluate([("a", "true")], context()) == [RuleOutcome("a", True, None)]
    finally:
        s.close()
    assert not alive(new_pid)


def test_worker_death_is_reported_and_replaced():
    s = Sandbox(workers=1)
    try:
        (pid,) = s.worker_pids()
        os.kill(pid, 9)
        o = s.evaluate([("a", "true")], context())
        assert not o[0].matched and "rule 'a' not evaluated: the rule worker died" in o[0].error
        assert s.evaluate([("a", "true")], context()) == [RuleOutcome("a", True, None)]
    finally:
        s.close()


def test_worker_environment_is_clean(monkeypatch):
    monkeypatch.setenv("TEMPERED_SECRET_FOR_TEST", "s3cr3t")
    s = Sandbox(workers=1)
    try:
        (pid,) = s.worker_pids()
        s.evaluate([("a", "true")], context())  # make sure it is up
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert f.read() == b""
        with open(f"/proc/{pid}/limits") as f:
            line = next(li for li in f if li.startswith("Max address space"))
        assert str(256 * 1024 * 1024) in line
    finally:
        s.close()


def test_large_context(sb):
    members = [machine("master" if i < 3 else "worker", hostname=f"m{i}") for i in range(1000)]
    out = sb.evaluate(SEED_RULES[:4], context(machine(), members))
    assert [o.matched for o in out] == [True, False, False, True]


def test_facts_sent_as_json_text_are_parsed_when_read_and_frozen():
    """Members may carry `facts_json` (how admission sends 1000 members cheaply): rules see
    `m.facts` as usual, and cannot change it for the rules after them."""
    import json as _json

    members = [
        {"role": "worker", "disks": [], "gpus": [], "facts_json": _json.dumps({"processors": {"count": n}})}
        for n in (2, 8, 16)
    ]
    context = {"candidate": {"role": "", "disks": [], "gpus": [], "facts": {}}, "members": members, "quorumCount": 3}
    with Sandbox(workers=1) as sandbox:
        outcomes = sandbox.evaluate(
            [
                ("big", "members.filter(m => m.facts.processors.count >= 8).length == 2"),
                ("tamper", "(members[0].facts.processors.count = 99, true)"),
                ("after", "members[0].facts.processors.count == 2"),
                ("roles only", 'members.every(m => m.role == "worker")'),
            ],
            _json.dumps(context).encode(),
        )
    assert [(o.name, o.matched) for o in outcomes] == [("big", True), ("tamper", False), ("after", True), ("roles only", True)]
    assert "TypeError" in outcomes[1].error  # nested facts are frozen too
