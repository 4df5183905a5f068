"""The worker's workflow side (api/worker.py): the tuning it hands the SDK comes from the
settings, and the workflow modules' bytecode is cached in its home when the environment says
not to write it next to the sources (the sandbox imports them afresh for every workflow)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from temporalio.worker import PollerBehaviorSimpleMaximum

from activities.storage.settings import load
from api import worker


def test_the_tuning_follows_the_settings():
    settings = replace(load(), worker_workflow_pollers=12, worker_workflow_tasks=16,
                       worker_cached_workflows=3000)
    tuning = worker.workflow_tuning(settings)
    assert tuning["workflow_task_poller_behavior"] == PollerBehaviorSimpleMaximum(12)
    assert (tuning["max_concurrent_workflow_tasks"], tuning["max_cached_workflows"]) == (16, 3000)
    # half the pollers on the task queue: the SDK's ratio is the task queue's share of them all
    # (1.0 left the sticky queue one poller, and every cached workflow's task timed out there)
    assert tuning["nonsticky_to_sticky_poll_ratio"] == 0.5


def test_bytecode_goes_to_the_home_when_not_written_by_the_sources(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    worker.cache_bytecode(replace(load(), home=tmp_path))
    assert (sys.dont_write_bytecode, sys.pycache_prefix) == (False, str(tmp_path / "pycache"))
    assert (tmp_path / "pycache").is_dir()


def test_bytecode_is_left_alone_when_python_writes_it(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    worker.cache_bytecode(replace(load(), home=tmp_path))
    assert sys.pycache_prefix is None and not (tmp_path / "pycache").exists()
