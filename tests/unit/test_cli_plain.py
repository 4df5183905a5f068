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
