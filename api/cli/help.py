"""Help that reads like a man page: no `<bool>`/`<str>` tags, flags bare, choices as `[a|b]`.

Typer 0.25 and later carry their own copy of Click and print each parameter's Python type in
`--help` (`--force <bool>`, `NAME <str>`, `--help <bool>`), flags included, with no setting to
turn it off; the one place that text comes from is the parameter classes' `display_type_rich`.
`plain_help()` replaces that method once, for every command of the process (options and
arguments, `--help` itself too): a flag shows nothing, an option that takes a value shows what
Click always showed (TEXT, INTEGER, NUMBER, PATH) or its choices, an argument only its name.
An explicit `metavar=` still wins. Older Typers (Click's own types) have no such method and
need nothing.
"""

from __future__ import annotations

from typing import Any

from typer import core

_WORDS: dict[Any, str] = {int: "INTEGER", float: "NUMBER"}


def value_hint(param: Any, ctx: Any = None) -> str | None:
    """What follows an option in `--help`: None for a flag or an argument (its name says it)."""
    if param.metavar is not None:
        return param.metavar
    if isinstance(param, core.TyperArgument) or getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    kind = param.type_descriptor
    if kind.is_choice:
        return "[" + "|".join(str(getattr(choice, "value", choice)) for choice in kind.choices or ()) + "]"
    if kind.is_path:
        return "PATH"
    return _WORDS.get(kind.annotation, "TEXT")


def plain_help() -> None:
    """Install `value_hint` for every Typer option and argument of this process (idempotent)."""
    for cls in (getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)):
        if cls is not None and hasattr(cls, "display_type_rich"):
            cls.display_type_rich = value_hint  # type: ignore[method-assign]
