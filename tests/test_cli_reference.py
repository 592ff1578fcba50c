"""docs/cli.md is the parser's own account of every command and option."""

from __future__ import annotations

from pathlib import Path

from devtools.reference import reference
from peer import settings
from peer.cli import build_parser

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_reference_page_is_up_to_date() -> None:
    assert PAGE.read_text() == reference(build_parser()), (
        "docs/cli.md is out of date: run `python -m devtools.reference > docs/cli.md`"
    )


def test_every_option_of_every_command_is_on_the_page_with_its_variable() -> None:
    page = PAGE.read_text()
    parser = build_parser()
    names = [name for name, _ in settings.commands(parser)]
    assert {"init", "serve", "status", "config set", "roster", "publish", "verify", "wait", "sql", "changes"} <= set(names)
    for name, command in settings.commands(parser):
        assert f"## `oplog {name}`" in page
        for action in settings.options(command):
            assert f"`{settings.env_name(action.dest)}`" in page, (name, action.dest)
