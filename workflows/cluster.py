"""ClusterWorkflow: one durable workflow per cluster, `cluster:<name>`.

It owns the member list and serialises admission: machines that finish discovery at the same
moment ask with a Signal and are admitted in batches, one batch at a time under a workflow lock
(workflows/admission_queue.py), so two of them can never both become master-prime. It also sequences the cluster's phases (forming -> bootstrapping -> ready): the
master-prime goes first, every other machine waits in holding until the control plane is up,
and is released then.

It owns the join credentials. Once the master-prime has run `kubeadm init` it has a bootstrap
token minted (sealed in the database; only its id and expiry are kept here) and renews it
`join_token_renew_before_s` before it expires. Each later master gets a fresh certificate key,
and control-plane joins go one at a time, as etcd membership changes should.

It has the machine workflow's shape (workflows/steps.py). Updates and Signals only validate
the event, record it and name the *step* it needs: an admission, a join plan's credentials, a
member change to act on, a token renewal. The main loop in `run()` starts every named step as
its own task; steps are the only code that calls activities. Many machines' rules are evaluated
side by side; the locks inside the steps keep one master-prime and one master join at a time.

Runs started before the loop (no `cluster-step-loop` marker) still run the steps inside the
handlers, so that they replay, until their next continue-as-new.

`delete` (DELETE /v1/clusters/{name}) runs the whole decommissioning as one step: the sequence
is in workflows/deletion.py; here are only its hooks (admissions refused while deleting).

`start_operation` starts a day-2 operation (rolling reboot, upgrade, scale down) as a child
workflow, one at a time (workflows/operation.py); the child signals its progress back
(`operation_progress`), kept as `ClusterStatus.operation`. A `delete` is refused while one runs.

Deterministic code only: no I/O, clock, randomness or database here.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from functools import partial
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import admission, admission_queue, calls, deletion, metadata, operation, operation_plan, search
from workflows.steps import Steps
from workflows import terraform_steps
from workflows.terraform_steps import TerraformSteps

with workflow.unsafe.imports_passed_through():
    from activities.domain.cluster import (
        CONTROL_PLANE_ROLES,
        ClusterStatus,
        CredentialsRequest,
        JoinCredentials,
        Member,
    )
    from activities.domain.dns import ApiNameDns
    from activities.domain.ids import machine_workflow_id, plural
    from activities.domain.machine import Admission, AdmitRequest, JoinPlan, JoinPlanRequest
    from activities.domain.operations import OperationRequest, OperationStatus
    from activities.domain.rules import RulesRequest, RulesVerdict
    from activities.domain.terraform import TaskStatus

CONTROL_PLANE = CONTROL_PLANE_ROLES
CREDENTIALS_RETRY_AFTER = timedelta(seconds=60)  # a failed renewal is tried again this soon
STEP_LOOP = "cluster-step-loop"  # the patch that moved the steps out of the handlers


@workflow.defn
class ClusterWorkflow(admission_queue.AdmissionQueue):
    @workflow.init
    def __init__(self, status: ClusterStatus) -> None:
        self.s = status
        self._admission = asyncio.Lock()
        self._minting = asyncio.Lock()
        self._reevaluating = asyncio.Lock()  # machines whose rules failed are re-evaluated one at a time
        self._rules_failed: set[str] = set()  # machine ids (not kept across continue-as-new)
        self._renewal: asyncio.TimerHandle | None = None  # when the join token is next looked at
        self._wake = False  # (steps run inline) the credentials loop must look again
        self._doing = metadata.Doing(self._show)  # what the steps are doing now, for the Web UI
        # Here, not in run(): handlers name steps, and an Update may be handled before run() starts.
        self._steps = Steps(inline=not workflow.patched(STEP_LOOP))
        self._terraform = TerraformSteps(self.s, self._show)
        self._deletion = deletion.Deletion(self.s, self._terraform, self._show)
        self._tasks_on = bool(self.s.spec.terraform) and workflow.patched(terraform_steps.PATCH)
        if self._tasks_on:
            self._terraform.init_tasks()

    @workflow.run
    async def run(self, status: ClusterStatus) -> ClusterStatus:
        workflow.upsert_search_attributes(search.updates(cluster=self.s.spec.name))
        self._show()
        renews = workflow.patched("join-credentials")  # (always, in runs with the step loop)
        if not self._steps.inline:
            self._steps.name(self._renew)
            if self._deleting():  # a deletion under way before a continue-as-new goes on
                self._steps.name(self._deletion.run)
            elif self._tasks_on:  # (tasks already applied are skipped)
                self._steps.name(partial(self._terraform.run_stage, "before-bootstrap"))
                if self.s.phase == "ready":
                    self._steps.name(partial(self._terraform.run_stage, "after-ready"))
            self._admit_queued_soon()  # asks carried over from the run before
            await self._steps.run_until(self._should_stop)
        elif renews:
            await self._keep_credentials()
        else:
            await workflow.wait_condition(self._should_stop)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self.s.closing:
            return self.s
        workflow.continue_as_new(self.s)

    def _should_stop(self) -> bool:
        return (
            self.s.closing
            or (self._deleting() and self._steps.inline)  # (the next run, with the step loop, deletes)
            or workflow.info().is_continue_as_new_suggested()
            or workflow.info().get_current_history_length() > self.s.continue_after_events
        )

    # ---- queries -------------------------------------------------------------------------

    @workflow.query
    def status(self) -> ClusterStatus:
        return self.s

    # ---- events from the machines --------------------------------------------------------

    @workflow.update
    async def admit(self, request: AdmitRequest) -> Admission:
        """Give a machine its role (idempotent) and say whether it must wait in holding. One
        machine at a time: the rules of the next one see this one's role. (For machine runs from
        before admission by Signal; newer ones signal `request_admission`: workflows/admission_queue.py.)"""
        doing = f"admitting {request.node_name or request.machine_id}"
        return await self._steps.ask(self._doing.step(doing, partial(self._admit, request)))

    @admit.validator
    def _admit_allowed(self, request: AdmitRequest) -> None:
        if self.s.closing or self._deleting():
            raise ApplicationError(f"cluster {self.s.spec.name} is being deleted", non_retryable=True)
        if request.cluster != self.s.spec.name:
            raise ApplicationError(f"machine asked cluster {request.cluster}, this is {self.s.spec.name}")

    @workflow.update
    async def join_plan(self, request: JoinPlanRequest) -> JoinPlan:
        """How a machine joins (for machine runs from before `request_join_plan`)."""
        return await self._plan(request)

    async def _plan(self, request: JoinPlanRequest) -> JoinPlan:
        """How a machine joins: the master-prime inits (until it has once), a machine that is a
        member already rejoins, every other joins with a token, and a master with a fresh
        certificate key, one master at a time."""
        spec = self.s.spec
        if spec.join_method == "external":
            return JoinPlan(method="external")
        member = self._member(request.machine_id)
        if member is None:
            raise ApplicationError(f"{request.machine_id} is not a member of cluster {spec.name}", non_retryable=True)
        if self._tasks_on and member.role == "master-prime" and self.s.initialised_by is None:
            await workflow.wait_condition(lambda: self._terraform.stage_done("before-bootstrap") or self._deleting())
            if self._deleting():
                raise ApplicationError(f"cluster {spec.name} is being deleted", non_retryable=True)
        plan = JoinPlan(role=member.role, endpoint=terraform_steps.endpoint(self.s), prime=self._prime(),
                        kubernetes_version=spec.kubernetes_version)  # an upgrade operation sets it here
        if member.ready and not request.is_new:
            plan.action = "rejoin"
            return plan
        if member.role == "master-prime" and self.s.initialised_by is None:
            plan.action = "init"
            return plan
        doing = f"join credentials for {member.node_name or member.machine_id}"
        return await self._steps.ask(self._doing.step(doing, partial(self._join_credentials, member, plan)))

    @join_plan.validator
    def _join_plan_allowed(self, request: JoinPlanRequest) -> None:
        if request.cluster != self.s.spec.name:
            raise ApplicationError(f"machine asked cluster {request.cluster}, this is {self.s.spec.name}")

    @workflow.signal
    def join_ended(self, machine_id: str) -> None:
        """A machine's kubeadm run is over (joined or failed): the next master may go."""
        self._end_master_join(machine_id)

    @workflow.signal
    async def member_ready(self, machine_id: str) -> None:
        member = self._member(machine_id)
        if member is None:
            return
        member.ready = True
        self._end_master_join(machine_id)
        if member.role == "master-prime" and self.s.initialised_by is None:
            self.s.initialised_by = machine_id
            self._renew_now()  # mint the first join token before the held machines come back
        release = self._update_phase() == "ready"
        if release and self._tasks_on and not self._terraform.stage_done("after-ready"):
            self._steps.name(partial(self._terraform.run_stage, "after-ready"))
        await self._steps.tell(partial(self._members_changed, release, member.role in CONTROL_PLANE))

    @workflow.signal
    async def member_left(self, machine_id: str) -> None:
        leaving = self._member(machine_id)
        self.s.members = [m for m in self.s.members if m.machine_id != machine_id]
        self.s.held = [h for h in self.s.held if h != machine_id]
        self.s.admission_queue = [a for a in self.s.admission_queue if a.machine_id != machine_id]  # (not admitted now)
        self._end_master_join(machine_id)
        self._update_phase()
        if self._deleting():
            self._deletion.member_left(machine_id)
            return  # api.<cluster> is removed at the end, not republished on the way
        if leaving is not None and leaving.ready and leaving.role in CONTROL_PLANE:
            await self._steps.tell(partial(self._members_changed, False, True))

    # ---- operator requests ---------------------------------------------------------------

    @workflow.update
    def close(self) -> ClusterStatus:
        """End the cluster workflow (the API deletes the cluster only when it has no members)."""
        self.s.closing = True
        self._admit_queued_soon()  # (refused: the cluster is closing)
        self._show()
        return self.s

    @close.validator
    def _close_allowed(self) -> None:
        if self._deleting():  # the deletion ends the workflow itself, once everything is undone
            raise ApplicationError(f"cluster {self.s.spec.name} is being deleted", type="TransitionNotAllowed",
                                   non_retryable=True)
        if self.s.members:
            names = ", ".join(m.machine_id for m in self.s.members[:5])
            raise ApplicationError(
                f"cluster {self.s.spec.name} still has {plural(len(self.s.members), 'member')} ({names}): "
                "decommission them first",
                type="TransitionNotAllowed",
                non_retryable=True,
            )

    @workflow.update
    def delete(self) -> ClusterStatus:
        """Start the cluster's deletion (workflows/deletion.py) and answer at once; while it runs
        the same Update answers its progress (it never starts a second one)."""
        if not self._deleting() and workflow.patched(deletion.PATCH):
            deletion.begin(self.s)
            self._show()
            if not self._steps.inline:  # (an inline run continues as new first: see _should_stop)
                self._steps.name(self._deletion.run)
            self._admit_queued_soon()  # (refused: the cluster is being deleted)
        return self.s

    @delete.validator
    def _delete_allowed(self) -> None:
        if self.s.closing and not self._deleting():
            raise ApplicationError(f"cluster {self.s.spec.name} is closed", type="TransitionNotAllowed",
                                   non_retryable=True)
        if (op := operation_plan.running(self.s)) is not None and not self._deleting():
            then = f"abort it first: tempered cluster operation {self.s.spec.name} abort"
            raise ApplicationError(operation_plan.busy_message(self.s.spec.name, op, then),
                                   type="TransitionNotAllowed", non_retryable=True)

    # ---- day-2 operations (workflows/operation.py) ----------------------------------------

    @workflow.update
    async def start_operation(self, request: OperationRequest) -> OperationStatus:
        """Start a rolling reboot, an upgrade or a scale down as a child workflow; one at a time."""
        workflow.patched(operation_plan.PATCH)
        try:
            return await operation.begin(self.s, request)
        finally:
            self._show()

    @start_operation.validator
    def _start_operation_allowed(self, request: OperationRequest) -> None:
        operation_plan.check(self.s, request)

    @workflow.signal
    def operation_progress(self, status: OperationStatus) -> None:
        """The operation's latest status (its workflow signals every change)."""
        if self.s.operation is None or self.s.operation.workflow_id == status.workflow_id:
            self.s.operation = status
            self._show()

    @workflow.update
    def retry(self) -> ClusterStatus:
        """An operator retry: the failed Terraform task runs again and, during a deletion, the
        members whose decommission failed are asked again."""
        if self._deleting():
            self._deletion.retry()
        else:
            self._terraform.retry()
        self._show()
        return self.s

    @retry.validator
    def _retry_allowed(self) -> None:
        decommission_failed = self._deleting() and bool(self.s.deletion.failed)
        if terraform_steps.failed_task(self.s) is None and not decommission_failed:
            raise ApplicationError(
                f"nothing to retry: cluster {self.s.spec.name} has no failed Terraform task or decommission",
                type="TransitionNotAllowed", non_retryable=True,
            )

    @workflow.update
    async def plan(self, task: str) -> TaskStatus:
        """A dry run of one task (terraform plan); its summary becomes the task's last_plan."""
        return await self._steps.ask(self._doing.step(f"planning {task}", partial(self._terraform.plan, task)))

    @plan.validator
    def _plan_allowed(self, task: str) -> None:
        self._terraform.task(task)  # an unknown task is refused

    # ---- steps: admission ----------------------------------------------------------------

    async def _admit(self, request: AdmitRequest) -> Admission:
        if workflow.patched("admission-rules-outside-the-lock"):
            return await self._admit_outside_the_lock(request)
        async with self._admission:  # (runs from before: rules under the lock, or no rules at all)
            member, role = self._known(request)
            if workflow.patched("rules"):  # (this older path never asked for a heartbeat)
                member, role, verdict = await self._evaluate(request, heartbeat_timeout=None)
                if verdict.errors:
                    return admission.held_by_rules(role, verdict.errors)
                role = role or verdict.role
            return self._commit(request, member, role)

    async def _admit_outside_the_lock(self, request: AdmitRequest) -> Admission:
        """Rules run outside the admission lock, so a rule that times out for one machine never
        stalls the others; the verdict is committed under the lock only if the members the rules
        saw are still the members (else they run again, under the lock: two machines can never
        both become master-prime). A verdict that holds the machine changes no member and needs
        no lock. Machines whose rules failed before are re-evaluated one at a time (a rules save
        releases them all at once), leaving the sandbox to machines that are new."""
        lane = self._reevaluating if request.machine_id in self._rules_failed else contextlib.nullcontext()
        async with lane:
            seen = admission.roles(self.s.members)
            member, role, verdict = await self._evaluate(request)
        if verdict.errors:
            return self._held_by_rules(request.machine_id, role, verdict)
        async with self._admission:
            if self.s.closing or self._deleting():  # `close` or `delete` was accepted while the rules ran
                raise ApplicationError(f"cluster {self.s.spec.name} is being deleted", non_retryable=True)
            if verdict.has_rules and admission.roles(self.s.members) != seen:
                member, role, verdict = await self._evaluate(request)
                if verdict.errors:
                    return self._held_by_rules(request.machine_id, role, verdict)
            member = self._member(request.machine_id)  # as it is now, under the lock
            self._rules_failed.discard(request.machine_id)
            return self._commit(request, member, member.role if member else (role or verdict.role))

    def _known(self, request: AdmitRequest) -> tuple[Member | None, str]:
        """The machine as a member (if it is one) and the role it keeps."""
        member = self._member(request.machine_id)
        return member, member.role if member else (request.role if (request.role and not request.is_new) else "")

    async def _evaluate(self, request: AdmitRequest, **options: Any) -> tuple[Member | None, str, RulesVerdict]:
        """The machine as a member (if it is one), the role it keeps, and what the rules say."""
        member, role = self._known(request)
        verdict = await calls.evaluate_rules(
            RulesRequest(
                cluster=self.s.spec.name, machine_id=request.machine_id, is_new=request.is_new and member is None,
                role=role, members=self.s.members, node_name=request.node_name,
            ),
            **options,
        )
        return member, role, verdict

    def _held_by_rules(self, machine_id: str, role: str, verdict: RulesVerdict) -> Admission:
        self._rules_failed.add(machine_id)
        return admission.held_by_rules(role, verdict.errors)

    def _commit(self, request: AdmitRequest, member: Member | None, role: str) -> Admission:
        """Make the machine a member (with `role`, or the built-in policy's) unless it is one."""
        if member is None:
            role = role or admission.assign_role(self.s.members, self.s.spec.quorum_count)
            member = Member(machine_id=request.machine_id, role=role, node_name=request.node_name)
            self.s.members.append(member)
            self._update_phase()
        return self._verdict(member)

    def _verdict(self, member: Member) -> Admission:
        if member.role == "master-prime" or self.s.phase == "ready":
            self.s.held = [h for h in self.s.held if h != member.machine_id]
            return Admission(role=member.role)
        if member.machine_id not in self.s.held:
            self.s.held.append(member.machine_id)
        return admission.held_for_control_plane(member.role, self.s.members)

    # ---- steps: members and the API name -------------------------------------------------

    async def _members_changed(self, release: bool, publish: bool) -> None:
        """The control plane is up: the held machines are asked again; api.<cluster> follows
        the ready control plane."""
        if release:
            with self._doing.busy("releasing the held machines"):
                await self._release_held()
        if publish:
            with self._doing.busy(f"publishing api.{self.s.spec.name}"):
                await self._publish_api_name()

    async def _release_held(self) -> None:
        held, self.s.held = self.s.held, []
        for machine_id in held:
            handle = workflow.get_external_workflow_handle(machine_workflow_id(machine_id))
            try:
                await handle.signal("release")
            except Exception as err:  # a machine decommissioned meanwhile
                workflow.logger.warning("could not release %s: %s", machine_id, err)

    async def _publish_api_name(self) -> None:
        """A DNS failure is shown, not fatal."""
        if not workflow.patched("dns-api-name"):
            return
        ready = admission.ready_control_plane(self.s.members)
        try:
            self.s.dns = await calls.publish_api_name(ApiNameDns(cluster=self.s.spec.name, machine_ids=ready))
        except ActivityError as err:
            self.s.dns = f"API name not published: {err.cause or err}"
            workflow.logger.warning("cluster %s: %s", self.s.spec.name, self.s.dns)

    def _update_phase(self) -> str:
        if not self._deleting():
            self.s.phase = admission.phase(self.s.members)
        self._show()
        return self.s.phase

    # ---- steps: join credentials ---------------------------------------------------------

    async def _join_credentials(self, member: Member, plan: JoinPlan) -> JoinPlan:
        """Once the control plane is up: a join token (minted if due) and, for a master, a fresh
        certificate key under the master lease."""
        await workflow.wait_condition(lambda: self.s.phase == "ready" or self.s.closing or self._deleting())
        if self.s.closing or self._deleting():
            raise ApplicationError(f"cluster {self.s.spec.name} is being deleted", non_retryable=True)
        if member.role in CONTROL_PLANE:
            await self._take_master_lease(member.machine_id)
        try:
            if self._renew_in() <= timedelta(0):
                await self._mint(token=True)
            plan.credentials = self.s.credentials.model_copy()
            if member.role in CONTROL_PLANE:
                key = await self._mint(certificate_key=True)
                plan.credentials.certificate_key_id = key.certificate_key_id
        except ActivityError as err:
            self._end_master_join(member.machine_id)
            raise ApplicationError(f"no join credentials: {err.cause or err}", non_retryable=True) from err
        return plan

    async def _take_master_lease(self, machine_id: str) -> None:
        """One master joins at a time. Every waiter whose condition holds is woken in the same
        pass, so two masters waiting for a free lease (both waiting for the prime, say) would both
        take it and both mint a certificate key: the first one's key is then no longer the one
        uploaded. So the lease is checked again on waking, and taken with no await in between."""
        free = lambda: self.s.master_joining in (None, machine_id)  # noqa: E731
        await workflow.wait_condition(free)
        if workflow.patched("master-lease-rechecked"):
            while not free():
                await workflow.wait_condition(free)
        self.s.master_joining = machine_id

    def _end_master_join(self, machine_id: str) -> None:
        if self.s.master_joining == machine_id:
            self.s.master_joining = None

    async def _renew(self) -> None:
        """The renewal step: mint a join token if it is due, and look again when it next is (a
        timer, which names this step again; at least a second away, so never a busy loop)."""
        if self._renewal is not None:
            self._renewal.cancel()  # (nothing, once it has fired)
            self._renewal = None
        wait = None if self._should_stop() else await self._renew_if_due()
        if wait is not None:
            if self._renewal is not None:  # another renewal ran meanwhile: one timer chain only
                self._renewal.cancel()
            delay = max(wait.total_seconds(), 1.0)
            self._renewal = asyncio.get_running_loop().call_later(delay, self._steps.name, self._renew)

    def _renew_now(self) -> None:
        """The control plane came up: the join token is minted at once."""
        if self._steps.inline:
            self._wake = True
        else:
            self._steps.name(self._renew)

    async def _keep_credentials(self) -> None:
        """(Runs from before the step loop) until the workflow stops: keep a valid join token."""
        while not self._should_stop():
            wait = await self._renew_if_due()
            self._wake = False
            try:
                await workflow.wait_condition(lambda: self._wake or self._should_stop(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    async def _renew_if_due(self) -> timedelta | None:
        """While the control plane is up, mint a join token if the current one is due; how long
        until it is next due (None: until something changes)."""
        if not (self.s.phase == "ready" and self.s.initialised_by and self._mints_tokens()):
            return None
        wait = self._renew_in()
        if wait > timedelta(0):
            return wait
        try:
            await self._mint(token=True)
            return self._renew_in()
        except ActivityError as err:
            self.s.credentials_error = f"join token not renewed: {err.cause or err}"
            self._show()
            workflow.logger.warning("cluster %s: %s", self.s.spec.name, self.s.credentials_error)
            return CREDENTIALS_RETRY_AFTER

    def _mints_tokens(self) -> bool:
        """An external join brings its own credentials: nothing is minted over SSH for it."""
        return self.s.spec.join_method != "external" or not workflow.patched("external-join-mints-no-tokens")

    def _renew_in(self) -> timedelta:
        return admission.renew_in(self.s.credentials, self.s.spec.join_token_renew_before_s, workflow.now())

    async def _mint(self, token: bool = False, certificate_key: bool = False) -> JoinCredentials:
        """Have a ready control-plane machine register a new token and/or certificate key."""
        ready = admission.ready_control_plane(self.s.members)
        ready.sort(key=lambda m: m != self.s.initialised_by)
        what = " and ".join(n for n, wanted in (("join token", token), ("certificate key", certificate_key)) if wanted)
        with self._doing.busy(f"minting a {what}"):
            async with self._minting:
                minted = await calls.mint_join_credentials(
                    CredentialsRequest(
                        cluster=self.s.spec.name, control_plane=ready, token=token, certificate_key=certificate_key,
                        token_ttl_s=self.s.spec.join_token_ttl_s,
                    )
                )
            if token:
                self.s.credentials = minted.model_copy(update={"certificate_key_id": None})
                self.s.credentials_error = ""
        return minted

    # ---- helpers -------------------------------------------------------------------------

    def _show(self) -> None:
        """The Web UI's current details (not a history command: replay is unaffected)."""
        details = metadata.cluster_details(self.s, self._doing.operations, metadata.api_url(workflow.memo()))
        workflow.set_current_details(details)

    def _deleting(self) -> bool:
        return self.s.deletion is not None

    def _prime(self) -> str | None:
        return self.s.initialised_by or next((m.machine_id for m in self.s.members if m.role == "master-prime"), None)

    def _member(self, machine_id: str) -> Member | None:
        return next((m for m in self.s.members if m.machine_id == machine_id), None)
