"""A Terraform task's variables: Jinja2 templates over the cluster, its members and the other
tasks' outputs, rendered into Terraform's `TF_VAR_<name>` environment values.

The templates come from a cluster spec, which any operator may write: they render in Jinja2's
sandbox (no attribute of Python's internals is reachable) with StrictUndefined, so a name that
does not exist is an error naming the variable, never an empty string Terraform would accept.

The context (what `{{ ... }}` sees):
- `cluster`: the spec's fields (`cluster.name`, `cluster.pod_cidr`, ...) and
  `cluster.control_plane_endpoint` (the spec's, else the output a task maps onto it);
- `members`: a list of {name, address, role, machine_id, ready} (name: the node name);
- `tasks`: the other tasks of the cluster by name, each with its non-sensitive `outputs` as
  strings (`tasks.vip.outputs.endpoint`).

Values go to Terraform as environment variables, never in a file: a rendered string as it is
(Terraform parses it for a list or map variable: `{{ members | map(attribute='address') | list
| tojson }}`), any other value (a list or map in the spec, whose strings render too) as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from activities.domain.cluster import ClusterSpec, Member

# Terraform's identifiers: what a `variable "<name>"` block may be called.
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
MAX_PROBLEM = 300  # characters of a template's error kept in the message

MAX_VALUE = 64 * 1024  # characters of one rendered value: far below execve's 128 KiB per string
MAX_POWER_BITS = 4096  # bits of an integer `**` may make


class TooLarge(ValueError):
    """A template that would make more than a variable may hold."""


class LimitedSandbox(SandboxedEnvironment):
    """The sandbox, refusing the operators that make huge values in one step (Jinja's
    documented way: intercepted binary operators): `'a' * 10**7` or `[0] * 10**9` (repetition
    past MAX_VALUE), `10 ** 10 ** 9` (a huge integer). Output beyond MAX_VALUE is cut short by
    `render_limited`, so loops cannot build one either."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_VALUE:
                    raise TooLarge(f"repetition of {len(seq)} items {count} times is over {MAX_VALUE}")
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and abs(left).bit_length() * right > MAX_POWER_BITS:
                raise TooLarge(f"{left} ** {right} is too large")
        return super().call_binop(context, operator, left, right)


_ENVIRONMENT = LimitedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class VariableError(ValueError):
    """A variable that does not resolve: its name and the template's problem."""

    def __init__(self, name: str, problem: str) -> None:
        problem = problem if len(problem) <= MAX_PROBLEM else problem[:MAX_PROBLEM] + "..."
        super().__init__(f"variable {name!r} does not resolve: {problem}")
        self.name = name


def output_text(value: Any) -> str:
    """An output or variable value as one string: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def state_outputs(state: dict[str, Any]) -> dict[str, str]:
    """The non-sensitive outputs of a Terraform state (its JSON), as strings."""
    outputs = state.get("outputs") or {}
    return {
        name: output_text(out.get("value"))
        for name, out in outputs.items()
        if isinstance(out, dict) and not out.get("sensitive")
    }


def context(
    spec: ClusterSpec | None, cluster: str, members: list[dict[str, Any]], tasks: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """What the templates see. `tasks` maps a task's name to its outputs; `spec` None: the
    cluster's record is gone (a destroy after delete), only its name is known."""
    fields = spec.model_dump(mode="json", exclude={"terraform"}) if spec is not None else {"name": cluster}
    endpoint = fields.get("control_plane_endpoint")
    for task in spec.terraform if spec is not None and not endpoint else []:
        endpoint = endpoint or tasks.get(task.name, {}).get(task.outputs.get("control_plane_endpoint", ""))
    fields["control_plane_endpoint"] = endpoint
    return {
        "cluster": fields,
        "members": members,
        "tasks": {name: {"outputs": outputs} for name, outputs in tasks.items()},
    }


def member(m: Member, address: str | None) -> dict[str, Any]:
    """One member as the templates see it."""
    return {"name": m.node_name, "address": address or "", "role": m.role, "machine_id": m.machine_id, "ready": m.ready}


def syntax_error(template: str) -> str | None:
    """What is wrong with a template's syntax, in the environment that will render it (None: it
    parses): the API refuses a spec with such a variable before anything runs."""
    try:
        _ENVIRONMENT.parse(template)
    except TemplateSyntaxError as err:
        return f"{err.message} (line {err.lineno})"
    return None


def render_limited(template: str, ctx: dict[str, Any]) -> str:
    """One template's output, stopped as soon as it passes MAX_VALUE (a loop's output too)."""
    parts, size = [], 0
    for part in _ENVIRONMENT.from_string(template).generate(ctx):
        size += len(part)
        if size > MAX_VALUE:
            raise TooLarge(f"the value is larger than {MAX_VALUE} characters")
        parts.append(part)
    return "".join(parts)


def _render(value: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return render_limited(value, ctx)
    if isinstance(value, list):
        return [_render(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, ctx) for k, v in value.items()}
    return value


def render(variables: dict[str, Any], ctx: dict[str, Any]) -> dict[str, str]:
    """Every variable rendered: name -> the value of its TF_VAR_<name>. VariableError for the
    first that does not resolve (an undefined name, a syntax error, an unsafe access, a value
    over MAX_VALUE: Terraform could not even start with it). Blocking: call it in a thread."""
    rendered = {}
    for name, value in variables.items():
        if not VARIABLE_NAME.match(name):
            raise VariableError(name, "not a Terraform variable name (letters, digits, _ and -)")
        try:
            text = output_text(_render(value, ctx))
        except Exception as err:  # noqa: BLE001 - any template error is the operator's to fix, said so
            raise VariableError(name, f"{type(err).__name__}: {err}") from None
        if len(text) > MAX_VALUE:
            raise VariableError(name, f"TooLarge: the value is {len(text)} characters, over {MAX_VALUE}")
        rendered[name] = text
    return rendered


def environment(rendered: dict[str, str]) -> dict[str, str]:
    """The rendered variables as Terraform's environment variables."""
    return {f"TF_VAR_{name}": value for name, value in rendered.items()}
