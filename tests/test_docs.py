"""Every code block of the README and docs runs (or says why not), so the docs cannot drift.

See tests/docs_blocks.py for the conventions. Each document runs in its own world (a
real nats-server, a scratch directory); its blocks run in order, each after the ones
before it, as a reader would type them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs_blocks import CHECKED, DOCUMENTS, World, blocks

pytestmark = pytest.mark.integration


def test_every_checked_block_runs_or_says_why_not() -> None:
    unexplained = [b.name for d in DOCUMENTS for b in blocks(d)
                   if b.language in CHECKED and "norun" in b.attributes and not b.norun.strip()]  # type: ignore[union-attr]
    assert unexplained == [], "a block marked norun must give its reason: norun=\"why\""
    skipped = [f"{b.name}: {b.norun}" for d in DOCUMENTS for b in blocks(d) if b.language in CHECKED and b.norun]
    print("blocks not run, and why:\n  " + "\n  ".join(skipped))
    ran = [b for d in DOCUMENTS for b in blocks(d) if b.language in CHECKED and not b.norun]
    assert len(ran) >= 10  # the docs do show runnable code: a parser that found none is broken


@pytest.mark.timeout(900)
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if any(b.language in CHECKED for b in blocks(d))])
def test_the_code_blocks_of(document: str, tmp_path: Path) -> None:
    world = World(tmp_path).start()
    try:
        world.declare_files(document)
        for block in blocks(document):
            if block.language not in CHECKED or block.norun:
                continue
            out = world.run(block)
            print(f"--- {block.name} ({block.language}): ok\n{out[-2000:]}")
    finally:
        world.stop()
