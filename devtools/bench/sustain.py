"""The shortest epoch length 3 ``oplog serve`` processes sustain at a steady publish rate.

For each epoch length (longest first) the bench creates a fresh database initialized with
that length and a fixed grace (``Sizes.sustain_grace_ms``, by default the 500 ms of
``oplog init``: the grace covers producer clock skew and publish delay, which do not
shrink with the epoch), and starts 3 ``oplog serve`` processes that seal, as deployed
(:class:`devtools.processes.PeerProcess`, no ``--no-seal``). Once all three have reported a
commit, one real :class:`~oplog.producer.Producer` publishes upserts of random rows of
``users`` at ``Sizes.sustain_rate`` ops/s for ``Sizes.sustain_seconds``. Ops are stamped by
``make_op`` with the producer's HLC, so each falls into the epoch open at that moment. The
bench hears every peer's hash report (``e.<epoch>.<peer>`` in the hashes KV bucket) on its
subject with a core NATS subscription.

Measured epochs: those whose whole window lies inside the publishing run. An epoch is
*committed* by the first commit numbered at or after it (one seal may close several epochs
in one commit, numbered by the last) once all 3 peers have reported that commit. Its
**commit lag** is the time from its seal being due (window end + grace) until the bench
hears the last of the 3 reports.

An epoch length is **sustained** when, with ``bound = max(1000 ms, 2 x epoch length)``:

1. the run measured at least :data:`MIN_EPOCHS` epochs;
2. every measured epoch was committed by all 3 peers (the bench waits for the last one
   until its due time + ``bound`` + :data:`DRAIN_EXTRA_S`);
3. every commit any peer reported during the run has one hash on all peers that reported it,
   and the commits covering the measured epochs were reported by all 3;
4. the p99 (nearest rank) of the lags of the second half of the measured epochs is at most
   ``bound``, and so is the lag of the last measured epoch: the peers are caught up when
   publishing stops;
5. the lag does not grow: its least-squares slope against the epochs' due times is at most
   :data:`MAX_GROWTH_MS_PER_S` (50 ms of lag per second of run, i.e. peers that commit
   less than 95% of the load per unit of time fail, however short the run).

A peer that exits during a run (a divergence stops one with exit 3) makes that run an error.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from devtools.demo import TABLE, USERS
from devtools.natsd import free_ports, http_get
from devtools.processes import PeerProcess, stop_all
from epoch.config import DatabaseConfig, Timeline
from oplog.hlc import HybridLogicalClock
from oplog.producer import Producer
from oplog.topology import Topology
from peer.control import default_origin_ms, init_database, publish_schema

from .options import Sizes
from .stats import percentile
from .streams import connected

PEERS = 3
MIN_EPOCHS = 4
MIN_BOUND_MS = 1000.0
MAX_GROWTH_MS_PER_S = 50.0  # peers that fall 5% of real time behind do not keep up
START_TIMEOUT_S = 120.0  # three interpreters importing, genesis made and installed, a first commit
DRAIN_EXTRA_S = 10.0  # beyond the bound: how long the last epoch may take before it counts as missing
ACK_TIMEOUT_S = 60.0  # for the producer's last acknowledgements after publishing stops
TICK_S = 0.02  # the producer's pacing: each tick makes the ops due by then
KEYS = 100_000  # upserts pick their row among this many

# commit number -> peer -> (wall ms the bench heard the report, hash)
Reports = dict[int, dict[str, tuple[float, str]]]


def lag_bound_ms(epoch_ms: int) -> float:
    """The commit-lag bound of the criterion: ``max(1000 ms, 2 x epoch length)``."""
    return max(MIN_BOUND_MS, 2.0 * epoch_ms)


def epoch_lags(measured: range, due_ms: dict[int, float], reports: Reports, peers: int) -> list[float | None]:
    """Each measured epoch's commit lag (ms), None where no commit at or after it was
    reported by all ``peers``. ``due_ms``: epoch -> its window end + grace (wall ms)."""
    complete = sorted(c for c, by in reports.items() if len(by) >= peers)
    lags: list[float | None] = []
    for epoch in measured:
        covering = next((c for c in complete if c >= epoch), None)
        if covering is None:
            lags.append(None)
        else:
            lags.append(max(t for t, _ in reports[covering].values()) - due_ms[epoch])
    return lags


def disagreements(reports: Reports) -> list[int]:
    """The commits whose reporting peers did not all report one hash."""
    return sorted(c for c, by in reports.items() if len({h for _, h in by.values()}) > 1)


@dataclass(frozen=True)
class Verdict:
    sustained: bool
    why: str  # what failed, "" when sustained
    bound_ms: float
    p50_ms: float | None
    p99_ms: float | None
    second_half_p99_ms: float | None
    last_ms: float | None
    growth_ms_per_s: float | None  # the lag's least-squares slope over the run


def lag_growth(epoch_ms: int, lags: list[float | None]) -> float | None:
    """How fast the lag grew: the least-squares slope of lag against due time, in ms of lag
    per second of run (epochs are ``epoch_ms`` apart); None with fewer than 2 lags."""
    points = [(k * epoch_ms / 1000, x) for k, x in enumerate(lags) if x is not None]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def judge(epoch_ms: int, lags: list[float | None], agree: bool) -> Verdict:
    """The sustain criterion (module docstring) over the measured epochs' lags, in epoch order."""
    bound = lag_bound_ms(epoch_ms)
    done = [x for x in lags if x is not None]
    half = [x for x in lags[len(lags) // 2 :] if x is not None]
    p50 = percentile(done, 50) if done else None
    p99 = percentile(done, 99) if done else None
    tail = percentile(half, 99) if half else None
    last = lags[-1] if lags else None
    growth = lag_growth(epoch_ms, lags)
    why = ""
    if len(lags) < MIN_EPOCHS:
        why = f"only {len(lags)} epochs measured (< {MIN_EPOCHS})"
    elif len(done) < len(lags):
        why = f"{len(lags) - len(done)} of {len(lags)} epochs not committed by all peers"
    elif not agree:
        why = "peers disagree"
    elif tail is not None and tail > bound:
        why = f"second-half p99 {tail:.0f} ms > {bound:.0f} ms"
    elif last is not None and last > bound:
        why = f"last epoch {last:.0f} ms > {bound:.0f} ms"
    elif growth is not None and growth > MAX_GROWTH_MS_PER_S:
        why = f"lag grew {growth:.0f} ms/s > {MAX_GROWTH_MS_PER_S:.0f}"
    return Verdict(not why, why, bound, p50, p99, tail, last, growth)


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux; None elsewhere)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The peer's own figures, from its /metrics: (name of the sum, name of the count) or a counter.
METRICS = {"commit": ("oplog_epoch_commit_seconds_sum", "oplog_epoch_commit_seconds_count"),
           "due_to_commit": ("oplog_seal_to_commit_seconds_sum", "oplog_seal_to_commit_seconds_count"),
           "late_ops": ("oplog_ops_late_total", None)}  # fmt: skip


async def _scrape(port: int) -> dict[str, float]:
    """The ``METRICS`` series of one peer (empty if its endpoint did not answer)."""
    status, body = await asyncio.to_thread(http_get, port, "/metrics", 2.0)
    wanted = {n for pair in METRICS.values() for n in pair if n}
    out: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines() if status == 200 else []:
        name = line.partition("{")[0].partition(" ")[0]
        if name in wanted:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[-1])
    return out


def peer_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """What one peer did between two scrapes: mean ms of a commit (plan + commit) and of
    due-to-commit as the peer measures it, and the ops it carried late."""
    out: dict[str, float | None] = {}
    for key, (total, count) in METRICS.items():
        d = after.get(total, 0.0) - before.get(total, 0.0)
        if count is None:
            out[key] = d
        else:
            n = after.get(count, 0.0) - before.get(count, 0.0)
            out[key + "_ms_mean"] = d / n * 1000 if n else None
    return out


def _share(before: float | None, after: float | None, seconds: float) -> float | None:
    """CPU seconds per second of run between two readings of :func:`_cpu_s`."""
    return None if before is None or after is None or seconds <= 0 else (after - before) / seconds


def _check_alive(peers: list[PeerProcess]) -> None:
    dead = [p for p in peers if not p.running]
    if dead:
        code = dead[0].proc.returncode if dead[0].proc else "?"
        raise RuntimeError(f"peer {dead[0].name} exited {code}:\n{dead[0].log_tail()}")


async def _wait_start(reports: Reports, peers: list[PeerProcess]) -> int:
    """Until all peers reported one commit; its number."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        full = [c for c, by in reports.items() if len(by) >= len(peers)]
        if full:
            return max(full)
        _check_alive(peers)
        if time.monotonic() > deadline:
            raise TimeoutError(f"sustain: no commit by all {len(peers)} peers within {START_TIMEOUT_S:g} s; "
                               f"last log lines of {peers[0].name}:\n{peers[0].log_tail(10)}")  # fmt: skip
        await asyncio.sleep(0.05)


async def _publish(producer: Producer, rate: int, seconds: float, rng: random.Random) -> tuple[float, float, int]:
    """Publish ``rate`` ops/s for ``seconds``: (start, stop) wall ms and the ops acknowledged."""
    tasks: list[asyncio.Task[int]] = []

    async def send(ops: list[Any]) -> int:
        return len(await producer.publish_many(ops))

    t0 = time.time() * 1000
    start = time.monotonic()
    made = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(rate * elapsed)
        ops = [producer.make_op(TABLE, f"k{rng.randrange(KEYS):08d}", "upsert",
                                {"name": f"n-{made + i}", "score": made + i}) for i in range(due - made)]  # fmt: skip
        made = due
        if ops:
            tasks.append(asyncio.create_task(send(ops)))
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            break
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - start - elapsed)))
    t1 = time.time() * 1000
    try:
        acked = await asyncio.wait_for(asyncio.gather(*tasks), ACK_TIMEOUT_S)
    finally:
        for t in tasks:
            t.cancel()
    return t0, t1, sum(acked)


async def _sustain_one(nc: Client, url: str, work: Path, epoch_ms: int, s: Sizes, rng: random.Random) -> dict[str, Any]:
    js = nc.jetstream()
    topology = Topology(db=f"sus{epoch_ms}")
    config = DatabaseConfig(db=topology.db, origin_ms=default_origin_ms(epoch_ms), epoch_ms=epoch_ms,
                            grace_ms=s.sustain_grace_ms)  # fmt: skip
    timeline = Timeline.from_config(config)
    await init_database(js, topology, config)
    await publish_schema(js, topology, USERS)
    reports: Reports = {}
    prefix = f"$KV.{topology.hashes_bucket}.e."

    async def on_report(msg: Msg) -> None:
        heard = time.time() * 1000
        epoch, peer = msg.subject[len(prefix) :].split(".", 1)
        reports.setdefault(int(epoch), {})[peer] = (heard, msg.data.decode())

    sub = await nc.subscribe(prefix + ">", cb=on_report)
    ports = free_ports(PEERS)
    peers = [PeerProcess(f"s{i}", topology.db, url, work / f"sus{epoch_ms}-p{i}",
                         extra=["--expected-peers", str(PEERS), "--metrics-port", str(ports[i])])
             for i in range(PEERS)]  # fmt: skip
    try:
        for p in peers:
            p.start()
        first_commit = await _wait_start(reports, peers)
        cpu0 = [_cpu_s(p.proc.pid if p.proc else None) for p in peers]
        metrics0 = [await _scrape(port) for port in ports]
        async with Producer(js, topology, clock=HybridLogicalClock("sustain")) as producer:
            publishing = asyncio.create_task(_publish(producer, s.sustain_rate, s.sustain_seconds, rng))
            try:
                while not publishing.done():  # a peer that dies stops the run at once
                    await asyncio.wait({publishing}, timeout=0.5)
                    if not publishing.done():
                        _check_alive(peers)
            finally:
                publishing.cancel()
            t0, t1, acked = publishing.result()
        cpu1 = [_cpu_s(p.proc.pid if p.proc else None) for p in peers]
        measured = range(timeline.epoch_of(int(t0) - 1) + 1, timeline.epoch_of(int(t1)))
        due = {e: float(timeline.end_ms(e) + config.grace_ms) for e in measured}
        bound = lag_bound_ms(epoch_ms)
        if measured:  # wait for the last measured epoch: until caught up, or past the bound
            deadline = time.monotonic() + max(0.0, due[measured[-1]] + bound - time.time() * 1000) + DRAIN_EXTRA_S
            while epoch_lags(measured[-1:], due, reports, PEERS)[0] is None and time.monotonic() < deadline:
                _check_alive(peers)
                await asyncio.sleep(0.05)
        metrics1 = [await _scrape(port) for port in ports]
    finally:
        await sub.unsubscribe()
        await asyncio.to_thread(stop_all, peers)
    lags = epoch_lags(measured, due, reports, PEERS)
    bad = disagreements(reports)
    verdict = judge(epoch_ms, lags, not bad)
    seconds = (t1 - t0) / 1000
    commits = sorted(c for c in reports if measured and measured[0] <= c <= measured[-1])
    return {
        "epoch_ms": epoch_ms,
        "grace_ms": config.grace_ms,
        "peers": PEERS,
        "target_rate_ops_per_s": s.sustain_rate,
        "seconds": seconds,
        "ops_acked": acked,
        "ops_per_s": acked / seconds if seconds > 0 else 0.0,
        "first_commit": first_commit,
        "measured_epochs": [measured.start, measured.stop - 1] if measured else [],
        "epochs": len(measured),
        "epochs_committed": sum(x is not None for x in lags),
        "commits": len(commits),  # below epochs when seals closed several epochs in one commit
        "disagreeing_commits": bad,
        "agree": not bad,
        **asdict(verdict),
        "max_growth_ms_per_s": MAX_GROWTH_MS_PER_S,
        "peer_cpu_share": [_share(a, b, seconds) for a, b in zip(cpu0, cpu1, strict=True)],
        "peer_metrics": [peer_figures(a, b) for a, b in zip(metrics0, metrics1, strict=True)],
        "lags_ms": lags,
    }


async def measure_sustain(url: str, s: Sizes, work: Path, rng: random.Random) -> dict[str, Any]:
    """One run per epoch length of ``s.sustain_epoch_ms``, longest first; the shortest sustained."""
    out: dict[str, Any] = {"rate_ops_per_s": s.sustain_rate, "seconds": s.sustain_seconds,
                           "grace_ms": s.sustain_grace_ms, "peers": PEERS}  # fmt: skip
    async with connected(url, name="oplog-bench-sustain") as nc:
        for epoch_ms in sorted(set(s.sustain_epoch_ms), reverse=True):
            try:
                out[str(epoch_ms)] = await _sustain_one(nc, url, work, epoch_ms, s, rng)
            except Exception as e:  # the other lengths still run; the bench exits 1
                out[str(epoch_ms)] = {"epoch_ms": epoch_ms, "error": f"{type(e).__name__}: {e}"}
    sustained = [int(k) for k, r in out.items() if k.isdigit() and r.get("sustained")]
    out["shortest_sustained_ms"] = min(sustained) if sustained else None
    return out
