"""Help that reads like a man page: no `<bool>`/`<str>` tags, flags bare, choices as `[a|b]`.

Typer 0.25 and later carry their own copy of Click and print each parameter's Python type in
`--help` (`--force <bool>`, `NAME <str>`, `--help <bool>`), flags included, with no setting to
turn it off; the one place that text comes from is the parameter classes' `display_type_rich`.
`plain_help()` replaces that method once, for every command of the process (options and
arguments, `--help` itself too): a flag shows nothing, an option that takes a value shows what
Click always showed (TEXT, INTEGER, NUMBER, PATH) or its choices, an argument only its name.
An explicit `metavar=` still wins. Typer 0.29 also writes arguments as `{name}` in usage lines:
they read NAME there, as in Click and man pages. Older Typers (Click's own types) have no such method and
need nothing.
"""

from __future__ import annotations

from typing import Any

from typer import core

_WORDS: dict[Any, str] = {int: "INTEGER", float: "NUMBER"}


def value_hint(param: Any, ctx: Any = None) -> str | None:
    """What follows an option in `--help`: None for a flag or an argument (its name says it)."""
    if isinstance(param, core.TyperArgument):
        return None
    if param.metavar is not None:
        return param.metavar
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    kind = param.type_descriptor
    if kind.is_choice:
        return "[" + "|".join(str(getattr(choice, "value", choice)) for choice in kind.choices or ()) + "]"
    if kind.is_path:
        return "PATH"
    return _WORDS.get(kind.annotation, "TEXT")


def argument_name(param: Any) -> str:
    """An argument as usage lines and errors name it: NAME, upper case, as Click always did."""
    return param.metavar if param.metavar is not None else param.name.upper()


def usage_name(param: Any) -> str:
    """An argument in the usage line: `NAME` when required, `[NAME]` when not (Typer 0.29
    writes `{name}`), `NAME...` when it takes several."""
    name = argument_name(param) if param.required else f"[{argument_name(param)}]"
    return name + ("..." if param.nargs != 1 else "")


def plain_help() -> None:
    """Install `value_hint` for every Typer option and argument of this process, and upper-case
    argument names in usage lines (idempotent)."""
    for cls in (getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)):
        if cls is not None and hasattr(cls, "display_type_rich"):
            cls.display_type_rich = value_hint  # type: ignore[method-assign]
    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        argument.display_name_raw = property(argument_name)  # type: ignore[method-assign,assignment]
        argument._usage_display_name = usage_name  # type: ignore[method-assign]
