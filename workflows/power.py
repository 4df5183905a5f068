"""PowerCommandWorkflow: one operator power command (`tempered machine power ID on|off|...`), id
`power:<machine_id>`.

A workflow rather than a direct call, so that the command runs where the machine's BMC is
reached: `power_target` (main queue) says the driver and the site, and `power_machine` is then
scheduled on the site's queue, served by `tempered worker --site NAME` next to the BMCs. The id
makes a second concurrent command on one machine a conflict (the API answers 409). A queue that
no worker serves is noticed after SCHEDULE_TO_START and said in operator terms. A manual machine
answers at once: no BMC to call, a person must act.

Deterministic code only: no I/O, clock, randomness or database here.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError as ActivityTimeout, TimeoutType

from workflows import calls

with workflow.unsafe.imports_passed_through():
    from activities.domain.power import PowerRequest, PowerResult, manual_answer, no_site_worker, site_queue

# A queue nobody polls: the command waits this long for a worker, then fails saying which to start.
SCHEDULE_TO_START = timedelta(minutes=2)
# An operator waits on the answer: one more attempt for a BMC that did not answer, not four.
OPERATOR_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=2)


def workflow_id(machine_id: str) -> str:
    return f"power:{machine_id}"


@workflow.defn
class PowerCommandWorkflow:
    @workflow.run
    async def run(self, request: PowerRequest) -> PowerResult:
        try:
            target = await calls.power_target(request.machine_id)
        except ActivityError as err:
            raise _failure(err, None) from None
        if target.reason:  # a BMC found without credentials: the operator can set them
            raise ApplicationError(target.reason, type="PowerSettingsIncomplete", non_retryable=True)
        if target.manual:
            return PowerResult(machine_id=request.machine_id, action=request.action, driver="manual",
                               state="unknown", answer=manual_answer(request.action))
        queue = {"task_queue": site_queue(target.site)} if target.site else {}
        try:
            return await calls.power_machine(
                request, schedule_to_start_timeout=SCHEDULE_TO_START, retry_policy=OPERATOR_RETRY, **queue
            )
        except ActivityError as err:
            raise _failure(err, target.site) from None


def _failure(err: ActivityError, site: str | None) -> ApplicationError:
    """The activity's own error (its type says refused or unreachable), or a missing worker."""
    cause = err.cause
    if isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return ApplicationError(no_site_worker(site), type="NoSiteWorker", non_retryable=True)
    if isinstance(cause, ApplicationError):
        return ApplicationError(cause.message, type=cause.type, non_retryable=True)
    return ApplicationError(str(cause or err), type="PowerFailed", non_retryable=True)
