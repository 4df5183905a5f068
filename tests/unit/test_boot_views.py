"""The machine-facing routes' kept answers (api/boot_views.py): reused only under the same
recorded row, only when the workflow agreed with it, never for a joining machine, and never past
their age."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from api.boot_views import BootView, BootViews

T1 = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)
T2 = datetime(2026, 12, 7, 6, 1, tzinfo=timezone.utc)
DISCOVER = BootView(boot=1, state="discover", reason="", node_name="m1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_reused_while_the_recorded_row_is_the_same():
    polls = BootViews()
    polls.keep("m1", ("discover", T1), DISCOVER)
    assert polls.kept("m1", ("discover", T1)) == DISCOVER
    assert polls.kept("m1", ("discover", T2)) is None  # moved again, to the same state
    assert polls.kept("m1", ("post-discover", T2)) is None
    assert polls.kept("m1", None) is None  # its row is gone
    assert polls.kept("m2", ("discover", T1)) is None


def test_an_answer_the_row_disagrees_with_is_not_kept():
    polls = BootViews()
    polls.keep("m1", ("discover", T1), DISCOVER)
    # the activity wrote post-discover before the workflow moved: ask again next time
    polls.keep("m1", ("post-discover", T2), DISCOVER)
    assert polls.kept("m1", ("post-discover", T2)) is None and len(polls) == 0
    polls.keep("m1", None, DISCOVER)  # no row yet
    assert len(polls) == 0


@pytest.mark.parametrize("state", ["post-boot-2", "join-cluster", "ready", "failed:join-cluster", "failed:dns"])
def test_a_machine_that_phoned_home_is_always_asked(state):
    """It may become ready with no write to the copy (no IP to publish): its token then reads nothing."""
    polls = BootViews()
    polls.keep("m1", (state, T1), BootView(boot=2, state=state, reason="", node_name="m1"))
    assert polls.kept("m1", (state, T1)) is None and len(polls) == 0


def test_an_answer_is_asked_again_after_its_age():
    clock = Clock()
    polls = BootViews(max_age_s=60, clock=clock)
    polls.keep("m1", ("discover", T1), DISCOVER)
    clock.now = 60
    assert polls.kept("m1", ("discover", T1)) == DISCOVER
    clock.now = 60.5
    assert polls.kept("m1", ("discover", T1)) is None


def test_the_least_recently_polled_go_first():
    polls = BootViews(size=2)
    for name in ("m1", "m2"):
        polls.keep(name, ("discover", T1), DISCOVER)
    assert polls.kept("m1", ("discover", T1)) == DISCOVER  # m1 polled: m2 is now the oldest
    polls.keep("m3", ("discover", T1), DISCOVER)
    assert len(polls) == 2 and polls.kept("m2", ("discover", T1)) is None
    assert polls.kept("m1", ("discover", T1)) == DISCOVER and polls.kept("m3", ("discover", T1)) == DISCOVER


def test_a_hold_the_row_never_shows_is_kept():
    """The copy says `discover` for a held machine: its polls need not ask (it waits either way),
    but a row ahead of the workflow (post-discover written before the workflow moved) is not."""
    polls = BootViews()
    held = BootView(boot=1, state="holding", reason="waiting for the control plane", node_name="m1")
    polls.keep("m1", ("discover", T1), held)
    assert polls.kept("m1", ("discover", T1)) == held
    polls.keep("m2", ("post-discover", T1), held)
    assert polls.kept("m2", ("post-discover", T1)) is None
