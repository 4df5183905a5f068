// The JavaScript each rule worker runs, once per evaluation (activities/sandbox_worker.py
// calls this expression with (RULES, CHECK_ONLY, MAXLEN)).
//
// Before it runs, dukpy has parsed the context JSON into the global `dukpy`.
// `call_python` is the only way back to the host; the prelude captures it in a
// closure and deletes the global, so rules cannot reach it (strict-mode
// functions have no `caller`/`arguments` path to the prelude).  The host only
// answers the names "s" (rules start) and "r" (one rule's outcome).
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
