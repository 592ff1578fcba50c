"""Every option of every command, from a flag, an environment variable or a config file.

The argparse parser is the one declaration of options; this module derives the other
two sources from it, so they cannot drift:

* environment: ``OPLOG_<OPTION>`` (``--epoch-ms`` -> ``OPLOG_EPOCH_MS``), except the
  connection options, which keep the names in :data:`ENV_NAMES` (``OPLOG_NATS_URL``…);
* a TOML file given with ``--config FILE`` (or ``OPLOG_CONFIG``): top-level keys apply
  to every command that has the option, a table per command (``[serve]``,
  ``["config set"]``) to that command only; keys are option names (``epoch-ms`` or
  ``epoch_ms``).

Precedence: flag, then environment, then the command's table, then the file's top
level, then the built-in default. ``docs/cli.md`` lists every option with its
variable (``python -m devtools.reference`` writes it).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from oplog.errors import OplogError

CONFIG_ENV = "OPLOG_CONFIG"
# Connection options keep the names they have always had; NATS_URL is what the `nats`
# CLI reads, honoured after OPLOG_NATS_URL.
ENV_NAMES = {
    "nats": "OPLOG_NATS_URL",
    "connect_timeout": "OPLOG_NATS_CONNECT_TIMEOUT",
    "user": "OPLOG_NATS_USER",
    "password": "OPLOG_NATS_PASSWORD",
    "token": "OPLOG_NATS_TOKEN",
    "creds": "OPLOG_NATS_CREDS",
    "nkey": "OPLOG_NATS_NKEY",
    "tls_ca": "OPLOG_NATS_TLS_CA",
    "tls_cert": "OPLOG_NATS_TLS_CERT",
    "tls_key": "OPLOG_NATS_TLS_KEY",
}
FALLBACK_ENV = {"nats": ("NATS_URL",)}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class SettingsError(OplogError):
    """A config file or an environment variable holds something the option cannot take."""


def env_name(dest: str) -> str:
    return ENV_NAMES.get(dest, "OPLOG_" + dest.upper())


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command name, its parser)`` for every leaf command (``"config set"`` for nested ones)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, f"{prefix} {name}".strip())


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The options of one command that settings may set (not help, not positionals)."""
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "version") and action.help != argparse.SUPPRESS:
            yield action


def load_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not TOML: {e}") from None


def _from_text(action: argparse.Action, text: str, where: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        lowered = text.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise SettingsError(f"{where}: {text!r} is not true or false")
        return (lowered in _TRUE) == isinstance(action, argparse._StoreTrueAction)
    return text  # argparse converts a string default with the action's type


def _from_file(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, str):
        return _from_text(action, value, where)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: {value!r} is not true or false")
        return value == isinstance(action, argparse._StoreTrueAction)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # converted and checked by the option's type, like a flag
    raise SettingsError(f"{where}: {value!r} is not a value this option takes")


def _tables(file: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``command -> its table``; a nested table (``[config.set]``) is ``"config set"``."""
    tables: dict[str, dict[str, Any]] = {}
    for key, value in file.items():
        if not isinstance(value, dict):
            continue
        own = {k: v for k, v in value.items() if not isinstance(v, dict)}
        if own:
            tables[key] = own
        for sub, sub_value in value.items():
            if isinstance(sub_value, dict):
                tables[f"{key} {sub}"] = sub_value
    return tables


def _keys(action: argparse.Action) -> set[str]:
    return {action.dest, action.dest.replace("_", "-")}


def apply(parser: argparse.ArgumentParser, environ: Mapping[str, str], file: Mapping[str, Any] | None) -> None:
    """Set every option's default from ``environ`` and ``file`` (see the module docstring).

    Raises :class:`SettingsError` for a table that names no command, a key that is no
    option, or a value the option cannot take."""
    file = file or {}
    everywhere = {k: v for k, v in file.items() if not isinstance(v, dict)}
    tables = _tables(file)
    by_name = dict(commands(parser))
    for name in tables:
        if name not in by_name:
            raise SettingsError(f"config file: [{name}] is not a command ({', '.join(sorted(by_name))})")
    all_keys = {key for command in by_name.values() for action in options(command) for key in _keys(action)}
    for key in everywhere:
        if key not in all_keys:
            raise SettingsError(f"config file: {key!r} is not an option of any command")
    for name, command in by_name.items():
        table = tables.get(name, {})
        own_keys = {key for action in options(command) for key in _keys(action)}
        for key in table:
            if key not in own_keys:
                raise SettingsError(f"config file: [{name}] {key!r} is not an option of `oplog {name}`")
        for action in options(command):
            value: Any = None
            for source, where in ((everywhere, "config file"), (table, f"config file [{name}]")):
                for key in _keys(action) & set(source):
                    value = _from_file(action, source[key], f"{where} {key}")
            for env in (env_name(action.dest), *FALLBACK_ENV.get(action.dest, ())):
                if environ.get(env):
                    value = _from_text(action, environ[env], env)
                    break
            if value is not None:
                action.default = value
                action.required = False  # given by the environment or the file


def config_path(argv: list[str], environ: Mapping[str, str]) -> Path | None:
    """``--config FILE`` from ``argv`` (before any command), else ``$OPLOG_CONFIG``."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", type=Path)
    known, _ = early.parse_known_args(argv)
    if known.config is not None:
        return Path(known.config)
    return Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None


def configure(parser: argparse.ArgumentParser, argv: list[str], environ: Mapping[str, str] = os.environ) -> None:
    """Apply the environment and the config file named in ``argv`` to ``parser``'s defaults."""
    path = config_path(argv, environ)
    apply(parser, environ, load_file(path) if path is not None else None)
