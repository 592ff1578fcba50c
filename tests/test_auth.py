"""A guarded stream: NATS authentication, TLS and oplog's roles as permissions, end to end.

Everything that talks to NATS runs against a real ``nats-server`` configured with the
``authorization`` block that ``peer/auth.py`` generates; every server and peer process
is stopped in a ``finally``. TLS certificates are made at test time with ``openssl``
(the ``cryptography`` package is not a dependency); without it those tests fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nkeys
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from devtools.natsd import NatsServer, ServerTls, find_nats_server
from devtools.processes import PeerProcess
from materializer.agreement.hashes import HashBoard
from oplog.connection import NatsOptions, connect, redact
from oplog.errors import NatsAuthError
from oplog.stream import publish_json
from oplog.topology import Topology
from peer.auth import (
    Permissions,
    Plan,
    admin_permissions,
    build_users,
    new_nkey_seed,
    peer_permissions,
    producer_permissions,
    public_nkey,
    render,
)
from peer.cli import build_parser
from peer.commands.common import nats_options
from peer.service import PeerConfig
from tests.support import read_db

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = Topology(db="t")
REFUSED_WITHIN_S = 5.0  # a refused login must not retry: it fails at the first answer
COLUMNS = [{"name": "id", "type": "text", "nullable": False}, {"name": "name", "type": "text"}]
SCHEMA = {"tables": [{"name": "users", "primary_key": ["id"], "strategy": "lww", "columns": COLUMNS}]}


# ---- without a server ----


def test_redact_hides_passwords_and_tokens_but_keeps_users_and_hosts() -> None:
    assert redact("nats://u:s3cret@h:4222") == "nats://u:***@h:4222"
    assert redact("nats://tok3n@h:4222") == "nats://***@h:4222"
    assert redact("nats://a:x@h1:1,nats://h2:2,tls://b:p@ss@h3") == "nats://a:***@h1:1,nats://h2:2,tls://b:***@h3"
    assert redact("u:pw@127.0.0.1:4222") == "u:***@127.0.0.1:4222"
    assert redact("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_options_take_credentials_from_the_url_and_never_show_them() -> None:
    options = NatsOptions(url="nats://ann:p%40ss@h1:4222,nats://h2:4222")
    assert options.servers == ["nats://h1:4222", "nats://h2:4222"]
    assert options.credentials() == ("ann", "p@ss", None)
    assert options.display_url == "nats://ann:***@h1:4222,nats://h2:4222"
    kwargs = options.connect_kwargs(name="x")
    assert (kwargs["user"], kwargs["password"]) == ("ann", "p@ss") and "p%40ss" not in str(kwargs["servers"])
    assert NatsOptions(url="nats://tok@h").credentials() == (None, None, "tok")
    # Explicit fields win over the URL's; secrets are not in the repr.
    explicit = NatsOptions(url="nats://ann:old@h", user="bob", password="new")
    assert explicit.credentials() == ("bob", "new", None)
    config = PeerConfig(name="a", db="t", data_dir=Path("."), nats=explicit)
    assert "new" not in repr(explicit) and "new" not in repr(config)


def test_options_refuse_two_ways_to_authenticate_and_half_pairs() -> None:
    with pytest.raises(ValueError, match="not user/password and nkey"):
        NatsOptions(user="u", password="p", nkey=Path("x.nk"))
    with pytest.raises(ValueError, match="needs a password"):
        NatsOptions(user="u")
    with pytest.raises(ValueError, match="needs its key"):
        NatsOptions(tls_cert=Path("c.pem"))


def test_the_default_url_is_ours_then_the_nats_clis_then_loopback() -> None:
    assert NatsOptions.default_url({}) == "nats://127.0.0.1:4222"
    assert NatsOptions.default_url({"NATS_URL": "nats://n:1"}) == "nats://n:1"
    assert NatsOptions.default_url({"NATS_URL": "nats://n:1", "OPLOG_NATS_URL": "nats://o:2"}) == "nats://o:2"


def test_cli_flags_become_options_and_a_bad_combination_is_one_plain_error() -> None:
    args = build_parser().parse_args(["status", "--nats", "nats://h:1", "--user", "u", "--password", "pw"])
    options = nats_options(args)
    assert options.credentials() == ("u", "pw", None) and options.servers == ["nats://h:1"]
    args = build_parser().parse_args(["status", "--user", "u", "--password", "pw", "--token", "t"])
    with pytest.raises(Exception, match="give one way to authenticate") as caught:
        nats_options(args)
    assert "pw" not in str(caught.value)


def test_peer_config_still_takes_a_url() -> None:
    config = PeerConfig(name="a", db="t", data_dir=Path("."), nats_url="nats://u:pw@h:1")
    assert config.nats.servers == ["nats://h:1"] and config.nats.display_url == "nats://u:***@h:1"


def test_roles_grant_their_subjects_only() -> None:
    producer = producer_permissions([TOPOLOGY], ["users"])
    assert "oplog.t.ops.users" in producer.publish
    assert not [s for s in producer.publish if s.startswith(("oplog.t.seal", "oplog.t.config", "oplog.t.schema",
                                                             "oplog.t.ops.>", "$KV", "$O"))]  # fmt: skip
    peer = peer_permissions([TOPOLOGY], "a")
    hash_keys = [s.removeprefix("$KV.OPLOG_t_HASHES.") for s in peer.publish if s.startswith("$KV.OPLOG_t_HASHES.")]
    assert hash_keys == ["e.*.a", "p.a", "d.a", "h.a"]
    assert "oplog.t.seal" in peer.publish and not [s for s in peer.publish if s.startswith("oplog.t.ops")]


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    if want[-1] == ">":
        return len(have) >= len(want) and all(w in ("*", h) for w, h in zip(want[:-1], have, strict=False))
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))


def test_every_hash_board_key_a_peer_writes_about_itself_is_granted_and_no_other_peers() -> None:
    # Guard for new key families: each f-string key HashBoard puts or deletes, for peer "a".
    source = (ROOT / "materializer" / "agreement" / "hashes.py").read_text()
    keys = re.findall(r'kv\.(?:put|delete|create)\(f"([^"]+)"', source)
    assert len(keys) >= 3, keys
    granted = peer_permissions([TOPOLOGY], "a").publish
    for key in keys:
        own = key.replace("{peer}", "a").replace("{epoch}", "7")
        other = key.replace("{peer}", "b").replace("{epoch}", "7")
        assert any(matches(p, f"$KV.OPLOG_t_HASHES.{own}") for p in granted), f"peers cannot write {own}"
        assert not any(matches(p, f"$KV.OPLOG_t_HASHES.{other}") for p in granted), f"peer a may write {other}"


# ---- against a real nats-server ----


@contextlib.contextmanager
def secured_server(tmp_path: Path, *plans: tuple[Plan, str], tls: ServerTls | None = None) -> Iterator[NatsServer]:
    """A server whose users are ``plans`` (each with its credential method), in ``tmp_path/creds``."""
    users = [user for plan, method in plans for user in build_users(plan, tmp_path / "creds", method)]
    server = NatsServer(tmp_path / "nats", authorization=render(users), tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def nkey(tmp_path: Path, name: str) -> NatsOptions:
    return NatsOptions(nkey=tmp_path / "creds" / f"{name}.nk")


def password(tmp_path: Path, name: str) -> str:
    return (tmp_path / "creds" / f"{name}.password").read_text().strip()


@contextlib.asynccontextmanager
async def as_user(server: NatsServer, options: NatsOptions, name: str = "test") -> AsyncIterator[Client]:
    """A connection to ``server`` with ``options``' credentials, closed on the way out."""
    nc = await connect(options.model_copy(update={"url": server.url}), name=name)
    try:
        yield nc
    finally:
        await nc.close()


async def refused(server: NatsServer, options: NatsOptions) -> NatsAuthError:
    """The error of connecting with ``options`` (to ``server``, unless their URL has credentials):
    a refusal, raised at once rather than after retries."""
    url = options.url if "@" in options.url else server.url
    started = time.monotonic()
    with pytest.raises(NatsAuthError) as caught:
        await connect(options.model_copy(update={"url": url}), name="t")
    assert time.monotonic() - started < REFUSED_WITHIN_S
    return caught.value


def oplog_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peer.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.integration
async def test_a_wrong_password_is_refused_at_once_with_one_clear_error(tmp_path: Path) -> None:
    with secured_server(tmp_path, (Plan(dbs=["t"], admins=["admin"]), "password")) as server:
        error = await refused(server, NatsOptions(user="admin", password="not-the-password"))
        assert "refused the credentials (user 'admin' with a password): Authorization Violation" in str(error)
        in_url = server.url.replace("nats://", "nats://admin:wrong-in-url@")
        error = await refused(server, NatsOptions(url=in_url))
        assert f"NATS at nats://admin:***@127.0.0.1:{server.port} refused the credentials" in str(error)
        assert "wrong-in-url" not in str(error)
        async with as_user(server, NatsOptions(user="admin", password=password(tmp_path, "admin"))) as nc:
            assert nc.is_connected


@pytest.mark.integration
def test_the_cli_with_a_wrong_password_exits_non_zero_with_one_line_and_no_hang(tmp_path: Path) -> None:
    with secured_server(tmp_path, (Plan(dbs=["t"], admins=["admin"]), "password")) as server:
        # Not a hang: the command must exit by itself before this deadline.
        result = oplog_cli("status", "--db", "t", "--nats", server.url, "--user", "admin", "--password", "wr0ng-pw",
                           timeout=30)  # fmt: skip
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("oplog: NATS at nats://127.0.0.1:")
        assert "Authorization Violation" in result.stderr
        assert "wr0ng-pw" not in result.stdout + result.stderr
        # The same through the environment, and with the password inside the URL.
        url = server.url.replace("nats://", "nats://admin:url-pw@")
        result = oplog_cli("status", "--db", "t", "--nats", url, timeout=30)
        assert result.returncode == 2 and "admin:***@" in result.stderr
        assert "url-pw" not in result.stdout + result.stderr


@pytest.mark.integration
async def test_an_unknown_nkey_is_refused(tmp_path: Path) -> None:
    with secured_server(tmp_path, (Plan(dbs=["t"], admins=["admin"]), "nkey")) as server:
        stranger = tmp_path / "stranger.nk"
        stranger.write_text(new_nkey_seed())
        error = await refused(server, NatsOptions(nkey=stranger))
        assert "nkey seed file" in str(error) and "Authorization Violation" in str(error)
        assert stranger.read_text() not in str(error)
        async with as_user(server, nkey(tmp_path, "admin")) as nc:
            assert nc.is_connected


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary, "these tests make TLS certificates with the openssl command line: apt-get install openssl"
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_cert(directory: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
                   "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")  # fmt: skip
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", f"{name}.pem", cwd=directory)  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.mark.integration
async def test_tls_with_the_wrong_ca_or_without_a_client_certificate_is_refused(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca, other_ca = make_ca(certs, "ca"), make_ca(certs, "other-ca")
    server_cert = make_cert(certs, "server", ca, "serverAuth")
    client_cert = make_cert(certs, "client", ca, "clientAuth")
    tls = ServerTls(cert=server_cert[0], key=server_cert[1], ca=ca[0], verify=True)
    with secured_server(tmp_path, (Plan(dbs=["t"], admins=["admin"]), "nkey"), tls=tls) as server:
        admin = nkey(tmp_path, "admin")
        client = {"tls_cert": client_cert[0], "tls_key": client_cert[1]}
        error = await refused(server, admin.model_copy(update={"tls_ca": other_ca[0], **client}))
        assert "TLS with NATS at" in str(error) and "certificate verify failed" in str(error)
        await refused(server, admin.model_copy(update={"tls_ca": ca[0]}))  # the server wants a client certificate
        async with as_user(server, admin.model_copy(update={"tls_ca": ca[0], **client})) as nc:
            assert nc.is_connected and (await nc.jetstream().account_info()) is not None


async def admin_setup(server: NatsServer, tmp_path: Path) -> None:
    """``oplog init`` and the schema, as the admin (a CLI process with its nkey)."""
    admin = ["--db", "t", "--nats", server.url, "--nkey", str(tmp_path / "creds" / "admin.nk")]
    result = oplog_cli("init", *admin, "--epoch-ms", "500", "--grace-ms", "100")
    assert result.returncode == 0, result.stderr
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = oplog_cli("publish", *admin, "--schema", str(schema))
    assert result.returncode == 0, result.stderr


async def last_seq(js: JetStreamContext) -> int:
    return int((await js.stream_info(TOPOLOGY.stream)).state.last_seq)


async def denied(js: JetStreamContext, admin_js: JetStreamContext, subject: str) -> None:
    """Publishing ``subject`` fails and nothing reaches the stream (nor a KV bucket)."""
    before = await last_seq(admin_js)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
        await js.publish(subject, b'{"epoch": 1}', timeout=1.0)
    await asyncio.sleep(0.1)
    assert await last_seq(admin_js) == before, f"{subject} landed in the stream"


@pytest.mark.integration
async def test_a_producer_may_publish_ops_of_its_tables_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = Plan(dbs=["t"], admins=["admin"], producers=["p1"], producer_tables={"p1": ["users"]})
    with secured_server(tmp_path, (plan, "nkey")) as server:
        await admin_setup(server, tmp_path)
        async with (
            as_user(server, nkey(tmp_path, "admin"), "admin") as admin,
            as_user(server, nkey(tmp_path, "p1")) as nc,
        ):
            admin_js, js = admin.jetstream(), nc.jetstream()
            board = HashBoard(admin_js, TOPOLOGY)
            await board.report("a", 0, "h0")  # the bucket exists, so a refused put is not "no bucket"
            before = await last_seq(admin_js)
            ack = await js.publish("oplog.t.ops.users", b'{"v":1,"ops":[]}', stream=TOPOLOGY.stream, timeout=2)
            assert ack.seq == before + 1
            with caplog.at_level(logging.WARNING, logger="oplog.nats"):
                for subject in ("oplog.t.seal", "oplog.t.config", "oplog.t.schema", "oplog.t.ops.orders",
                                "$KV.OPLOG_t_HASHES.e.1.a", "$KV.OPLOG_t_HASHES.p.a"):  # fmt: skip
                    await denied(js, admin_js, subject)
            assert "permissions violation for publish to \"oplog.t.seal\"" in caplog.text
            assert await board.reports(1, ["a"]) == {} and await board.progress(["a"]) == {"a": 0}


@pytest.mark.integration
async def test_a_peer_writes_its_own_hash_board_keys_only(tmp_path: Path) -> None:
    plan = Plan(dbs=["t"], admins=["admin"], peers=["a", "b"], readers=["r"])
    with secured_server(tmp_path, (plan, "nkey")) as server:
        await admin_setup(server, tmp_path)
        async with (
            as_user(server, nkey(tmp_path, "admin"), "admin") as admin,
            as_user(server, nkey(tmp_path, "a")) as nc,
        ):
            admin_js, js = admin.jetstream(), nc.jetstream()
            mine = HashBoard(js, TOPOLOGY)
            await mine.report("a", 3, "hash-a")  # creates the bucket: a peer may
            await mine.flag_divergence("a", {"epoch": 3})
            await mine.clear_divergence("a")
            with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                await mine.report("b", 3, "forged")
            for key in ("e.3.b", "p.b", "d.b"):
                with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                    await js.publish(f"$KV.OPLOG_t_HASHES.{key}", b"forged", timeout=1.0)
            theirs = HashBoard(admin_js, TOPOLOGY)
            assert await theirs.reports(3, ["a", "b"]) == {"a": "hash-a"}
            assert await mine.peers() == ["a"] and await theirs.divergences() == {}
            for subject in ("oplog.t.ops.users", "oplog.t.config", "oplog.t.schema"):
                await denied(js, admin_js, subject)
            seq = await publish_json(js, TOPOLOGY, TOPOLOGY.seal_subject, {"epoch": -5}, msg_id="seal-t--5")
            assert seq == await last_seq(admin_js)
        # A reader sees the board, and nothing of the stream.
        async with as_user(server, nkey(tmp_path, "r"), "reader") as nc:
            reader_js = nc.jetstream(timeout=1.0)
            assert await HashBoard(reader_js, TOPOLOGY).reports(3, ["a"]) == {"a": "hash-a"}
            with pytest.raises(nats.errors.TimeoutError):
                await reader_js.stream_info(TOPOLOGY.stream)
            with pytest.raises((nats.errors.TimeoutError, nats.errors.Error)):
                await reader_js.publish("$KV.OPLOG_t_HASHES.p.r", b"1", timeout=1.0)


@pytest.mark.integration
async def test_peers_and_a_producer_on_role_credentials_materialize_an_epoch(tmp_path: Path) -> None:
    # Peer a proves an nkey; peer b has a password inside its URL (the log must not show it);
    # producer p2 has a user and a password from the environment.
    nkeys = Plan(dbs=["t"], admins=["admin"], peers=["a"])
    passwords = Plan(dbs=["t"], peers=["b"], producers=["p2"], producer_tables={"p2": ["users"]})
    with secured_server(tmp_path, (nkeys, "nkey"), (passwords, "password")) as server:
        await admin_setup(server, tmp_path)
        b_url = server.url.replace("nats://", f"nats://b:{password(tmp_path, 'b')}@")
        peers = [
            PeerProcess("a", "t", server.url, tmp_path / "a", extra=["--nkey", str(tmp_path / "creds" / "a.nk")]),
            PeerProcess("b", "t", b_url, tmp_path / "b", extra=["--expected-peers", "2"]),
        ]
        try:
            for peer in peers:
                peer.start()
            ops = tmp_path / "ops.jsonl"
            ops.write_text("".join(json.dumps({"table": "users", "key": f"u{i}", "kind": "upsert",
                                               "data": {"name": f"n{i}"}}) + "\n" for i in range(20)))  # fmt: skip
            result = oplog_cli("publish", "--receipts", "--db", "t", "--nats", server.url, "--user", "p2", str(ops),
                               env={"OPLOG_NATS_PASSWORD": password(tmp_path, "p2")})  # fmt: skip
            assert result.returncode == 0, result.stderr
            epoch = max(json.loads(line)["epoch"] for line in result.stdout.splitlines())
            async with as_user(server, nkey(tmp_path, "admin"), "admin") as admin:
                board = HashBoard(admin.jetstream(), TOPOLOGY)
                deadline = time.monotonic() + 60
                while not all(p >= epoch for p in (await board.progress(["a", "b"])).values()) or len(
                    await board.progress(["a", "b"])
                ) < 2:
                    for peer in peers:
                        assert peer.running, f"peer {peer.name} exited:\n{peer.log_tail()}"
                    assert time.monotonic() < deadline, "\n".join(p.log_tail(15) for p in peers)
                    await asyncio.sleep(0.1)
                hashes = await board.reports(epoch, ["a", "b"])
                assert len(set(hashes.values())) == 1 and len(hashes) == 2, hashes
            admin = ["--nkey", str(tmp_path / "creds" / "admin.nk")]
            status = oplog_cli("status", "--db", "t", "--nats", server.url, *admin)
            assert status.returncode == 0 and status.stdout.rstrip().endswith("AGREE"), status.stdout + status.stderr
        finally:
            for peer in peers:
                peer.stop()
        for peer in peers:
            assert read_db(peer.db_path, "SELECT COUNT(*) FROM users") == [(20,)]
            log = peer.log_path.read_text()
            assert "permissions violation" not in log.lower(), log
        b_log = peers[1].log_path.read_text()
        assert password(tmp_path, "b") not in b_log and f"from nats://b:***@127.0.0.1:{server.port}" in b_log
    assert "violation" not in server.log_path.read_text().lower()


@pytest.mark.integration
def test_auth_config_writes_a_block_nats_server_accepts_and_keeps_credentials(tmp_path: Path) -> None:
    creds, out = tmp_path / "creds", tmp_path / "oplog-auth.conf"
    args = ["auth", "config", "--db", "t", "--db", "shop", "--peers", "a,b,c", "--producers", "p1,p2",
            "--producer-tables", "p1=users,orders", "--readers", "r",
            "--credentials-dir", str(creds), "--out", str(out)]  # fmt: skip
    result = oplog_cli(*args)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in creds.iterdir()) == ["a.nk", "admin.nk", "b.nk", "c.nk", "p1.nk", "p2.nk", "r.nk"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in [*creds.iterdir(), out])
    checked = subprocess.run([find_nats_server(), "-t", "-c", str(out)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "is valid" in checked.stdout + checked.stderr, checked.stderr
    text = out.read_text()
    keys = {p.stem: public_nkey(p.read_text()) for p in creds.iterdir()}
    assert all(f'nkey: "{key}"' in text for key in keys.values())
    assert all(p.read_text().strip() not in text for p in creds.iterdir())  # seeds stay in their files
    assert '"oplog.t.ops.users"' in text and '"oplog.shop.ops.>"' in text and '"$KV.OPLOG_shop_HASHES.e.*.c"' in text
    # Again with one more peer: everyone else keeps their key.
    result = oplog_cli(*[*args[:7], "a,b,c,d", *args[8:]])
    assert result.returncode == 0, result.stderr
    assert all(public_nkey((creds / f"{name}.nk").read_text()) == key for name, key in keys.items())
    assert public_nkey((creds / "d.nk").read_text()) in out.read_text()
    # A config a server runs with, for one database: the admin may connect.
    result = oplog_cli("auth", "config", "--db", "t", "--method", "password", "--credentials-dir", str(tmp_path / "pw"))
    assert result.returncode == 0 and "authorization {" in result.stdout and "admin admin:" in result.stderr


# ---- operator mode: .creds files (user JWT + seed), made here with nkeys ----


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(prefix: int) -> tuple[nkeys.KeyPair, str]:
    seed = bytes(nkeys.encode_seed(os.urandom(32), prefix))
    pair = nkeys.from_seed(bytearray(seed))
    return pair, seed.decode()


def _jwt(signer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, object]) -> str:
    """A NATS JWT (v2) for ``subject``, signed by ``signer`` (what ``nsc`` makes)."""
    body = {"iat": int(time.time()), "iss": signer.public_key.decode(), "name": name, "sub": subject,
            "nats": {**claims, "version": 2}}  # fmt: skip
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    head, payload = _b64(b'{"typ":"JWT","alg":"ed25519-nkey"}'), _b64(json.dumps(body).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
             "leaf": -1}  # fmt: skip


class Operator:
    """An operator, a system account and one JetStream account, preloaded in the server config."""

    def __init__(self) -> None:
        self.operator, _ = _keys(nkeys.PREFIX_BYTE_OPERATOR)
        self.account, _ = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        system, _ = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
        op = self.operator.public_key.decode()
        self.accounts = {
            self.account.public_key.decode(): _jwt(self.operator, self.account.public_key.decode(), "oplog", {
                "type": "account", "default_permissions": {"pub": {}, "sub": {}},
                "limits": {**UNLIMITED, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
            system.public_key.decode(): _jwt(self.operator, system.public_key.decode(), "SYS",
                                             {"type": "account", "limits": UNLIMITED}),
        }  # fmt: skip
        self.config = "\n".join([
            f"operator: {json.dumps(_jwt(self.operator, op, 'op', {'type': 'operator'}))}",
            f"system_account: {system.public_key.decode()}",
            "resolver: MEMORY",
            "resolver_preload: {",
            *(f"  {key}: {json.dumps(token)}" for key, token in self.accounts.items()),
            "}",
        ])  # fmt: skip

    def creds(self, path: Path, name: str, permissions: Permissions, *, account: nkeys.KeyPair | None = None) -> Path:
        """A .creds file for user ``name`` with ``permissions``, signed by ``account`` (ours by default)."""
        user, seed = _keys(nkeys.PREFIX_BYTE_USER)
        token = _jwt(account or self.account, user.public_key.decode(), name, {
            "type": "user", "subs": -1, "data": -1, "payload": -1,
            "pub": {"allow": list(permissions.publish)}, "sub": {"allow": list(permissions.subscribe)}})  # fmt: skip
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")  # fmt: skip
        path.chmod(0o600)
        return path


@pytest.mark.integration
async def test_role_permissions_in_creds_files_run_a_peer_and_a_producer_in_operator_mode(tmp_path: Path) -> None:
    operator = Operator()
    topologies = [TOPOLOGY]
    admin = operator.creds(tmp_path / "admin.creds", "admin", admin_permissions(topologies))
    peer = operator.creds(tmp_path / "a.creds", "a", peer_permissions(topologies, "a"))
    producer = operator.creds(tmp_path / "p.creds", "p", producer_permissions(topologies, ["users"]))
    stranger, _ = _keys(nkeys.PREFIX_BYTE_ACCOUNT)  # an account the server does not know
    forged = operator.creds(tmp_path / "x.creds", "x", admin_permissions(topologies), account=stranger)
    # A peer's permissions make a JWT longer than the default 4 KB CONNECT line.
    server = NatsServer(tmp_path / "nats", authorization=operator.config + "\nmax_control_line: 16KB")
    process = PeerProcess("a", "t", server.url, tmp_path / "a", extra=["--creds", str(peer)])
    try:
        server.start()
        error = await refused(server, NatsOptions(creds=forged))
        assert f"creds file {str(forged)!r}" in str(error)
        on = ["--db", "t", "--nats", server.url]
        assert oplog_cli("init", *on, "--creds", str(admin), "--epoch-ms", "500", "--grace-ms", "100").returncode == 0
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps(SCHEMA))
        assert oplog_cli("publish", *on, "--creds", str(admin), "--schema", str(schema)).returncode == 0
        process.start()
        ops = tmp_path / "ops.jsonl"
        ops.write_text("".join(json.dumps({"table": "users", "key": f"u{i}", "kind": "upsert", "data": {}}) + "\n"
                               for i in range(5)))  # fmt: skip
        result = oplog_cli("publish", "--receipts", *on, "--creds", str(producer), str(ops))
        assert result.returncode == 0, result.stderr
        epoch = max(json.loads(line)["epoch"] for line in result.stdout.splitlines())
        async with as_user(server, NatsOptions(creds=admin), "admin") as nc:
            board = HashBoard(nc.jetstream(), TOPOLOGY)
            deadline = time.monotonic() + 60
            while (await board.progress(["a"])).get("a", -(10**9)) < epoch:
                assert process.running, process.log_tail()
                assert time.monotonic() < deadline, process.log_tail()
                await asyncio.sleep(0.1)
    finally:
        process.stop()
        server.stop()
    assert read_db(process.db_path, "SELECT COUNT(*) FROM users") == [(5,)]
    assert "violation" not in process.log_path.read_text().lower() + server.log_path.read_text().lower()
