"""Named timeouts and retry policies for every activity the workflows call, in one place.

A policy says how long one attempt may take, how often a stuck worker is noticed (heartbeat)
and how a failure is retried before the workflow parks the machine in `failed:<step>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy


def backoff(first_s: int, longest_s: int, attempts: int) -> RetryPolicy:
    """Exponential backoff (doubling) from `first_s` up to `longest_s`, `attempts` tries."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=first_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=longest_s),
        maximum_attempts=attempts,
    )


@dataclass(frozen=True)
class Policy:
    timeout: timedelta  # one attempt, start to close
    retry: RetryPolicy
    heartbeat: timedelta | None = None  # None: the activity is short and never waits

    def options(self) -> dict[str, Any]:
        return {"start_to_close_timeout": self.timeout, "heartbeat_timeout": self.heartbeat, "retry_policy": self.retry}


# A machine step (admission, render, retire): a database or a cluster Update away.
STEP = Policy(timedelta(minutes=2), backoff(1, 30, 5))
# Admission waits on the cluster's `admit` Update and heartbeats every second while it does.
ADMIT = Policy(timedelta(minutes=2), backoff(1, 30, 5), heartbeat=timedelta(seconds=5))
# The join plan may wait while another master joins (one at a time).
PLAN = Policy(timedelta(minutes=30), backoff(1, 30, 5), heartbeat=timedelta(seconds=30))
# kubeadm through Ansible: a node that does not answer is tried again; a failed task is not
# (the activity says so), and parks the machine for an operator.
KUBEADM = Policy(timedelta(minutes=30), backoff(5, 60, 6), heartbeat=timedelta(seconds=30))
# RFC 2136 updates: a DNS server that is down is waited for (the activities heartbeat each second).
DNS = Policy(timedelta(minutes=2), backoff(1, 60, 12), heartbeat=timedelta(seconds=15))
# Rules in the sandbox: a worker that died mid-evaluation is noticed in 10 s.
RULES = Policy(timedelta(minutes=1), RetryPolicy(maximum_attempts=5), heartbeat=timedelta(seconds=10))
# A cluster's admission batch: each machine's rules in turn (heartbeating per machine), so a batch of
# machines whose rules time out takes minutes; a dead worker is noticed in 10 s.
RULES_BATCH = Policy(timedelta(minutes=15), RetryPolicy(maximum_attempts=5), heartbeat=timedelta(seconds=10))
# Minting a join token or certificate key on a ready control-plane node, over SSH.
MINT = Policy(
    timedelta(minutes=5), RetryPolicy(maximum_interval=timedelta(seconds=30), maximum_attempts=3),
    heartbeat=timedelta(seconds=30),
)
# A short database read or write of a cluster's deletion: a worker killed meanwhile costs 30 s;
# a database that is down is waited for (0: no limit), the deletion has nothing else to do.
RECORD = Policy(timedelta(seconds=30), backoff(1, 60, 0))
# A member's decommission (drain, kubeadm reset, DNS, retire) as the cluster's deletion waits for it.
DECOMMISSION = Policy(timedelta(hours=4), backoff(5, 60, 5), heartbeat=timedelta(seconds=30))
# A Terraform run (init, plan, apply/destroy): a worker that died is noticed in 30 s and the run
# tried again a few times; Terraform's own errors arrive non-retryable (the runner says so), so a
# failed apply fails once, with Terraform's reason, and waits for an operator retry.
TERRAFORM = Policy(timedelta(minutes=30), backoff(5, 60, 3), heartbeat=timedelta(seconds=30))
# A command to a BMC: a Redfish power-on can take ~45 s; a BMC that is down is tried a few times;
# one that refuses (wrong credentials, an error answer) fails at once with its answer.
POWER = Policy(timedelta(minutes=3), backoff(5, 30, 4), heartbeat=timedelta(seconds=15))
# kubectl drain / uncordon / get node on a ready control-plane machine, over SSH (drain waits up to 5 min).
DRAIN = Policy(timedelta(minutes=10), backoff(5, 60, 4), heartbeat=timedelta(seconds=30))
# Waiting for a rebooted machine to come back ready (runtime OS, join): long, heartbeating; a worker
# killed meanwhile is noticed in 30 s and the wait resumes.
AWAIT = Policy(timedelta(hours=2), backoff(5, 60, 0), heartbeat=timedelta(seconds=30))
# Sending a member's `reboot` Update (activities/nodes.py): short, but it keeps the boot it saw in its
# heartbeat, so a retry after a lost worker knows whether the reboot happened; the heartbeat timeout
# makes that heartbeat reach the server (and a dead worker noticed) before the retry.
REBOOT = Policy(timedelta(seconds=60), backoff(2, 30, 5), heartbeat=timedelta(seconds=10))
