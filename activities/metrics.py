"""The worker's own Prometheus metrics, measured inside the activities.

They live in the default registry of the worker process; `tempered worker` serves it (with the
Temporal SDK's metrics and the machines gauge) on TEMPERED_WORKER_METRICS (README, Metrics).
Labels are bounded: activity names, outcomes, DNS view names, playbooks; never a machine id
or a MAC, which would make one series per machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

# Seconds: a step takes from milliseconds (a DNS update) to many minutes (a kubeadm join).
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RULE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

STEP_SECONDS = Histogram(
    "tempered_step_duration_seconds",
    "Time of one activity attempt (a lifecycle step), by activity type and outcome",
    ["activity", "outcome"],
    buckets=STEP_BUCKETS,
)
RULE_SECONDS = Histogram(
    "tempered_rule_evaluation_seconds",
    "Time of one sandboxed evaluation of a cluster's enabled rules for one machine, by result",
    ["result"],
    buckets=RULE_BUCKETS,
)
DNS_UPDATES = Counter(
    "tempered_dns_updates_total",
    "DNS UPDATE messages sent to a server, by view and result (ok, refused, unavailable)",
    ["view", "result"],
)
ANSIBLE_SECONDS = Histogram(
    "tempered_ansible_run_seconds",
    "Time of one ansible-playbook run, by playbook and ansible-runner status",
    ["playbook", "status"],
    buckets=STEP_BUCKETS,
)


@contextmanager
def counted(counter: Counter, results: dict[type[BaseException], str], **labels: str) -> Iterator[dict[str, str]]:
    """Count the block in `counter` with result "ok", the result the block sets in the dict it
    is given (an answer that says no without raising), or the result `results` names for the
    exception it raised ("error" for any other)."""
    found = {"result": "ok"}
    try:
        yield found
    except BaseException as err:
        found["result"] = next((name for kind, name in results.items() if isinstance(err, kind)), "error")
        raise
    finally:
        counter.labels(result=found["result"], **labels).inc()


@contextmanager
def timed(histogram: Histogram, **labels: str) -> Iterator[dict[str, str]]:
    """Observe the block's duration in `histogram`; the block may change the labels it yields
    (e.g. the result, known only at the end). An exception is observed as result "error"."""
    found = dict(labels)
    started = time.monotonic()
    try:
        yield found
    except BaseException:
        found = {name: ("error" if name in ("result", "status", "outcome") else value) for name, value in found.items()}
        raise
    finally:
        histogram.labels(**found).observe(time.monotonic() - started)
