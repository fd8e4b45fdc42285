"""Flat command-line flags and STAR_* variables for a config made of frozen sub-config dataclasses.

A sub-config field becomes one flag named after it (or after its metadata's `flag`), with its help from
the metadata: `ServerConfig.batching.max_batch_tokens` is `--max-batch-tokens` and
`STAR_MAX_BATCH_TOKENS`. A flag wins over the variable, the variable over the default. Fields whose
metadata says `cli: False` are not flags.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag: which sub-config field it fills."""

    section: str
    field: dataclasses.Field[Any]

    @property
    def name(self) -> str:
        """The flag's name in snake case (also the argparse destination)."""
        return str(self.field.metadata.get("flag", self.field.name))

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def kind(self) -> str:
        return str(self.field.type)


def env_name(name: str) -> str:
    return "STAR_" + name.upper()


def sections_of(config_type: type) -> dict[str, Any]:
    """Section name -> its sub-config class, for a config whose fields all default to a sub-config."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(config_type):
        sub = section.default_factory
        if sub is dataclasses.MISSING or not dataclasses.is_dataclass(sub):
            raise TypeError(f"{config_type.__name__}.{section.name} must be a sub-config dataclass")
        out[section.name] = sub
    return out


def flags_of(config_type: type) -> Iterator[Flag]:
    """The flags of every sub-config of `config_type`, in declaration order."""
    for name, sub in sections_of(config_type).items():
        for f in dataclasses.fields(sub):
            if f.metadata.get("cli", True):
                yield Flag(name, f)


def add_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One argparse option per flag, grouped in `--help` by sub-config (the group's title is the
    section name, its description the sub-config's docstring's first line); defaults stay None so the
    environment can fill them later."""
    groups: dict[str, Any] = {}
    for name, sub in sections_of(config_type).items():
        doc = (sub.__doc__ or "").strip().splitlines()
        groups[name] = parser.add_argument_group(name, doc[0] if doc else None)
    for flag in flags_of(config_type):
        group = groups[flag.section]
        default = flag.field.default
        help_text = f"{flag.field.metadata['help']} [env {flag.env}; default {_show(default)}]"
        if flag.kind == "bool":
            group.add_argument(
                flag.option,
                dest=flag.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif flag.kind.startswith("tuple"):
            group.add_argument(flag.option, dest=flag.name, action="append", default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(flag.kind, str)
            group.add_argument(flag.option, dest=flag.name, type=kind, default=None, help=help_text)


def read_flags(
    config_type: type, args: argparse.Namespace, env: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The values that flags or variables set, per section (unset fields are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for flag in flags_of(config_type):
        raw = getattr(args, flag.name, None)
        if raw is None and flag.env in env:
            raw = env[flag.env]
        if raw is None:
            continue
        try:
            value = _parse(flag.kind, raw)
        except ValueError:
            raise ValueError(f"{flag.option}: cannot read {raw!r} as {flag.kind}") from None
        out.setdefault(flag.section, {})[flag.field.name] = value
    return out


def _show(value: Any) -> str:
    if value in ("", ()):
        return "unset"
    return str(value)


def _parse(kind: str, raw: Any) -> Any:
    if kind.startswith("tuple"):
        items = raw if isinstance(raw, list) else [raw]
        return tuple(u.strip() for item in items for u in str(item).split(",") if u.strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return str(raw)
