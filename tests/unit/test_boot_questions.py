"""The edge's unanswered boot questions (api/boot_questions.py): an ask again while the first is
unanswered gets the same Update ID (Temporal then attaches it to the Update in flight), an
answered or refused question makes the next ask a new one, and a question left for longer than
the keep time is asked afresh."""

from __future__ import annotations

from api.boot_questions import BootQuestions


def test_an_ask_again_rides_on_the_first_update():
    questions = BootQuestions()
    first = questions.update_id("m1")
    assert questions.update_id("m1") == first
    assert questions.update_id("m2") != first  # another machine: its own question
    assert len(questions) == 2


def test_an_answer_ends_the_question():
    questions = BootQuestions()
    first = questions.update_id("m1")
    questions.done("m1", first)
    assert questions.update_id("m1") != first
    assert len(questions) == 1


def test_a_stale_answer_does_not_end_a_newer_question():
    questions = BootQuestions(keep_s=-1.0)
    old = questions.update_id("m1")
    new = questions.update_id("m1")  # (a negative keep time: every ask is afresh)
    assert new != old
    questions.done("m1", old)
    assert len(questions) == 1  # the newer question is still open
