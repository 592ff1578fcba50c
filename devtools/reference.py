"""Writes docs/cli.md, the reference of every command and option: ``python -m devtools.reference``.

``tests/test_cli_reference.py`` fails when the page differs from what this prints, so
the page is always the parser's own account of the options.
"""

from __future__ import annotations

import argparse
import sys

from peer import settings
from peer.cli import build_parser

INTRO = """# Command reference

Generated from the parser by `python -m devtools.reference > docs/cli.md`; a test fails
when this page is out of date.

Every option can also be set with an environment variable (the **env** column) or in a
TOML file given with `--config FILE` (or `OPLOG_CONFIG`): top-level keys apply to every
command that has the option, a table per command (`[serve]`, `[config.set]`) to that
command only. A flag wins over the environment, the environment over the file.

```toml
# oplog.toml: every command talks to this cluster, as this database
nats = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
db = "shop"
connect-timeout = 20

[serve]
data-dir = "/var/lib/oplog/a"
name = "a"
metrics-port = 9464
```
"""


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return ""
    default = action.default
    if default is None or default == argparse.SUPPRESS:
        return ""
    return f"`{default}`"


def _usage(command: argparse.ArgumentParser) -> str:
    # A fixed width: argparse otherwise wraps to the terminal, and the page would differ.
    formatter = argparse.HelpFormatter(command.prog, width=100)
    formatter.add_usage(command.usage, command._actions, command._mutually_exclusive_groups)
    return formatter.format_help().strip()


def reference(parser: argparse.ArgumentParser) -> str:
    """The markdown page for ``parser``."""
    lines = [INTRO]
    for name, command in settings.commands(parser):
        lines.append(f"## `oplog {name}`\n")
        lines.append("```text\n" + _usage(command) + "\n```\n")
        lines.append("| option | env | default | what |")
        lines.append("|---|---|---|---|")
        for action in settings.options(command):
            flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
            what = (action.help or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {flags} | `{settings.env_name(action.dest)}` | {_default(action)} | {what} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    # Built without the environment's settings, so the page shows the true defaults.
    sys.stdout.write(reference(build_parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
