"""The fleet simulator (api/lab/fleet.py) end to end against the session's real API, worker and
Temporal: a few machines in two clusters, every one to `ready` through the machine-facing calls,
none lost, and the report's counts agreeing with what the API says."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from activities.domain.facts import Facts
from api.lab import fleet


def test_fleet_facts_are_valid_facts() -> None:
    """The simulated facts pass the facts intake's own schema, carry the booting MAC and are
    about 8 KB, as the admission benchmark's members are."""
    plan = fleet.Plan(machines=3, clusters=1, name="simtest")
    rack = fleet.Rack(cluster="c", edge="e", token="t", prefix="02:00:00:00")
    machines = fleet.fleet(plan, [rack])
    for m in machines:
        facts = Facts.model_validate(fleet.machine_facts(m))
        assert facts.nics[0].mac == m.mac and facts.dmi.uuid == m.uuid
    assert len({m.mac for m in machines}) == 3


def test_percentiles_are_nearest_rank() -> None:
    """The p99 of 100 samples is the 99th smallest, not the largest (one outlier is not the p99)."""
    samples = [float(v) for v in range(100, 0, -1)]
    assert fleet.percentile(samples, .99) == 99 and fleet.percentile(samples, .5) == 50
    assert fleet.percentile(samples + [101.0], .99) == 100  # 101 samples: rank ceil(99.99) = 100
    assert fleet.percentile([7.0], .99) == 7 and fleet.percentile([7.0], .5) == 7


def test_six_machines_in_two_clusters_reach_ready(api_server) -> None:
    plan = fleet.Plan(machines=6, clusters=2, window_s=1, timeout_s=240, poll_s=0.5, quorum=1)
    lines: list[str] = []
    result = asyncio.run(fleet.run(api_server.url, api_server.token, plan, progress=lines.append))
    text = "\n".join(fleet.report(result))
    assert not result.timed_out, text
    assert [m.error for m in result.machines if m.error] == [], text
    assert len(result.ready) == 6, text
    assert len({m.id for m in result.machines}) == 6, text  # six machines, none merged or lost

    # The report's counts are the machines': every state reached by all six, in order.
    for state in fleet.STATES:
        row = next(line for line in text.splitlines() if line.startswith(f"{state} "))
        assert row.split()[1] == "6", text
    for m in result.machines:
        times = [m.entered[state] for state in fleet.STATES]
        assert times == sorted(times), (m.id, m.entered)
    # Each machine made its calls once each (instruction polls and list reads repeat).
    counts = {name: len(values) for name, values in result.latencies.items()}
    assert counts["edge boot"] == 12 and counts["facts"] == 6 and counts["seed"] == 18, counts
    assert counts["phone home"] == 6 and counts["join result"] == 6, counts
    # The machines were watched through the list; each one's workflow was read once, after the run.
    assert counts["machine"] == 6 and counts["list"] >= 2, counts
    # One boot answer per boot question, printed beside the edge boot calls (no 504 to retry here).
    assert counts[fleet.BOOT_ANSWER] == 12, counts
    assert next(line for line in text.splitlines() if line.startswith("boot answer ")).split()[2] == "12", text
    assert "ready: 6 of 6" in text

    # What the API says: three machines in each cluster, all ready, one master-prime each.
    with api_server.client() as http:
        for rack in {m.rack.cluster for m in result.machines}:
            views = [http.get(f"/v1/machines/{m.id}").json() for m in result.machines if m.rack.cluster == rack]
            assert [v["state"] for v in views] == ["ready"] * 3
            assert Counter(v["role"] for v in views)["master-prime"] == 1, views


def test_a_run_that_times_out_says_where_machines_are(api_server) -> None:
    """The overall timeout ends the run with what it has: machines not ready are named with the
    state and step they are in, never waited on. (An agent polling every 60 s, without the long
    poll, cannot finish in 8.)"""
    plan = fleet.Plan(machines=3, clusters=1, window_s=0, timeout_s=8, poll_s=60, wait_s=0)
    result = asyncio.run(fleet.run(api_server.url, api_server.token, plan))
    text = "\n".join(fleet.report(result))
    assert result.timed_out and "stopped at the 8 s timeout" in text, text
    assert "ready: 0 of 3" in text
    stuck = [line for line in text.splitlines() if line.startswith("not ready: ")]
    assert sum(int(line.split()[2]) for line in stuck) == 3, text
    assert all(m.state in fleet.STATES[:3] + ("holding",) for m in result.machines), text


def test_a_refused_edge_token_is_reported_per_machine(api_server) -> None:
    """A machine whose edge is refused (a token that is no edge's) ends with the answer it got.
    Its calls went through its rack's edge's connections, none through the operator's."""
    plan = fleet.Plan(machines=2, clusters=1, window_s=0, timeout_s=30, poll_s=0.5)
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async def refused() -> fleet.Result:
        async with (httpx.AsyncClient(base_url=api_server.url, headers={"Authorization": f"Bearer {api_server.token}"}) as http,
                    httpx.AsyncClient(base_url=api_server.url, event_hooks={"request": [count]}) as edge):
            racks = await fleet.prepare(http, plan)
            racks[0].token = "not-a-token"
            operator_calls = len(sent)
            driver = fleet.Driver(http, {racks[0].edge: edge}, api_server.token, plan)
            machines = fleet.fleet(plan, racks)
            await asyncio.gather(*(driver.lifecycle(m, 0) for m in machines))
            assert operator_calls == 0
            return fleet.Result(plan, driver.started, 0.0, machines, driver.latencies, driver.errors, False)

    text = "\n".join(fleet.report(asyncio.run(refused())))
    assert "ready: 0 of 2" in text
    assert "not ready: 2 in no boot answered (RuntimeError: edge boot answered 401" in text, text
    assert sent == ["/v1/edge/boot"] * 2


def test_lab_up_help_explains_simulate() -> None:
    """`tempered lab up --help` says what --simulate does and the options that shape it."""
    from typer.testing import CliRunner

    from api.cli import app

    shown = CliRunner().invoke(app, ["lab", "up", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    for words in ("--simulate", "simulated machines", "join_method external", "--clusters", "--window", "--poll"):
        assert words in shown.output, (words, shown.output)
