"""Both workflows have one shape: Update and Signal handlers validate, record and name a step;
only steps call activities (read from the source, so a handler that starts calling one fails)."""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

import pytest

from workflows import admission_ask, admission_queue, cluster, machine

HANDLER_DECORATORS = {"workflow.update", "workflow.signal"}
ACTIVITY_CALLS = {"execute_activity", "start_activity", "execute_local_activity", "start_local_activity"}


def _functions(module: ModuleType) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(inspect.getsource(module))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _is_handler(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(ast.unparse(d) in HANDLER_DECORATORS for d in function.decorator_list)


def _activities_called(function: ast.AST) -> list[str]:
    """`calls.<activity>` and `workflow.execute_activity(...)`-style uses inside `function`."""
    return [
        ast.unparse(n)
        for n in ast.walk(function)
        if isinstance(n, ast.Attribute)
        and ((isinstance(n.value, ast.Name) and n.value.id == "calls") or n.attr in ACTIVITY_CALLS)
    ]


@pytest.mark.parametrize(
    "module", [cluster, machine, admission_queue, admission_ask],
    ids=["cluster", "machine", "admission_queue", "admission_ask"],
)
def test_handlers_never_call_activities_and_steps_do(module: ModuleType):
    functions = _functions(module)
    if module is admission_ask:  # (its handlers only take answers; its step signals, no activity)
        assert all(not _activities_called(f) for f in functions)
        return
    handlers = {f.name: _activities_called(f) for f in functions if _is_handler(f)}
    steps = {f.name: _activities_called(f) for f in functions if not _is_handler(f)}
    assert len(handlers) >= (2 if module is admission_queue else 4), f"the test no longer finds {module.__name__}'s handlers"
    assert {name: used for name, used in handlers.items() if used} == {}
    assert any(steps.values()), f"no step of {module.__name__} calls an activity: the test reads the wrong code"


def test_the_cluster_handlers_that_did_work_now_name_steps():
    """admit, join_plan, member_ready and member_left hand their work to the step loop (and the
    newer delete and plan name theirs; join_plan and request_join_plan through `_plan`,
    request_admission through `_answer_queue`)."""
    functions = _functions(cluster) + _functions(admission_queue)
    helpers = {f.name for f in functions if not _is_handler(f) and "self._steps." in ast.unparse(f)}

    def names_a_step(function: ast.AST) -> bool:
        text = ast.unparse(function)
        return "self._steps." in text or any(f"self.{helper}(" in text for helper in helpers)

    named = {f.name for f in functions if _is_handler(f) and names_a_step(f)}
    assert named == {"admit", "join_plan", "member_ready", "member_left", "delete", "plan", "request_admission",
                     "request_join_plan", "close"}  # (close and delete: the queued asks are refused)
