"""The workflows name their activities (workflows/calls.py) and `tempered worker` registers the
implementations (api/worker.py `activities_for`): nothing but these tests ties the two lists.

A name called but not registered leaves a machine's step scheduled forever; a result type that
differs from the implementation's is decoded into the wrong model (or a dict) in the workflow.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio import activity

from activities.sandbox import Sandbox
from activities.storage.settings import Settings
from api.worker import activities_for
from workflows import calls


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Callable]:
    """What the worker registers, by activity name (the constructors do no I/O)."""
    home: Path = tmp_path_factory.mktemp("home")
    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'tempered.db'}", temporal_address="127.0.0.1:1",
        temporal_namespace="default", temporal_ui_url="http://127.0.0.1:1", api_host="127.0.0.1",
        api_port=1, api_url="http://127.0.0.1:1",
    )
    sandbox = Sandbox(workers=1)
    try:
        functions = activities_for(settings, sandbox)
    finally:
        sandbox.close()
    # The SDK keeps the name given to @activity.defn on the function; it has no public getter.
    return {activity._Definition.must_from_callable(fn).name: fn for fn in functions}


def test_the_workflows_call_exactly_the_activities_the_worker_registers(registered):
    called = [call.name for call in calls.ALL]
    assert len(called) == len(set(called)), f"a name appears twice in workflows/calls.py ALL: {called}"
    assert set(called) == set(registered), (
        f"called, not registered: {sorted(set(called) - set(registered))}; "
        f"registered, never called: {sorted(set(registered) - set(called))}"
    )


@pytest.mark.parametrize("call", calls.ALL, ids=lambda call: call.name)
def test_each_call_expects_the_result_type_its_implementation_returns(registered, call):
    implementation = registered[call.name]
    returns = typing.get_type_hints(implementation)["return"]
    expected = type(None) if call.result is None else call.result
    assert returns == expected, f"{call.name}: the workflows decode {expected}, the activity returns {returns}"


@pytest.mark.parametrize("call", calls.ALL, ids=lambda call: call.name)
def test_each_implementation_takes_the_one_argument_the_workflows_pass(registered, call):
    hints = typing.get_type_hints(registered[call.name])
    arguments = [name for name in hints if name != "return"]
    assert len(arguments) == 1, f"{call.name} takes {arguments}; the workflows pass one argument"
