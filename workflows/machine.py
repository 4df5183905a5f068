"""MachineWorkflow: one durable workflow per machine, `machine:<identity>`.

The workflow is a state machine. Outside events arrive as Updates and Signals (a PXE contact
from a boot edge, facts reported by the discovery agent, cloud-init's phone home, a join result,
operator requests); handlers only validate the event, move the state and, where work must be
done, name the next *step*. The main loop runs steps, which are the only places that call
activities. A step that still fails after its retry policy parks the machine in
`failed:<step>` with the reason, until an operator retries it.

Every boot bumps an epoch: a step that was started before the machine rebooted (or was
reprovisioned) finishes without applying its result, so a stale answer never overwrites what
the machine is doing now. A reboot asked by an operator bumps it too.

Reboot, reprovision and decommission use the machine's power (the `power` step,
workflows/power_steps.py): a BMC that refuses parks the machine in `failed:power`, and a PXE
contact there does what it does in `power_from`, the state the power step began in.

Deterministic code only: no I/O, clock, randomness or database here.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import admission_ask, calls, metadata, power_steps, search

with workflow.unsafe.imports_passed_through():
    from activities.domain.dns import NodeDns
    from activities.domain.ids import cluster_workflow_id
    from activities.domain.lifecycle import (  # the states and their sets: the lifecycle table
        ADMIT, BOOT_1, BOOT_2, DECOMMISSION, DECOMMISSIONED, DECOMMISSIONING, DISCOVER, DNS, HELD, HOLDING, JOIN,
        JOIN_CLUSTER, NEW, PHONED_HOME, POST_BOOT_2, POST_DISCOVER, POWER, READY, REBOOT, REFUSE, RENDER,
        TAKES_FACTS, failed, stage,
    )
    from activities.domain.machine import (
        AdmitRequest, BootInstruction, BootRequest, DecommissionRequest, FactsReport, JoinPlan, JoinPlanRequest,
        JoinRequest, JoinResult, MachineStatus, RenderRequest, StateRecord, Transition,
    )

HISTORY_KEPT = 20
# A failed step is written to the copy of states that lists read (activities/storage/machinestate.py):
# one short activity, on the failure path only (a lifecycle that succeeds costs no more actions).
FAILURE_LISTED = "failure-listed"


def _reject(message: str) -> ApplicationError:
    """An Update refused in the current state: the API turns it into a 409."""
    return ApplicationError(message, type="TransitionNotAllowed", non_retryable=True)


@workflow.defn
class MachineWorkflow(power_steps.MachinePower, admission_ask.MachineAdmission):
    @workflow.init
    def __init__(self, status: MachineStatus) -> None:
        self.s = status
        self._step: str | None = None
        self._epoch = 0
        self._join: JoinResult | None = None
        self._join_summary = "joined the cluster"
        self._reboot = False
        self._finished = False
        self._blocked = False  # held for a reason only new facts can clear (preflight, identity)
        self._facts_taken: tuple[int, str] | None = None  # (boot, digest) of the facts last taken
        self._retired = "retired"  # what a decommission's retire work did, for its final reason
        self._held_reason = ""  # why a held machine was held, before its reboot said otherwise
        self._powering = False  # the power step is running (a reboot meanwhile is refused)
        if not self.s.history:  # here, not in run(): update-with-start runs its Update first
            # (published by whichever comes next in this first task: the Update or run())
            self._move(self.s.state, "first seen", publish=not self._fewer_actions())

    @workflow.run
    async def run(self, status: MachineStatus) -> MachineStatus:
        self._publish()
        while True:
            await workflow.wait_condition(
                lambda: self._step is not None or self._reboot or self._finished
                or workflow.info().is_continue_as_new_suggested()
            )
            if self._step is not None:
                step, self._step = self._step, None
                await self._run_step(step)
            if self._finished:
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self.s
            if self._reboot or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._step is None:
                    workflow.continue_as_new(self.s)

    @workflow.query
    def status(self) -> MachineStatus:
        return self.s

    # ---- events from the machine ---------------------------------------------------------

    @workflow.update
    def pxe_boot(self, request: BootRequest) -> BootInstruction:
        """A boot edge saw this machine PXE boot: answer what it must boot now."""
        self.s.mac = self.s.mac or request.mac.lower()
        self.s.ip = request.ip or self.s.ip
        where = stage(self.s.state, self.s.power_from)  # the lifecycle table says what this contact boots
        if where == REFUSE:
            return self._instruction("refuse", "this machine is being decommissioned")
        rebooted_held = where == HELD and self.s.power_from is not None  # a reboot an operator asked for
        self._begin_boot()
        if where == REBOOT:  # a node rebooted: the cycle starts again, and it is no longer new
            self.s.is_new = False
            self._reboot = True
            self._move(BOOT_1, "rebooted from ready")
        elif where == HELD:
            if rebooted_held:
                self._held_again()
            return self._instruction("discovery", self.s.reason)
        else:
            assert where.then is not None  # only the held and refused stages stay where they are
            self._move(where.then)
        return self._instruction(where.boots)

    @workflow.update
    def facts_reported(self, report: FactsReport) -> MachineStatus:
        """The discovery agent stored this boot's facts: ask the cluster for a role, unless the
        facts show an identity conflict or hardware below the cluster's preflight. A repeat of
        this boot's facts (its agent retrying after a lost answer) changes nothing."""
        if self._facts_repeat(report) and (self.s.state not in TAKES_FACTS or workflow.patched("facts-repeat-answered")):
            return self.s  # (outside TAKES_FACTS no old history holds a repeat: no patch needed there)
        self.s.facts_digest = report.digest
        self._facts_taken = (report.boot, report.digest)
        self._blocked = bool(report.conflict or report.below_preflight)
        if report.conflict:
            self._move(HOLDING, f"identity conflict: {report.conflict} (resolve it, then reboot the machine)")
        elif report.below_preflight:
            self._move(HOLDING, f"below preflight: {'; '.join(report.below_preflight)}")
        else:
            drift = f"; changed since the last boot: {'; '.join(report.drift)}" if report.drift else ""
            self._move(DISCOVER, f"facts received{drift}")
            self._step = ADMIT
        return self.s

    @facts_reported.validator
    def _facts_allowed(self, report: FactsReport) -> None:
        if report.boot != self.s.boot:
            raise _reject(f"these facts are for boot {report.boot}; the machine is on boot {self.s.boot}")
        if not self._facts_repeat(report) and self.s.state not in TAKES_FACTS:
            raise _reject(f"not expecting facts while {self.s.state}")

    @workflow.update
    def phoned_home(self) -> MachineStatus:
        """cloud-init in the runtime OS has its user-data: start joining the cluster. A repeat
        (the API let only this boot's token through) answers the status and changes nothing."""
        if self.s.state != BOOT_2 and workflow.patched("phone-home-repeat-answered"):
            return self.s
        self._move(POST_BOOT_2, "cloud-init phoned home")
        self._step = JOIN
        return self.s

    @phoned_home.validator
    def _phone_home_allowed(self) -> None:
        if self.s.state not in (BOOT_2, *PHONED_HOME):
            raise _reject(f"not expecting a phone home while {self.s.state}")

    @workflow.update
    def join_finished(self, result: JoinResult) -> MachineStatus:
        """The join step's outcome (kubeadm through Ansible). A repeat of the outcome already
        taken (its sender retrying after a lost answer) answers the status and changes nothing."""
        if result == self._join and self.s.state != JOIN_CLUSTER and workflow.patched("join-result-repeat-answered"):
            return self.s
        self._join = result
        return self.s

    @join_finished.validator
    def _join_allowed(self, result: JoinResult) -> None:
        if result != self._join and self.s.state != JOIN_CLUSTER:
            raise _reject(f"not joining a cluster while {self.s.state}")

    # ---- events from the cluster ---------------------------------------------------------

    @workflow.signal
    def release(self) -> None:
        """The cluster can take this held machine now: ask it again (or, asking now, remember it)."""
        self._release_while_asking()
        self._admit_if_held()

    # ---- operator requests ---------------------------------------------------------------

    @workflow.update
    def assign(self, cluster: str) -> MachineStatus:
        """Put an unassigned machine into a cluster (a held one is admitted at once)."""
        self.s.cluster = cluster
        self._publish()
        self._admit_if_held()
        return self.s

    @assign.validator
    def _assign_allowed(self, cluster: str) -> None:
        if self.s.cluster not in (None, cluster):
            raise _reject(f"already in cluster {self.s.cluster!r}; decommission it first")

    @workflow.update
    def retry(self) -> MachineStatus:
        """Run the failed step again. A failed render goes back through admission, so rules
        fixed since (includes, kargs, variables, labels) are evaluated again before rendering."""
        self._step = self.s.failed_step
        if self._step == RENDER and workflow.patched("retry-render-readmits"):
            self._step = ADMIT
        self.s.failed_step = None
        return self.s

    @retry.validator
    def _retry_allowed(self) -> None:
        if not self.s.failed_step:
            raise _reject(f"nothing to retry: the machine is {self.s.state}, not failed")

    @workflow.update
    def reboot(self) -> MachineStatus:
        """Power-cycle the machine (or ask a person to): its PXE contact then goes round again as
        any reboot does. Answered at once; the `power` step runs the cycle."""
        self._reboot_power()
        return self.s

    @reboot.validator
    def _reboot_allowed(self) -> None:
        if refused := self._reboot_refused():
            raise _reject(refused)

    @workflow.update
    async def reprovision(self) -> MachineStatus:
        """Mark the machine new: on its next boot it is discovered, assigned and wiped again. With
        power control, that boot is brought about: a one-time PXE boot, then a power cycle."""
        had_role = bool(self.s.role)
        self._begin_boot()
        self.s.is_new, self.s.role = True, ""
        self.s.kube_node = False  # its disk is wiped on the next boot
        self._move(NEW, "reprovision requested: PXE boot the machine")
        self._power_from(NEW, power_steps.REPROVISION, "reprovision requested: setting a one-time PXE boot")
        if had_role:
            await self._tell_cluster("member_left")
        return self.s

    @reprovision.validator
    def _reprovision_allowed(self) -> None:
        if self._where() == DECOMMISSIONING:
            raise _reject(f"the machine is being decommissioned{self._power_failed()}")

    @workflow.update
    def decommission(self) -> MachineStatus:
        """Take the machine out of its cluster and retire it (then power it off)."""
        self._begin_boot()
        self._move(DECOMMISSIONING, "decommission requested")
        self._step = DECOMMISSION
        return self.s

    @decommission.validator
    def _decommission_allowed(self) -> None:
        if self._where() == DECOMMISSIONING:
            raise _reject(f"already being decommissioned{self._power_failed()}")

    # ---- steps ---------------------------------------------------------------------------

    async def _run_step(self, step: str) -> None:
        epoch = self._epoch
        runs = {ADMIT: self._admit, RENDER: self._render, JOIN: self._join_cluster, DNS: self._publish_dns,
                DECOMMISSION: self._retire, POWER: self._power}
        try:
            if step in runs:
                await runs[step](epoch)
        except ActivityError as err:
            if epoch == self._epoch:
                self._fail(step, _cause(err))
        except power_steps.PowerFailed as err:  # a BMC's answer, or a site no worker serves
            if epoch == self._epoch:
                self._fail(step, str(err))
        if epoch == self._epoch and self.s.failed_step == step and workflow.patched(FAILURE_LISTED):
            await self._list_failure()

    async def _list_failure(self) -> None:
        """Lists read states from the database: write the failure there. Not written (the
        database down past the retries), lists show the state before it until the next move;
        `tempered machine show` asks the workflow either way."""
        moved = self.s.history[-1].at if self.s.history else workflow.now()
        try:
            await calls.record_state(StateRecord(machine_id=self.s.machine_id, state=self.s.state, at=moved))
        except ActivityError as err:
            workflow.logger.warning("machine %s: %s not written for lists: %s", self.s.machine_id, self.s.state,
                                    _cause(err))

    async def _admit(self, epoch: int) -> None:
        if self.s.cluster is None:
            self._move(HOLDING, "not in any cluster: assign it with POST /v1/machines")
            return
        self._move(DISCOVER, "asking the cluster for a role")
        request = AdmitRequest(**self._names(), is_new=self.s.is_new, role=self.s.role, node_name=self.s.node_name)
        if workflow.patched(admission_ask.PATCH):  # a Signal and its answer: no Update, no worker slot
            admission = await self._ask_cluster(request, epoch)
            if admission is None:  # a new boot meanwhile, or parked in failed:admit
                return
        else:
            # The heartbeat's old branch scheduled the same activity, only without a heartbeat timeout:
            # histories from before it replay the same commands, so the patch is deprecated.
            workflow.deprecate_patch("admit-heartbeat")
            admission = await calls.admit_machine(request)
        if epoch != self._epoch:
            return
        self.s.role = admission.role
        if admission.hold:
            self._move(HOLDING, admission.reason)
            if self._stale_hold(admission):  # released while it asked: ask again
                self._admit_if_held()
        elif workflow.patched("render"):
            self._say(f"admitted as {admission.role}: rendering its user-data")
            self._step = RENDER  # the user-data must be valid before the machine may reboot
        else:
            self._move(POST_DISCOVER, f"admitted as {admission.role}: reboot into the runtime OS")

    async def _render(self, epoch: int) -> None:
        result = await calls.render_user_data(
            RenderRequest(**self._names(), role=self.s.role, is_new=self.s.is_new, hostname=self.s.node_name)
        )
        if epoch != self._epoch:
            return
        self.s.kargs, self.s.user_data = result.kargs, result.digest
        fragments = f", with {', '.join(result.includes)}" if result.includes else ""
        self._move(POST_DISCOVER, f"admitted as {self.s.role}, user-data rendered{fragments}: reboot into the runtime OS")

    async def _join_cluster(self, epoch: int) -> None:
        self._join = None
        self._move(JOIN_CLUSTER)
        if not workflow.patched("ansible-join"):
            await self._await_join(epoch)
            return
        plan = await self._join_plan(epoch)
        if plan is None or epoch != self._epoch:  # a new boot meanwhile, or parked in failed:join-cluster
            return
        if plan.method == "external":
            self._say("waiting for the join result (this cluster's join_method is external)")
            await self._await_join(epoch)
            return
        self._say(f"kubeadm {plan.action} through Ansible")
        try:
            outcome = await calls.kubeadm_join(
                JoinRequest(**self._names(), node_name=self.s.node_name, ip=self.s.ip, boot=self.s.boot, plan=plan)
            )
        finally:
            await self._tell_cluster("join_ended")  # kubeadm is done with this node: the next master may go
        if epoch != self._epoch:
            return
        self.s.kube_node = True
        await self._joined(outcome.summary)

    async def _join_plan(self, epoch: int) -> JoinPlan | None:
        """How this machine joins: known from the admission (external), or asked of the cluster."""
        if self._joins_externally():
            return JoinPlan(method="external")
        self._say("asking the cluster how to join (a master-prime waits for the before-bootstrap Terraform tasks)")
        request = JoinPlanRequest(**self._names(), is_new=self.s.is_new)
        if workflow.patched(admission_ask.JOIN_PATCH):  # a Signal and its answer, as admission
            return await self._ask_join_plan(request, epoch)
        return await calls.join_plan(request)

    async def _await_join(self, epoch: int) -> None:
        """Join by an outside tool, which reports with the `join_finished` Update."""
        await workflow.wait_condition(lambda: self._join is not None or epoch != self._epoch)
        if epoch != self._epoch:
            return
        assert self._join is not None
        if not self._join.ok:
            self._fail(JOIN, self._join.reason or "the join failed")
            return
        await self._joined("joined the cluster")

    async def _joined(self, summary: str) -> None:
        self._join_summary = summary
        if workflow.patched("dns-publish"):
            self._step = DNS  # the node's name is published before it counts as ready
            return
        self._move(READY, summary)
        await self._tell_cluster("member_ready")

    async def _publish_dns(self, epoch: int) -> None:
        result = "no address known: DNS not published"
        if self.s.ip:
            self._say("publishing DNS records")
            result = await calls.publish_node_dns(self._dns())
        if epoch != self._epoch:
            return
        self._move(READY, f"{self._join_summary}; {result}")
        await self._tell_cluster("member_ready")

    async def _retire(self, epoch: int) -> None:
        removed = ""
        if self.s.kube_node and workflow.patched("ansible-decommission"):
            self._say("draining the node, kubeadm reset, deleting it from the cluster")
            removed = await calls.kubeadm_decommission(
                DecommissionRequest(**self._names(), node_name=self.s.node_name, ip=self.s.ip)
            )
            self.s.kube_node = False
        await self._tell_cluster("member_left")
        if workflow.patched("dns-remove") and self.s.ip:
            await calls.remove_node_dns(self._dns())
        await calls.retire_machine(self.s.machine_id)
        self.s.role = ""
        self._retired = f"retired: {removed}" if removed else "retired"
        if self._power_from(DECOMMISSIONING, power_steps.DECOMMISSION, f"{self._retired}; powering it off"):
            return
        self._move(DECOMMISSIONED, self._retired)
        self._finished = True

    # ---- helpers -------------------------------------------------------------------------

    def _admit_if_held(self) -> None:
        """Ask the cluster again for a held machine, unless only new facts can clear its hold."""
        if self.s.state == HOLDING and not self._blocked:
            self._step = ADMIT
            self._clear_power()  # it moves on: a reboot asked while it was held is behind it

    def _facts_repeat(self, report: FactsReport) -> bool:
        """These facts were taken already on this boot (kept in memory only: after a
        continue-as-new a repeat is refused as before, which the agent also takes as done)."""
        return report.boot == self.s.boot and self._facts_taken == (report.boot, report.digest)

    def _begin_boot(self) -> None:
        """A new boot (or a reset): stale step results from before it are dropped."""
        self._epoch += 1
        self.s.boot += 1
        self.s.failed_step = None
        self._step = None
        self._clear_power()

    def _instruction(self, action: str, reason: str = "") -> BootInstruction:
        s, kargs = self.s, self.s.kargs if action == "runtime" else []
        return BootInstruction(action=action, machine_id=s.machine_id, boot=s.boot, state=s.state, is_new=s.is_new,
                               reason=reason, kargs=kargs)

    def _names(self) -> dict[str, str]:
        """The machine and its cluster, as every step's request names them."""
        return {"machine_id": self.s.machine_id, "cluster": self.s.cluster or ""}

    def _dns(self) -> NodeDns:
        return NodeDns(cluster=self.s.cluster, name=self.s.node_name, ip=self.s.ip)

    def _fail(self, step: str, reason: str) -> None:
        self.s.failed_step = step
        self._move(failed(step), f"{reason} (retry with: tempered machine retry {self.s.machine_id})")
        workflow.logger.warning("machine %s parked in %s: %s", self.s.machine_id, self.s.state, self.s.reason)

    def _move(self, state: str, reason: str = "", publish: bool = True) -> None:
        self.s.state, self.s.reason = state, reason
        self.s.history = [*self.s.history, Transition(at=workflow.now(), state=state, reason=reason)][-HISTORY_KEPT:]
        if publish:
            self._publish()
        else:
            self._show()

    def _publish(self) -> None:
        """Keep the search attributes the Web UI and the API list machines by current. Each upsert
        is a billed Temporal action: since `fewer-actions`, only the attributes that changed are
        sent, and nothing when none did (a new reason, a repeated state)."""
        s = self.s
        updates = search.updates(state=s.state, cluster=s.cluster, role=s.role, mac=s.mac)
        if self._fewer_actions():
            updates = search.changed(updates, workflow.info().typed_search_attributes)
        if updates:
            workflow.upsert_search_attributes(updates)
        self._show()

    @staticmethod
    def _fewer_actions() -> bool:
        """Runs recorded before `fewer-actions` upserted all four attributes on every move."""
        return workflow.patched("fewer-actions")

    def _say(self, reason: str) -> None:
        """A new reason within the same state (no transition, no search attribute change)."""
        self.s.reason = reason
        self._show()

    def _show(self) -> None:
        """The Web UI's current details (not a history command: replay is unaffected)."""
        workflow.set_current_details(metadata.machine_details(self.s, metadata.api_url(workflow.memo())))

    async def _tell_cluster(self, signal: str) -> None:
        """Signal the cluster workflow; a cluster that is gone has nothing to learn."""
        if self.s.cluster is None:
            return
        handle = workflow.get_external_workflow_handle(cluster_workflow_id(self.s.cluster))
        try:
            await handle.signal(signal, self.s.machine_id)
        except Exception as err:  # the cluster was deleted: nothing to tell
            workflow.logger.warning("cluster %s did not take %s: %s", self.s.cluster, signal, err)


def _cause(err: ActivityError) -> str:
    """Why an activity failed."""
    cause = err.cause
    while cause is not None and cause.cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.cause
    return str(cause or err)
