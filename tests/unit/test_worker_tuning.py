"""The worker's workflow side (api/worker.py): the tuning it hands the SDK comes from the
settings, and the project's workflow modules pass through the sandbox (imported once, not once
per workflow)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from temporalio.worker import PollerBehaviorSimpleMaximum

from activities.storage.settings import load
from api import worker


def test_the_tuning_follows_the_settings():
    settings = replace(load(), worker_workflow_pollers=12, worker_workflow_tasks=16,
                       worker_cached_workflows=3000, worker_sticky_timeout_s=7)
    tuning = worker.workflow_tuning(settings)
    assert tuning["workflow_task_poller_behavior"] == PollerBehaviorSimpleMaximum(12)
    assert (tuning["max_concurrent_workflow_tasks"], tuning["max_cached_workflows"]) == (16, 3000)
    assert tuning["sticky_queue_schedule_to_start_timeout"] == timedelta(seconds=7)
    # half the pollers on the task queue: the SDK's ratio is the task queue's share of them all
    # (1.0 left the sticky queue one poller, and every cached workflow's task timed out there)
    assert tuning["nonsticky_to_sticky_poll_ratio"] == 0.5


def test_the_workflow_modules_pass_through_the_sandbox():
    restrictions = worker.RUNNER.restrictions
    assert "workflows" in restrictions.passthrough_modules  # (and so every workflows.* module)
    assert not restrictions.passthrough_all_modules  # everything else stays sandboxed
