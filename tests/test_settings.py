"""Every option from a flag, an environment variable or a config file, in that order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from materializer.backends.doltlite import child_env
from peer import settings
from peer.cli import build_parser


def parse(argv: list[str], environ: dict[str, str], file: str | None = None, tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    parser = build_parser()
    if file is not None:
        assert tmp_path is not None
        path = tmp_path / "oplog.toml"
        path.write_text(file)
        argv = ["--config", str(path), *argv]
    settings.configure(parser, argv, environ)
    return parser.parse_args(argv)


def test_environment_variables_set_options_and_flags_win() -> None:
    env = {"OPLOG_DB": "shop", "OPLOG_EPOCH_MS": "250", "OPLOG_NATS_URL": "nats://a:4222", "OPLOG_NO_SEAL": "true"}
    args = parse(["init"], env)
    assert (args.db, args.epoch_ms, args.nats) == ("shop", 250, "nats://a:4222")
    assert parse(["init", "--epoch-ms", "500"], env).epoch_ms == 500
    served = parse(["serve", "--name", "a", "--data-dir", "d"], env)
    assert served.no_seal is True and served.db == "shop"


def test_nats_url_falls_back_to_the_nats_clis_variable() -> None:
    assert parse(["status"], {"NATS_URL": "nats://n:1"}).nats == "nats://n:1"
    assert parse(["status"], {"NATS_URL": "nats://n:1", "OPLOG_NATS_URL": "nats://o:2"}).nats == "nats://o:2"


def test_a_config_file_sets_options_for_every_command_or_one(tmp_path: Path) -> None:
    file = """
db = "shop"
connect-timeout = 20
[serve]
name = "a"
data-dir = "/var/lib/oplog/a"
metrics-port = 9464
repair = true
[config.set]
at-epoch = 1200
"""
    served = parse(["serve"], {}, file, tmp_path)
    assert (served.db, served.connect_timeout, served.name, str(served.data_dir)) == ("shop", 20.0, "a", "/var/lib/oplog/a")
    assert served.metrics_port == 9464 and served.repair is True
    changed = parse(["config", "set", "--epoch-ms", "500", "--grace-ms", "0"], {}, file, tmp_path)
    assert changed.at_epoch == 1200 and changed.db == "shop"
    # The environment beats the file, a flag beats both.
    assert parse(["status"], {"OPLOG_DB": "env"}, file, tmp_path).db == "env"
    assert parse(["status", "--db", "flag"], {"OPLOG_DB": "env"}, file, tmp_path).db == "flag"


@pytest.mark.parametrize(
    ("file", "error"),
    [
        ("dbb = 'x'", "config file: 'dbb' is not an option of any command"),
        ("[serv]\nname = 'a'", "config file: [serv] is not a command"),
        ("[status]\nname = 'a'", "config file: [status] 'name' is not an option of `oplog status`"),
        ("[serve]\nrepair = 'perhaps'", "config file [serve] repair: 'perhaps' is not true or false"),
        ("db = ", "is not TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, file: str, error: str) -> None:
    path = tmp_path / "oplog.toml"
    path.write_text(file)
    done = subprocess.run(
        [sys.executable, "-m", "peer.cli", "--config", str(path), "status"],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and error in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_value_the_option_cannot_take_fails_like_a_bad_flag(tmp_path: Path) -> None:
    # A string default goes through the option's own type, as a flag's value would.
    with pytest.raises(SystemExit):
        parse(["init"], {"OPLOG_EPOCH_MS": "soon"})
