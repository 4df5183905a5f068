"""cloud-config documents: parse, merge and validate them exactly as cloud-init on the node would.

A machine's user-data is the base template of `infra/cloud-init/` followed by its `include`
fragments, merged into ONE `#cloud-config` here, so that what is validated is what runs.

Merging follows cloud-init's mergers (`cloudinit/mergers/m_dict.py`, `m_list.py`, `m_str.py`,
cloud-init 22.4) rule for rule, quirks included; `tests/unit/test_cloudconfig.py` checks the result
against Debian's cloud-init on a corpus. Each part may carry its own `merge_how` (or
`merge_type`), as a string (`"list(append)+dict(no_replace,recurse_list)+str()"`) or as a list
of `{name, settings}`. A part without one merges with DEFAULT_MERGE_HOW (list append, dict
no_replace+recurse_list): what was there first wins on conflicts, lists grow.

Validation uses cloud-init's own JSON schema (`infra/cloud-init/schema-cloud-config-v1.json`,
from the cloud-init package the runtime image installs) with cloud-init's validator settings
(draft 4, byte strings count as strings, deprecations are not errors).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

INFRA = Path(__file__).resolve().parent.parent / "infra" / "cloud-init"
SCHEMA_FILE = INFRA / "schema-cloud-config-v1.json"
BASE_TEMPLATE = INFRA / "base.yaml.j2"
HEADER = "#cloud-config"
DEFAULT_MERGE_HOW = [{"name": "list", "settings": ["append"]}, {"name": "dict", "settings": ["no_replace", "recurse_list"]}]
MERGERS = ("list", "dict", "str")
MAX_FRAGMENT_BYTES = 256 * 1024
_SPEC = re.compile(r"(^[a-zA-Z_][A-Za-z0-9_]*)\((.*?)\)$")

Spec = list[tuple[str, list[str]]]


class CloudConfigError(ValueError):
    """A part or the merged result is not a cloud-config cloud-init would accept; the message
    names the part and says what is wrong."""


# ---- parsing ----------------------------------------------------------------------------


def parse(text: str, source: str) -> tuple[dict[str, Any], Spec]:
    """A part's mapping (without its merge_how) and its merge spec."""
    if len(text.encode()) > MAX_FRAGMENT_BYTES:
        raise CloudConfigError(f"{source}: larger than {MAX_FRAGMENT_BYTES // 1024} KiB")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CloudConfigError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(data, dict) or not data:
        raise CloudConfigError(f"{source}: must be a non-empty YAML mapping of cloud-config keys")
    raw = data.pop("merge_how", None)
    if raw is None:
        raw = data.pop("merge_type", None)
    return data, merge_spec(raw, source)


def merge_spec(raw: Any, source: str = "merge_how") -> Spec:
    """cloud-init's dict_extract_mergers/string_extract_mergers, plus a check that every merger
    exists (cloud-init would drop the whole part otherwise)."""
    if raw is None:
        return merge_spec(DEFAULT_MERGE_HOW, source)
    spec: Spec = []
    try:
        if isinstance(raw, str):
            for item in raw.split("+"):
                item = item.lower().strip().replace("-", "_")
                if not item:
                    continue
                match = _SPEC.match(item)
                if not match:
                    raise CloudConfigError(f"{source}: merger {item!r} is not written name(option,...)")
                options = [o.strip().lower() for o in match.group(2).strip().split(",") if o.strip()]
                spec.append((match.group(1), options))
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict):
                    spec.append((str(item["name"]).replace("-", "_").strip(), list(item["settings"])))
                else:
                    spec.append((item[0], list(item[1:])))
        else:
            raise CloudConfigError(f"{source}: merge_how must be a string or a list")
    except (KeyError, TypeError, IndexError) as err:
        raise CloudConfigError(f"{source}: malformed merge_how ({err!r})") from None
    unknown = [name for name, _ in spec if name not in MERGERS]
    if unknown:
        raise CloudConfigError(f"{source}: unknown merger {unknown[0]!r} (cloud-init has {', '.join(MERGERS)})")
    if not any(name == "dict" for name, _ in spec):
        raise CloudConfigError(f"{source}: merge_how has no dict merger, so cloud-init would ignore the whole part")
    return spec


# ---- merging ----------------------------------------------------------------------------


class Merger:
    """One part's merge: cloud-init's LookupMerger over its m_list, m_dict and m_str."""

    def __init__(self, spec: Spec) -> None:
        self.options: dict[str, frozenset[str]] = {}
        for name, options in spec:
            self.options.setdefault(name, frozenset(options))  # the first merger of a type wins

    def merge(self, old: Any, new: Any) -> Any:
        """Merge `new` into `old`, chosen by the type of `old` (as cloud-init does: a mapping
        merged into a string or list can fail, which cloud-init answers by dropping the part)."""
        kind = {dict: "dict", list: "list", tuple: "list", str: "str"}.get(type(old))
        if kind is None or kind not in self.options:
            return old  # cloud-init's UnknownMerger keeps what was there
        return getattr(self, f"_{kind}")(old, new, self.options[kind])

    def _dict(self, old: dict, new: Any, options: frozenset[str]) -> dict:
        if not isinstance(new, dict):
            return old
        replace = "replace" in options
        recurse_str = "recurse_str" in options
        recurse_list = bool(options & {"recurse_array", "recurse_list"})
        merged = dict(old)
        for key, value in new.items():
            if key not in merged:
                merged[key] = value
            elif value is None and "allow_delete" in options:
                merged.pop(key)
            elif replace:
                merged[key] = value
            elif (isinstance(value, (list, tuple)) and recurse_list) or (isinstance(value, str) and recurse_str) \
                    or isinstance(value, dict):
                merged[key] = self.merge(merged[key], value)
        return merged

    def _list(self, old: list, new: Any, options: frozenset[str]) -> list:
        method = next((m for m in ("append", "prepend", "replace", "no_replace") if m in options), "replace")
        if method == "replace" and not isinstance(new, (list, tuple)):
            return new
        if method == "prepend":
            return [*new, *old]
        if method == "append":
            return [*old, *new]
        merged = list(old)
        for i in range(min(len(merged), len(new))):
            value = new[i]
            if method == "no_replace":
                continue
            if (isinstance(value, (list, tuple)) and options & {"recurse_array", "recurse_list"}) \
                    or (isinstance(value, str) and "recurse_str" in options) \
                    or (isinstance(value, dict) and "recurse_dict" in options):
                merged[i] = self.merge(merged[i], value)
            else:
                merged[i] = value
        return merged

    def _str(self, old: str, new: Any, options: frozenset[str]) -> Any:
        return old + new if "append" in options else new


def merge(parts: list[tuple[dict[str, Any], Spec]]) -> dict[str, Any]:
    """Merge parsed parts in order, as cloud-init's cloud-config part handler does."""
    merged: dict[str, Any] = {}
    for index, (data, spec) in enumerate(parts):
        try:
            merged = Merger(spec).merge(merged, data)
        except (TypeError, KeyError) as err:  # a mapping merged into a string or list, say
            raise CloudConfigError(f"part {index + 1} cannot be merged: {type(err).__name__}: {err}") from None
    return merged


# ---- validation -------------------------------------------------------------------------


@cache
def _validator():
    from jsonschema import Draft4Validator, FormatChecker
    from jsonschema.validators import extend

    strings = Draft4Validator.TYPE_CHECKER.redefine(
        "string", lambda checker, value: isinstance(value, (str, bytes))
    )
    validator = extend(Draft4Validator, type_checker=strings)
    return validator(json.loads(SCHEMA_FILE.read_text()), format_checker=FormatChecker())


def schema_errors(config: dict[str, Any], ignore: str | None = None) -> list[str]:
    """cloud-init's schema errors for `config` as `path: message`, in cloud-init's order.
    Errors about a string containing `ignore` (a placeholder) are left out."""
    problems = []
    for error in sorted(_validator().iter_errors(config), key=lambda e: e.path):
        if ignore and ignore in json.dumps(error.instance, default=str):
            continue
        path = ".".join(str(p) for p in error.path)
        problems.append(f"{path}: {error.message}" if path else error.message)
    return problems


def validate(config: dict[str, Any], source: str, ignore: str | None = None) -> None:
    """Raise with the first few of cloud-init's schema errors, if any."""
    problems = schema_errors(config, ignore)
    if problems:
        raise CloudConfigError(f"{source} fails cloud-init's schema: " + "; ".join(problems[:5]))


def dump(config: dict[str, Any]) -> str:
    """The one document the node gets."""
    return HEADER + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000)


# ---- templates --------------------------------------------------------------------------


class Variables:
    """A machine's variables, as templates read them (`var.NAME` or `var["NAME"]`); not a dict,
    so a variable named `update` or `items` is the variable, not a dict method."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> str:
        return self._values[name]


class _Strict(StrictUndefined):
    """An unknown name fails the rendering; a missing variable says how to set it."""

    @property
    def _undefined_message(self) -> str:
        if isinstance(self._undefined_obj, Variables):
            name = self._undefined_name
            return f"variable {name!r} is not set for this machine (a rule sets it: variable {name}=VALUE)"
        return super()._undefined_message


_templates = SandboxedEnvironment(undefined=_Strict, keep_trailing_newline=True, autoescape=False)
_templates.filters["yaml"] = lambda value: json.dumps(value)  # JSON is YAML: safe for any value


def render_template(text: str, context: dict[str, Any], source: str) -> str:
    """Fill `{{ var.NAME }}` and `{{ machine.* }}`; an unknown name is an error on the machine."""
    try:
        return _templates.from_string(text).render(context)
    except TemplateError as err:
        raise CloudConfigError(f"{source}: template error: {err}") from None


class _Probe(Undefined):
    """Stands for any variable when a fragment is checked on its own."""

    def __str__(self) -> str:
        return PLACEHOLDER

    def __getattr__(self, name: str) -> "_Probe":
        return self if not name.startswith("__") else super().__getattr__(name)

    __getitem__ = __getattr__


PLACEHOLDER = "tempered-placeholder"


def check_fragment(name: str, text: str) -> dict[str, Any]:
    """Everything that can be checked before a machine includes the fragment: template syntax,
    YAML, merge_how and the schema (with any variable standing in as a string)."""
    source = f"fragment {name!r}"
    try:
        probe_env = SandboxedEnvironment(undefined=_Probe, autoescape=False)
        rendered = probe_env.from_string(text).render(var=_Probe(), machine=_Probe())
    except TemplateError as err:
        raise CloudConfigError(f"{source}: template error: {err}") from None
    data, _spec = parse(rendered, source)
    validate(data, source, ignore=PLACEHOLDER)
    return data
