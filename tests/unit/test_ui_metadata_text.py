"""workflows/metadata.py: what free text can do to the Markdown the Web UI renders."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from activities.domain.cluster import ClusterSpec, ClusterStatus, Member
from activities.domain.machine import MachineStatus, Transition
from workflows import metadata

HOSTILE = "rule error: [click](http://evil.example) **loud** <img src=x> `code` | # title"
UNESCAPED = re.compile(r"(?<!\\)(\]\(http://evil|<img|\*\*loud)")  # markup not preceded by a backslash


def test_free_text_cannot_add_links_or_markup() -> None:
    """Reasons carry rule errors and kubeadm's stderr: shown as text, never as links or HTML."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    status = MachineStatus(machine_id="m1", cluster="c1", mac="52:54:00:00:00:01", state="holding",
                           reason=HOSTILE, history=[Transition(at=at, state="holding", reason=HOSTILE)])
    text = metadata.machine_details(status, "http://api.example:8000")
    assert not UNESCAPED.search(text)
    assert r"\[click\](http://evil.example) \*\*loud\*\* \<img src=x\>" in text
    assert "- 2026-01-02 03:04:05 `holding` — rule error" in text
    assert text.endswith("[machine in the API](http://api.example:8000/v1/machines/m1)"
                         " · [cluster c1](http://api.example:8000/v1/clusters/c1)")

    cluster = ClusterStatus(spec=ClusterSpec(name="c1"), dns=HOSTILE, credentials_error=HOSTILE,
                            members=[Member(machine_id="m1", role="master-prime", ready=True, node_name="n1")])
    text = metadata.cluster_details(cluster, [], "")
    assert not UNESCAPED.search(text)
    assert "- ready (1): `n1` (master-prime)" in text and "now: idle" in text


def test_without_an_api_url_there_are_no_links() -> None:
    status = MachineStatus(machine_id="m1")
    assert metadata.memo("") == {} and metadata.api_url({}) == ""
    assert metadata.api_url(metadata.memo("http://api.example/")) == "http://api.example"
    for text in (metadata.machine_details(status, ""), metadata.machine_static_details(status, ""),
                 metadata.cluster_static_details(ClusterSpec(name="c1"), "")):
        assert "](" not in text
    assert metadata.machine_summary(status) == "pre-registered (no MAC yet) · no cluster at start"


def test_an_operation_leaves_the_current_details_however_its_step_ends() -> None:
    """A cluster's "now:" lists what its steps do; a step that fails or is cancelled (a
    BaseException) is no longer listed, and the details are set again each time."""
    import asyncio

    shown: list[list[str]] = []
    doing = metadata.Doing(lambda: shown.append(list(doing.operations)))

    async def scenario() -> None:
        blocked, never = asyncio.Event(), asyncio.Event()

        async def stuck() -> None:
            blocked.set()
            await never.wait()

        async def fails() -> None:
            raise RuntimeError("activity failed")

        task = asyncio.create_task(doing.step("minting a join token", stuck)())
        await blocked.wait()
        assert doing.operations == ["minting a join token"]
        try:
            await doing.step("admitting n1", fails)()
        except RuntimeError:
            pass
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    assert doing.operations == []
    assert shown == [["minting a join token"], ["minting a join token", "admitting n1"],
                     ["minting a join token"], []]
