"""The log formats (api/logs.py): JSON lines with their context fields, and the redaction filter
that keeps secrets out of every line whatever code logged them."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import io
import json
import logging
import secrets

import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.domain import logfields
from api import logs


@pytest.fixture
def capture():
    """A logger whose lines go through the JSON formatter and the filter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RedactSecrets())
    logger = logging.getLogger(f"tempered.test.{secrets.token_hex(4)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield logger, lines
    logger.removeHandler(handler)


def test_a_line_is_one_json_object_with_time_level_logger_and_message(capture):
    logger, lines = capture
    logger.warning("refused %s:\n%s", "52:54:00:00:00:01", "multi\nline")
    (line,) = lines()
    assert line["level"] == "WARNING" and line["logger"] == logger.name
    assert line["message"] == "refused 52:54:00:00:00:01:\nmulti\nline"
    assert line["time"].endswith("+00:00") and "T" in line["time"]


def test_extra_fields_and_bound_fields_are_carried_and_unknown_extras_are_not(capture):
    logger, lines = capture

    def in_a_request() -> None:
        logfields.bind(machine="m-1", mac="52:54:00:00:00:02")
        logger.info("boot script", extra={"boot": 3, "color_message": "ignored"})

    contextvars.copy_context().run(in_a_request)
    logger.info("outside the request")
    first, second = lines()
    assert {k: first[k] for k in ("machine", "mac", "boot")} == {"machine": "m-1", "mac": "52:54:00:00:00:02", "boot": 3}
    assert "color_message" not in first
    assert "machine" not in second  # bound fields end with their context


def test_a_field_name_that_is_not_a_log_field_is_refused():
    with pytest.raises(ValueError, match="not a log field: token"):
        logfields.bind(token="x")


def test_temporal_extras_give_machine_cluster_step_and_run(capture):
    logger, lines = capture
    logger.info("activity line", extra={"temporal_activity": {
        "activity_type": "kubeadm_join", "workflow_id": "machine:8d6f1c1e-3b7a-4c2e-9f00-00000000ab05",
        "workflow_run_id": "run-1", "attempt": 2}})
    logger.info("workflow line", extra={"temporal_workflow": {"workflow_id": "cluster:prod", "run_id": "run-2", "attempt": 1}})
    act, wf = lines()
    assert (act["machine"], act["step"], act["run"], act["attempt"]) == (
        "8d6f1c1e-3b7a-4c2e-9f00-00000000ab05", "kubeadm_join", "run-1", 2)
    assert act["workflow_id"] == "machine:8d6f1c1e-3b7a-4c2e-9f00-00000000ab05"
    assert (wf["cluster"], wf["run"]) == ("prod", "run-2") and "step" not in wf and "attempt" not in wf


def test_any_logger_inside_an_activity_gets_its_context(capture):
    """A library's or a helper's own logger (not activity.logger) inside an activity still
    names the machine and the step: Temporal's activity context says which."""
    logger, lines = capture

    @activity.defn(name="publish_node_dns")
    async def step() -> None:
        logger.info("sent an update")

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id="machine:m-7", activity_type="publish_node_dns")
    asyncio.run(env.run(step))
    (line,) = lines()
    assert (line["machine"], line["step"]) == ("m-7", "publish_node_dns")


TOKEN = "Xq3dR0v9mN2b_Lk8Jp4Hs7Gf1Dw6Ce5Az0Yx9Wv8Ut7"  # secrets.token_urlsafe(32)'s shape: 43 characters
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDxyz\n-----END OPENSSH PRIVATE KEY-----"
)


@pytest.mark.parametrize("text, kept", [
    (f"GET /machines/8d6f1c1e-3b7a-4c2e-9f00-00000000ab05/{TOKEN}/user-data HTTP/1.1",
     "GET /machines/8d6f1c1e-3b7a-4c2e-9f00-00000000ab05/<redacted>/user-data HTTP/1.1"),
    (f"Authorization: Bearer {TOKEN}", "Authorization: Bearer <redacted>"),
    (f"kernel vmlinuz tempered.machine=m-1 tempered.token={TOKEN} quiet", "tempered.token=<redacted> quiet"),
    (f"GET /x?token={TOKEN}&a=1", "?token=<redacted>&a=1"),
    ("{'name': 'tsig', 'secret': 'c2VjcmV0IGtleSBieXRlcw==', 'algorithm': 'hmac-sha512'}",
     "'secret': '<redacted>', 'algorithm': 'hmac-sha512'"),
    ('{"token": "abcdef.0123456789abcdef"}', '"token": "<redacted>"'),
    ("kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef --certificate-key 0a1b2c",
     "--token <redacted> --certificate-key <redacted>"),
    ("joined with abcdef.0123456789abcdef", "joined with <redacted>"),
    (f"key:\n{KEY}\nafter", "key:\n<redacted> private key\nafter"),
])
def test_secrets_are_redacted(text: str, kept: str):
    clean = logs.redact(text)
    assert kept in clean, clean
    for secret in (TOKEN, "c2VjcmV0IGtleSBieXRlcw==", "abcdef.0123456789abcdef", "0a1b2c", "b3BlbnNzaC1rZXkt"):
        assert secret not in clean


@pytest.mark.parametrize("text", [
    "machine 8d6f1c1e-3b7a-4c2e-9f00-00000000ab05 phoned home (boot 2)",
    "join token: expires 2026-12-06T10:00:00Z",
    "POST /v1/boot/8d6f1c1e-3b7a-4c2e-9f00-00000000ab05/facts HTTP/1.1 202",
    "published node-525400abcdef.lab.example. A 10.213.8.21",
    "no bearer token in the request",
])
def test_ordinary_lines_are_left_alone(text: str):
    assert logs.redact(text) == text


def test_a_record_whose_arguments_do_not_fit_is_passed_on_not_raised():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d machines", ("many",), None)
    assert logs.RedactSecrets().filter(record) is True


def test_the_filter_redacts_arguments_and_tracebacks(capture):
    logger, lines = capture
    logger.info("relayed %s", f"/machines/m-1/{TOKEN}/meta-data")
    try:
        raise RuntimeError(f"refused Bearer {TOKEN}")
    except RuntimeError:
        logger.exception("failed")
    relayed, failed = lines()
    assert relayed["message"] == "relayed /machines/m-1/<redacted>/meta-data"
    assert "RuntimeError: refused Bearer <redacted>" in failed["exception"]
    assert TOKEN not in json.dumps(lines())


def test_setup_logging_picks_the_format_from_the_environment(monkeypatch, capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    temporal_set_up = []  # (not for real: it would set this test process's Temporal runtime)
    monkeypatch.setattr(logs, "_temporal_lines", lambda: temporal_set_up.append(True))
    try:
        monkeypatch.setenv("TEMPERED_LOG_FORMAT", "json")
        logs.setup_logging()
        assert temporal_set_up == [True]  # Temporal's own lines go through ours too
        logging.getLogger("tempered.test").info("hello %s", f"Bearer {TOKEN}")
        line = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert line["message"] == "hello Bearer <redacted>" and line["logger"] == "tempered.test"

        monkeypatch.delenv("TEMPERED_LOG_FORMAT")
        logs.setup_logging()
        assert temporal_set_up == [True]
        logging.getLogger("tempered.test").info("hello")
        assert capsys.readouterr().err.rstrip().endswith(" INFO tempered.test: hello")

        monkeypatch.setenv("TEMPERED_LOG_FORMAT", "xml")
        with pytest.raises(SystemExit, match="TEMPERED_LOG_FORMAT must be one of text, json"):
            logs.setup_logging()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_lab_timings_read_the_edge_s_json_lines_as_its_text_lines():
    """`tempered lab timings` reads the edge's log, whichever format it was written in."""
    from api.lab.timings import edge_intervals

    record = logging.LogRecord("tempered.bootedge.http", logging.INFO, __file__, 1,
                               "relayed POST /v1/boot/m-1/facts in 0.039s", None, None)
    as_json, as_text = logs.JsonFormatter().format(record), logging.Formatter(logs.TEXT).format(record)
    (found,) = edge_intervals([as_json], "m-1")
    assert edge_intervals([as_text], "m-1") == [found] and round((found.end - found.start).total_seconds(), 3) == 0.039
