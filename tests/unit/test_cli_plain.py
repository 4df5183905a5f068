"""The CLI speaks plainly: every `--help` without type tags, the exit codes in the top-level
help, and an API refusal turned into one line per problem with the exit code of its kind."""

from __future__ import annotations

import re

import click
import typer.main
from typer.testing import CliRunner

from api.cli import app
from api.cli.client import EXIT_CODES_HELP, Exit, exit_for, problems

TYPE_TAG = re.compile(r"<(bool|str|int|float|path|Path|list\[\w+\]|[\w-]+(\|[\w-]+)+)>")


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += _commands(sub, (*path, name))
    return found


def test_no_help_carries_a_type_tag():
    runner = CliRunner()
    paths = _commands(typer.main.get_command(app))
    assert ("machine", "watch") in paths and ("cluster", "create") in paths and len(paths) > 40
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert not TYPE_TAG.search(result.output), (path, TYPE_TAG.search(result.output), result.output)
    force = runner.invoke(app, ["fragment", "delete", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--force +Delete even", force), force  # a flag: nothing between it and its help
    listing = runner.invoke(app, ["cluster", "list", "--help"], env={"COLUMNS": "200"}).output
    assert "[table|json|yaml]" in listing
    create = runner.invoke(app, ["cluster", "create", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--quorum +INTEGER", create) and "[ansible|external]" in create


def test_the_top_level_help_gives_the_exit_codes():
    text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    assert EXIT_CODES_HELP in text
    for code in Exit:
        assert f"{int(code)} " in EXIT_CODES_HELP


def test_a_422_is_one_line_per_field_named_as_the_user_wrote_it():
    body = {"detail": [
        {"loc": ["body", "quorum_count"], "msg": "Value error, must be odd", "type": "value_error"},
        {"loc": ["body", "servers", 0, "host"], "msg": "not a host", "type": "value_error"},
        {"loc": ["body"], "msg": "Value error, nothing to update", "type": "value_error"},
        {"loc": ["query", "state"], "msg": "bad", "type": "value_error"},
        {"loc": ["body"], "msg": "Field required", "type": "missing"},
    ]}
    assert problems(422, body) == [
        "quorum_count: must be odd", "servers[0].host: not a host", "nothing to update", "state: bad",
        "request body: Field required",
    ]
    assert problems(409, {"detail": "cluster 'a' already exists"}) == ["cluster 'a' already exists"]
    assert problems(502, "Bad Gateway") == ["Bad Gateway"]
    assert problems(500, {"detail": ""}) == ["HTTP 500"]


def test_each_kind_of_refusal_has_its_exit_code():
    assert [exit_for(code) for code in (400, 409, 413, 422, 404, 401, 403, 500, 502, 503, 504)] == [
        Exit.REFUSED, Exit.REFUSED, Exit.REFUSED, Exit.INVALID, Exit.NOT_FOUND, Exit.NOT_ALLOWED,
        Exit.NOT_ALLOWED, Exit.REFUSED, Exit.UNAVAILABLE, Exit.UNAVAILABLE, Exit.UNAVAILABLE,
    ]


def _run(*args: str, **env: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **env})


def test_usage_lines_name_arguments_in_upper_case():
    runner = CliRunner()
    for path in _commands(typer.main.get_command(app)):
        usage = next(line for line in runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output.splitlines()
                     if "Usage:" in line)
        assert not re.search(r"\{\w+\}", usage), (path, usage)
    assert re.search(r"Usage: \S+ cluster show \[OPTIONS\] NAME\s", _run("cluster", "show", "--help").output)
    assert re.search(r"Usage: \S+ rules show \[OPTIONS\] \[CLUSTER\]\s", _run("rules", "show", "--help").output)
    assert "Missing argument 'NAME'" in _run("cluster", "show").output


def test_a_state_filter_is_checked_against_the_lifecycle():
    from activities.domain.lifecycle import STATES

    for command in (["machine", "list"], ["machine", "watch", "--once"]):
        refused = _run(*command, "--state", "bogus", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x")
        assert refused.exit_code == 2, refused.output
        assert "'bogus' is not a machine state" in refused.output
        assert all(s.name in refused.output for s in STATES) and "failed:admit" in refused.output and "holding" in refused.output
    # a real state passes the check and reaches the API (unreachable here: exit 5, not 2)
    assert _run("machine", "list", "--state", "failed:admit", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x").exit_code == 5


def test_audit_since_and_machine_ids_are_checked_before_any_call():
    since = _run("audit", "--since", "yesterday", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x")
    assert since.exit_code == 2 and "2026-12-01 or 2026-12-01T09:00:00Z" in since.output, since.output
    shown = _run("machine", "show", "../clusters", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x")
    assert shown.exit_code == 2, shown.output
    assert "'../clusters' is not a machine id (a UUID, a MAC or serial-SERIAL; see 'tempered machine list')" in shown.output
    for command in ("retry", "reboot", "reprovision", "decommission"):
        assert _run("machine", command, "a/b", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x").exit_code == 2
    # any other word is asked of the API (unreachable here: exit 5), whose 404 says what exists
    assert _run("machine", "show", "00:11", TEMPERED_API="http://127.0.0.1:9", TEMPERED_TOKEN="x").exit_code == 5


def test_machine_ids_read_as_the_api_keys_them():
    from api.cli.clusters import machine_id_of
    from api.cli.tokens import since_time

    assert machine_id_of("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    assert machine_id_of("4C4C4544-0042-3510-8052-B4C04F4E3732") == "4c4c4544-0042-3510-8052-b4c04f4e3732"
    assert machine_id_of("serial-ABC123") == "serial-ABC123"
    assert machine_id_of("join-1a2b-prime") == "join-1a2b-prime"  # ids made elsewhere are asked as they are
    assert since_time("2026-12-01") == "2026-12-01T00:00:00+00:00"
    assert since_time("2026-12-01T09:00:00Z") == "2026-12-01T09:00:00+00:00"


def test_a_404_ends_with_the_cli_command_that_lists_what_exists():
    from api.cli.client import not_found

    assert not_found("/v1/clusters/x", "no cluster named 'x': see GET /v1/clusters") == (
        "no cluster named 'x': list them with 'tempered cluster list'"
    )
    assert not_found("/v1/machines", "no cluster named 'x': create it first") == (
        "no cluster named 'x': create it first; list them with 'tempered cluster list'"
    )
    assert not_found("/v1/machines/m", "not found in Temporal: workflow not found").endswith(
        "; list them with 'tempered machine list'"
    )
    assert not_found("/v1/clusters/x/dns", "no DNS settings for x") == "no DNS settings for x: set them with 'tempered dns set'"
    assert not_found("/v1/cloud-init/fragments/f", "no fragment named 'f'").endswith("'tempered fragment list'")
    assert not_found("/v1/somewhere-else", "gone") == "gone"


def test_a_422_names_the_flag_the_user_typed():
    from api.cli.clusters import _CREATE_FLAGS

    body = {"detail": [
        {"loc": ["body", "quorum_count"], "msg": "Value error, must be odd", "type": "value_error"},
        {"loc": ["body", "pod_cidr"], "msg": "not a network", "type": "value_error"},
        {"loc": ["body", "preflight", "min_cores"], "msg": "too small", "type": "value_error"},
        {"loc": ["body", "name"], "msg": "must be a DNS label", "type": "value_error"},
        {"loc": ["body", "unheard_of"], "msg": "extra", "type": "value_error"},
    ]}
    assert problems(422, body, _CREATE_FLAGS) == [
        "--quorum: must be odd", "--pod-cidr: not a network", "--min-cores: too small", "NAME: must be a DNS label",
        "unheard_of: extra",
    ]
    assert problems(422, body)[0] == "quorum_count: must be odd"  # without a map: as the API says


def test_tables_say_yes_no_and_dash_and_transitions_run_newest_first():
    from api.cli.client import cell, out
    from api.cli.clusters import _print_machine

    assert [cell(v) for v in (True, False, None, "", 0, "x")] == ["yes", "no", "-", "-", "0", "x"]
    view = {
        "id": "52:54:00:cc:00:09", "state": "ready", "role": "", "cluster": "prod", "reason": "", "node_name": "n",
        "is_new": True, "boot": 2, "macs": ["52:54:00:cc:00:09"], "attributes": [], "facts": None, "temporal_url": "u",
        "history": [{"at": "2026-12-06T09:00:00Z", "state": "new", "reason": ""},
                    {"at": "2026-12-06T09:12:00Z", "state": "ready", "reason": ""}],
    }
    with out.capture() as printed:
        _print_machine(view, history=True)
    text = printed.get()
    assert "new: yes" in text and "True" not in text and "role -" in text
    assert text.index("09:12:00") < text.index("09:00:00"), text

    from datetime import datetime, timezone

    from rich.console import Console

    from api.cli.watch import COLUMNS, render, rows

    console = Console(record=True, width=200)
    console.print(render(rows([view], datetime(2026, 12, 6, 9, 13, tzinfo=timezone.utc)), "1 machine"))
    line = next(line for line in console.export_text().splitlines() if "52:54:00:cc:00:09" in line)
    assert [cell.strip() for cell in line.strip("│ ").split("│")] == [
        "52:54:00:cc:00:09", "prod", "52:54:00:cc:00:09", "ready", "-", "1m00s", "-"
    ], (COLUMNS, line)


def test_settings_errors_exit_2_for_every_command_and_help_still_works():
    import subprocess

    from tests.servers import VENV_BIN

    env = {"PATH": "/usr/bin:/bin", "TEMPERED_API_PORT": "x", "TEMPERED_HOME": "/nonexistent"}
    for command in (["machine", "list"], ["cluster", "show", "a"], ["worker"], ["api"], ["temporal"]):
        result = subprocess.run([str(VENV_BIN / "tempered"), *command], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == "error: TEMPERED_API_PORT='x' is not a port number (e.g. 8000)\n", (command, result.stderr)
    helped = subprocess.run([str(VENV_BIN / "tempered"), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "Usage" in helped.stdout


def test_worker_help_says_where_it_serves_metrics():
    from activities.storage import settings as settings_mod

    text = " ".join(_run("worker", "--help").output.split())
    assert "TEMPERED_WORKER_METRICS" in text
    assert f"http://{settings_mod.load().worker_metrics}/metrics" in text
