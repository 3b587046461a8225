"""Settings as dataclasses: one loader for TOML files and CLI flags, help on each field.

A program's configuration is a tree of dataclasses. Each setting is a field made by
:func:`setting`, which keeps the default and the help text (and optional bounds or
choices) together; a nested dataclass field made by :func:`section` is a TOML table::

    @dataclass
    class HttpConfig:
        port: int = setting(8080, "HTTP port (0 picks a free port)", min=0, max=65535)

    @dataclass
    class Config:
        http: HttpConfig = section(HttpConfig)

    config = load_toml(Config, "pool.toml")                       # file over defaults
    config = override(config, {"http.port": 9000})                # flags over the file
    check_bounds(config)                                          # min/max/choices
    print(toml_text(config))                                      # a commented file

Values are checked against the field's type (``bool``, ``int``, ``float``, ``str``,
``dict[str, ...]``, ``tuple[str, ...]`` or a nested dataclass); an ``int`` is accepted
for a ``float``. Every problem raises :class:`ConfigError` with one line naming the key,
the expected type and the value, and an unknown key is answered with the nearest known one.
How a key is named in messages is the :class:`Style` (``[http] port`` or ``http.port``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting that cannot be used; the one-line message names the key."""


TOML_TYPE_NAMES: Mapping[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table",
    tuple: "a list of strings",
}
PYTHON_TYPE_NAMES: Mapping[type, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    dict: "dict",
    tuple: "list",
}


@dataclass(frozen=True)
class Style:
    """How messages name a key: ``[section] key`` (``sections``) or ``section.key``."""

    sections: bool = False
    type_names: Mapping[type, str] = dataclasses.field(default_factory=lambda: TOML_TYPE_NAMES)

    def where(self, path: tuple[str, ...]) -> str:
        if self.sections and len(path) > 1:
            return f"[{'.'.join(path[:-1])}] {path[-1]}"
        return ".".join(path)


DOTTED = Style()


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    positive: bool = False,
    choices: tuple[Any, ...] | None = None,
    example: tuple[str, ...] = (),
) -> Any:
    """A dataclass field: ``default``, its ``help`` and optional bounds.

    ``positive`` demands a value > 0, ``min``/``max`` inclusive bounds, ``choices`` one
    of the listed values; :func:`check_bounds` enforces them. ``example`` is a list of
    comment lines :func:`toml_text` prints under a table-valued setting.
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "positive": positive,
        "choices": choices,
        "example": example,
    }
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, help: str = "") -> Any:
    """A dataclass field holding the nested section ``cls`` (a TOML table)."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def help_of(f: dataclasses.Field[Any]) -> str:
    """The help text of a field made by :func:`setting` ('' for others)."""
    return str(f.metadata.get("help", ""))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls`` (annotations may be strings), cached."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fields(cls_or_obj: Any) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls_or_obj) if f.init}


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def check_type(hint: Any, value: Any, path: tuple[str, ...], style: Style = DOTTED) -> Any:
    """``value`` as the type ``hint`` wants (int → float), else ``ConfigError``."""
    origin = typing.get_origin(hint) or hint
    expected = style.type_names.get(origin, str(hint))
    fail = ConfigError(f"{style.where(path)} must be {expected}, got {value!r}")
    if origin is bool:
        if not isinstance(value, bool):
            raise fail
    elif origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail
    elif origin is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail
        return float(value)
    elif origin is str:
        if not isinstance(value, str):
            raise fail
    elif origin is dict:
        if not isinstance(value, dict):
            raise fail
        return dict(value)
    elif origin is tuple and typing.get_args(hint) in ((str, ...), ()):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise fail
        return tuple(value)
    else:  # pragma: no cover - a programming error, not a user's
        raise TypeError(f"{style.where(path)}: unsupported setting type {hint!r}")
    return value


def from_dict(
    cls: type,
    data: Mapping[str, Any],
    *,
    style: Style = DOTTED,
    path: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> Any:
    """An instance of the dataclass ``cls`` from parsed TOML; what is missing is default.

    Unknown keys, wrong types and non-tables for sections raise ``ConfigError``; the
    fields named in ``skip`` are left to the caller (not read from ``data``).
    """
    fields, hints = _fields(cls), _hints(cls)
    known = [name for name in fields if name not in skip]
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = (*path, key)
        if key not in known:
            if style.sections and not path:
                raise ConfigError(f"unknown section [{key}]{_unknown(key, known)}")
            if style.sections:
                raise ConfigError(
                    f"unknown key {key!r} in [{'.'.join(path)}]{_unknown(key, known)}"
                )
            if not path:
                raise ConfigError(f"unknown key {key!r}{_unknown(key, known)}")
            full = [".".join((*path, name)) for name in known]
            raise ConfigError(f"unknown key {'.'.join(where)}{_unknown('.'.join(where), full)}")
        hint = hints[key]
        if _is_section(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"[{'.'.join(where)}] must be a table")
            values[key] = from_dict(hint, value, style=style, path=where)
        else:
            values[key] = check_type(hint, value, where, style)
    return cls(**values)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file ``path``; a missing or broken file is a ``ConfigError``."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_toml(cls: type, path: str | Path | None, *, style: Style = DOTTED) -> Any:
    """``cls`` from the TOML file ``path`` (``None``: all defaults)."""
    return from_dict(cls, read_toml(path) if path is not None else {}, style=style)


def parse_text(hint: Any, text: str) -> Any:
    """A command-line string as the type ``hint`` (``true``/``false`` for booleans)."""
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                text.lower()
            ]
        if origin is int:
            return int(text)
        if origin is float:
            return float(text)
        if origin is tuple:
            return tuple(part for part in text.split(",") if part)
    except (KeyError, ValueError):
        raise ValueError(f"not {TOML_TYPE_NAMES.get(origin, origin)}: {text!r}") from None
    return text


def setting_type(cls: type, dotted: str) -> Any:
    """The type of the setting ``dotted`` (``"stratum.port"``) in the tree ``cls``."""
    *parents, key = dotted.split(".")
    for name in parents:
        cls = _hints(cls)[name]
    return _hints(cls)[key]


def override(
    obj: Any, values: Mapping[str, Any], *, style: Style = DOTTED, text: bool = False
) -> Any:
    """A copy of ``obj`` with the dotted settings ``values`` (``{"http.port": 9000}``).

    ``text``: the values are command-line strings, parsed with :func:`parse_text`.
    An unknown setting or a wrong type is a ``ConfigError``; ``obj`` is not changed.
    """
    return _override(obj, values, style, text, ())


def _override(
    obj: Any, values: Mapping[str, Any], style: Style, text: bool, path: tuple[str, ...]
) -> Any:
    grouped: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    fields, hints = _fields(obj), _hints(type(obj))
    for dotted, value in values.items():
        head, dot, rest = dotted.partition(".")
        if head not in fields or bool(dot) != _is_section(hints[head]):
            full, known = ".".join((*path, dotted)), [".".join((*path, n)) for n in fields]
            raise ConfigError(f"unknown setting {full!r}{_unknown('.'.join((*path, head)), known)}")
        if dot:
            grouped.setdefault(head, {})[rest] = value
            continue
        if text and isinstance(value, str):
            try:
                value = parse_text(hints[head], value)
            except ValueError as exc:
                raise ConfigError(f"{style.where((*path, head))}: {exc}") from None
        changes[head] = check_type(hints[head], value, (*path, head), style)
    for head, inner in grouped.items():
        changes[head] = _override(getattr(obj, head), inner, style, text, (*path, head))
    return dataclasses.replace(obj, **changes)


def walk(
    obj: Any, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dataclasses.Field[Any], Any]]:
    """Every setting of the tree ``obj``: (dotted path, field, value), in field order."""
    hints = _hints(type(obj))
    for name, f in _fields(obj).items():
        value = getattr(obj, name)
        if _is_section(hints[name]):
            yield from walk(value, (*path, name))
        else:
            yield (*path, name), f, value


def check_bounds(obj: Any) -> None:
    """Enforce every field's ``positive``, ``min``, ``max`` and ``choices``."""
    for path, f, value in walk(obj):
        name, meta = ".".join(path), f.metadata
        low, high = meta.get("min"), meta.get("max")
        if meta.get("positive") and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
        if low is not None and high is not None and not low <= value <= high:
            raise ConfigError(f"{name} must be in {low}..{high}, got {value}")
        if low is not None and high is None and value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
        if high is not None and low is None and value > high:
            raise ConfigError(f"{name} must be at most {high}, got {value}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}"
            )


def help_table(cls: type) -> dict[str, dict[str, str]]:
    """``{"section": {key: help}}`` of every setting of ``cls`` (top-level keys under "")."""
    table: dict[str, dict[str, str]] = {}
    for path, f, _ in walk(cls()):
        table.setdefault(".".join(path[:-1]), {})[path[-1]] = help_of(f)
    return table


def toml_value(value: Any) -> str:
    """``value`` written as TOML (big numbers with ``_`` separators or an exponent)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if value < 1e9 else f"{value:.0e}".replace("e+", "e")
    if isinstance(value, int):
        return f"{value:_}" if value >= 100_000 else str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def _toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else toml_value(key)


def toml_text(obj: Any, header: tuple[str, ...] = ()) -> str:
    """A complete TOML file of ``obj``'s values, each key under a comment with its help."""
    lines = [f"# {line}" for line in header]
    if header:
        lines.append("")
    _toml_lines(obj, (), lines)
    return "\n".join(lines)


def _toml_lines(obj: Any, path: tuple[str, ...], lines: list[str]) -> None:
    hints = _hints(type(obj))
    sections = []
    if path:
        lines.append(f"[{'.'.join(path)}]")
    for name, f in _fields(obj).items():
        value = getattr(obj, name)
        if _is_section(hints[name]):
            sections.append(name)
        elif not isinstance(value, dict):
            lines += [f"# {help_of(f)}", f"{name} = {toml_value(value)}"]
    for name, f in _fields(obj).items():  # tables of free-form keys, after the plain keys
        value = getattr(obj, name)
        if isinstance(value, dict) and not _is_section(hints[name]):
            lines += [
                "",
                f"# {help_of(f)}",
                f"[{'.'.join((*path, name))}]",
                *f.metadata.get("example", ()),
                *(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()),
            ]
    if path:
        lines.append("")
    for name in sections:
        _toml_lines(getattr(obj, name), (*path, name), lines)


def cli_help(cls: type, dotted: str) -> str:
    """A flag's help: the setting's help, its config key and its default."""
    *parents, key = dotted.split(".")
    obj = cls()
    for part in parents:
        obj = getattr(obj, part)
    f = _fields(obj)[key]
    where = f"[{'.'.join(parents)}] {key}" if parents else key
    return f"{help_of(f)} (config: {where}; default {toml_value(getattr(obj, key))})"


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--key`` option per top-level setting of ``cls``, typed, help from the field.

    Every option defaults to ``None`` (not given), so the result can go to
    :func:`override` after dropping the ``None`` values.
    """
    defaults = cls()
    for name, f in _fields(cls).items():
        hint = _hints(cls)[name]
        if _is_section(hint):
            continue
        kind = hint if hint in (int, float, str) else functools.partial(parse_text, hint)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            type=kind,
            help=f"{help_of(f)} (default: {getattr(defaults, name)})",
        )
