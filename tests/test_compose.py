"""compose/ never drifts from the CLI: the Docker Compose deployment checked without Docker.

The compose file is read as docker compose reads it (YAML merge keys, ``${VAR}``
interpolation, a service's command after its image's entrypoint), and every fact one
service relies on about another is checked against the code and the other files:

* every ``oplog`` command line (a service's command, or each line of a ``sh -c`` script)
  parses with ``peer.cli.build_parser()``, under the service's environment;
* every ``OPLOG_*`` variable set is one the installed packages read;
* NATS: client URLs, routes, server names, store volumes, the sync setting, and the config
  itself, which the real ``nats-server -t`` must accept with an ``oplog-auth.conf`` made by
  the ``oplog auth config`` command of compose/README.md;
* Dolt: each peer's host and port are its own server's, the committer date is pinned
  identically everywhere, the password and the exchange directory are shared;
* identities: each process's NKEY file is its user's, and that command writes every file
  compose mounts;
* metrics: each peer's port is what Prometheus scrapes, Grafana's datasource is Prometheus,
  and every metric and label the dashboard queries exists in ``peer/metrics.py``.

Each check returns the problems it found. Running every check must find none, and the tests
at the end break one thing at a time and must see it reported, so the checks can fail.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from devtools.natsd import find_nats_server
from materializer.backends.dolt_server import DEFAULT_COMMITTER_DATE
from oplog.errors import OplogError
from oplog.schema import SchemaMessage
from peer.auth import run_auth
from peer.cli import build_parser
from peer.commands import common
from peer.metrics import PeerMetrics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
COMPOSE_README = COMPOSE_DIR / "README.md"
# What compose would read from compose/.env; only the names matter to these checks.
TEST_ENV = {"OPLOG_DOLT_PASSWORD": "compose-test-password"}

# dolthub/dolt-sql-server's docker-entrypoint.sh ends in
# `exec dolt sql-server --host=0.0.0.0 --port=3306 "$@"`: a container's arguments follow.
DOLT_IMAGE = "dolthub/dolt-sql-server"
DOLT_IMAGE_PORT = 3306
NATS_IMAGE = "nats"
NATS_DEFAULT_CLIENT_PORT, NATS_DEFAULT_CLUSTER_PORT = 4222, 6222
PROMETHEUS_DEFAULT_PORT = 9090
MIN_NATS = (2, 10)  # sync_interval and the JetStream cluster health check need 2.10
# dolt's accepted DOLT_COMMITTER_DATE forms (docs/dolt-server.md, fact 8): it silently uses
# the clock on anything else. A space instead of the T is rejected.
DOLT_DATE = re.compile(r"^\d{4}[-/.]\d{2}[-/.]\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?)?$")
SHELLS = {"sh", "bash", "ash", "dash"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ---- reading compose as docker compose does ----------------------------------------------------


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str], problems: list[str], where: str = "") -> Any:
    """Compose's variable interpolation over every string of ``value``. An unset variable
    without a default is a problem (compose would only warn and use an empty string)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, problems, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        is_set = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return env[name] if is_set else arg
        if op in ("+", ":+"):
            return arg if is_set else ""
        if not is_set:
            if op not in ("?", ":?"):
                problems.append(f"{where}: ${{{name}}} is not set and has no default")
            return ""
        return env[name]

    return _VAR.sub(one, value)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_list(value: Any) -> list[str]:
    """A compose ``command``/``entrypoint``: a list, or a string that compose shell-splits."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind", "volume" or "secret"
    source: str  # host path relative to compose/ (bind, secret) or volume name
    target: str  # absolute path in the container


def mounts(compose: dict[str, Any], service: dict[str, Any]) -> list[Mount]:
    found = []
    for v in service.get("volumes") or []:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target, kind = str(v.get("source", "")), str(v["target"]), str(v.get("type", "volume"))
        found.append(Mount(kind, source, target))
    top_secrets = compose.get("secrets") or {}
    for s in service.get("secrets") or []:
        source, target = (s, s) if isinstance(s, str) else (s["source"], s.get("target", s["source"]))
        target = target if target.startswith("/") else f"/run/secrets/{target}"
        file = (top_secrets.get(source) or {}).get("file")
        found.append(Mount("secret", str(file) if file else f"<undeclared secret {source}>", target))
    return found


def mount_of(compose: dict[str, Any], service: dict[str, Any], path: str) -> tuple[Mount, str] | None:
    """The mount that holds container ``path`` (the deepest one), and the path inside it."""
    best = None
    for m in mounts(compose, service):
        inside = PurePosixPath(path)
        target = PurePosixPath(m.target)
        if inside == target or target in inside.parents:
            if best is None or len(target.parts) > len(PurePosixPath(best[0].target).parts):
                best = (m, str(inside.relative_to(target)))
    return best


def port_pairs(service: dict[str, Any]) -> list[tuple[int | None, int]]:
    """``(host port, container port)`` of each published port (short or long syntax)."""
    pairs = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            host = p.get("published")
            pairs.append((int(host) if host else None, int(p["target"])))
            continue
        parts = str(p).split("/")[0].split(":")
        pairs.append((int(parts[-2]) if len(parts) >= 2 else None, int(parts[-1])))
    return pairs


def image_name(service: dict[str, Any]) -> tuple[str, str]:
    image = str(service.get("image", ""))
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return name, tag


def host_port(url_or_address: str, default: int) -> tuple[str, int]:
    """``(host, port)`` of ``scheme://host:port`` or ``host:port``."""
    text = url_or_address if "://" in url_or_address else f"//{url_or_address}"
    parts = urlsplit(text)
    return parts.hostname or "", parts.port or default


# ---- the oplog image ---------------------------------------------------------------------------


def dockerfile_instruction(text: str, name: str) -> list[str]:
    """The exec-form (JSON) arguments of the last ``name`` instruction of a Dockerfile."""
    found: list[str] = []
    for line in text.splitlines():
        if line.strip().upper().startswith(name + " "):
            found = json.loads(line.strip()[len(name) :].strip())
    return found


def is_oplog_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if isinstance(build, dict):
        return (COMPOSE_DIR / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    return False


# ---- oplog command lines -----------------------------------------------------------------------


@dataclass
class OplogCommand:
    service: str
    argv: list[str]  # after "oplog"
    env: dict[str, str]
    args: argparse.Namespace | None = None  # None: it does not parse

    @property
    def command(self) -> str:
        return getattr(self.args, "command", "") or ""

    def show(self) -> str:
        return f"{self.service}: oplog {shlex.join(self.argv)}"


def script_commands(script: str) -> tuple[list[list[str]], list[str]]:
    """The ``oplog`` command lines of a shell script (lines, ``&&``, ``;``, ``|``), and
    what could not be checked: a script that uses shell variables."""
    commands, problems = [], []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                if segment and PurePosixPath(segment[0]).name == "oplog":
                    if any("$" in word for word in segment):
                        problems.append(f"script line {line!r} uses shell variables; the test cannot check it")
                    commands.append(segment[1:])
                segment = []
            else:
                segment.append(token)
    return commands, problems


def parse_oplog(argv: list[str], env: dict[str, str]) -> tuple[argparse.Namespace | None, str]:
    """Parse like ``oplog`` in a container with environment ``env``: ``(args, "")``, or
    ``(None, why)`` when the command line (or an option's variable) is refused.

    As ``peer.cli.main`` does: where the environment becomes the options' defaults in a
    step after building the parser (``peer.settings.configure``), that step runs too;
    where the parser reads the environment as it is built, building it under ``env`` is
    enough."""
    err = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, env, clear=True))
        if hasattr(common, "DEFAULT_DB"):  # read from OPLOG_DB at import, in some versions
            stack.enter_context(mock.patch.object(common, "DEFAULT_DB", env.get("OPLOG_DB", "demo")))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            parser = build_parser()
            settings = _settings_module()
            if settings is not None:
                settings.configure(parser, argv)
            return parser.parse_args(argv), ""
        except SystemExit:
            return None, err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exited"
        except OplogError as e:
            return None, str(e)


def _settings_module() -> Any:
    try:
        from peer import settings
    except ImportError:
        return None
    return settings if hasattr(settings, "configure") else None


# ---- the deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """Everything the checks read, as loaded (tests mutate copies)."""

    compose: dict[str, Any]
    dockerfile: str
    generated: Path  # compose/-relative files made by the README's `oplog auth config`
    auth_args: argparse.Namespace
    overrides: dict[str, Any] = field(default_factory=dict)  # compose/-relative path -> parsed content
    load_problems: list[str] = field(default_factory=list)

    def services(self) -> dict[str, dict[str, Any]]:
        return self.compose.get("services") or {}

    def host_file(self, relative: str) -> Path:
        """A compose/-relative file: one the README's command made, else the repository's."""
        made = self.generated / relative
        return made if made.exists() else COMPOSE_DIR / relative

    def read(self, relative: str, parse: str = "text") -> Any:
        """A compose/-relative file's text, or its parsed ``yaml``/``json``; a test's override first."""
        key = str(PurePosixPath(relative))
        if key in self.overrides:
            return self.overrides[key]
        text = self.host_file(relative).read_text()
        if parse == "yaml":
            return yaml.safe_load(text)
        return json.loads(text) if parse == "json" else text

    def file_in(self, service: str, path: str) -> str | None:
        """The compose/-relative host file mounted at container ``path`` of ``service``."""
        found = mount_of(self.compose, self.services()[service], path)
        if found is None or found[0].kind == "volume":
            return None
        mount, inside = found
        return str(PurePosixPath(mount.source) / inside) if inside != "." else str(PurePosixPath(mount.source))

    def argv(self, service: dict[str, Any]) -> list[str]:
        """What the container runs: entrypoint (the service's, else the image's) + command
        (the service's; else the image's CMD, unless the service replaced the entrypoint)."""
        if "entrypoint" in service:
            return argv_list(service["entrypoint"]) + argv_list(service.get("command"))
        command = (
            argv_list(service["command"]) if "command" in service else dockerfile_instruction(self.dockerfile, "CMD")
        )
        return dockerfile_instruction(self.dockerfile, "ENTRYPOINT") + command

    def oplog_commands(self) -> tuple[list[OplogCommand], list[str]]:
        commands, problems = [], []
        for name, service in self.services().items():
            if not is_oplog_image(service):
                continue
            argv, env = self.argv(service), env_of(service)
            lines: list[list[str]] = []
            if argv and PurePosixPath(argv[0]).name == "oplog":
                lines = [argv[1:]]
            elif (
                argv
                and PurePosixPath(argv[0]).name in SHELLS
                and any(a.startswith("-") and "c" in a for a in argv[1:-1])
            ):
                lines, script_problems = script_commands(argv[-1])
                problems += [f"{name}: {p}" for p in script_problems]
                if not lines:
                    problems.append(f"{name}: its script runs no oplog command")
            else:
                problems.append(f"{name}: runs {argv!r}, neither oplog nor a sh -c script")
            for line in lines:
                args, _ = parse_oplog(line, env)
                commands.append(OplogCommand(name, line, env, args))
        return commands, problems

    def parsed(self) -> list[OplogCommand]:
        return [c for c in self.oplog_commands()[0] if c.args is not None]

    def by_kind(self, kind: str) -> list[OplogCommand]:
        return [c for c in self.parsed() if c.command == kind]


def auth_command_of_readme() -> list[str]:
    """The ``oplog auth config`` command line that compose/README.md tells users to run."""
    text = COMPOSE_README.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("oplog auth config ")]
    assert lines, "compose/README.md shows no `oplog auth config` command"
    return shlex.split(lines[0])[1:]


def generate_credentials(out_root: Path) -> tuple[argparse.Namespace, list[str]]:
    """Run the README's ``oplog auth config`` with its compose/-relative paths moved under
    ``out_root``; the parsed arguments as the README gives them."""
    args, why = parse_oplog(auth_command_of_readme(), {})
    assert args is not None, f"compose/README.md's oplog auth config does not parse: {why}"
    problems = []
    moved = copy.copy(args)
    for attr in ("credentials_dir", "out"):
        path = getattr(args, attr)
        if path is None or path.is_absolute() or ".." in path.parts:
            problems.append(f"README: auth config --{attr.replace('_', '-')} {path} is not a path inside compose/")
            continue
        setattr(moved, attr, out_root / path)
    if not problems:
        with contextlib.redirect_stderr(io.StringIO()):
            assert run_auth(moved) == 0
    return args, problems


def load_deployment(out_root: Path) -> Deployment:
    problems: list[str] = []
    auth_args, auth_problems = generate_credentials(out_root)
    # Through JSON: YAML aliases and merge keys share objects between services, which a
    # test that changes one service must not change in the others.
    raw = json.loads(json.dumps(load_yaml(COMPOSE_FILE)))
    compose = interpolate(raw, TEST_ENV, problems, "compose")
    return Deployment(compose, DOCKERFILE.read_text(), out_root, auth_args, load_problems=problems + auth_problems)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return load_deployment(tmp_path_factory.mktemp("compose-credentials"))


@pytest.fixture
def d(base: Deployment) -> Deployment:
    """A copy each test may break."""
    return Deployment(copy.deepcopy(base.compose), base.dockerfile, base.generated, base.auth_args,
                      copy.deepcopy(base.overrides), list(base.load_problems))  # fmt: skip


# ---- checks: each returns the problems it found ------------------------------------------------


def check_commands(d: Deployment) -> list[str]:
    """Every oplog command line parses; the deployment has the commands it needs."""
    commands, problems = d.oplog_commands()
    for c in commands:
        if c.args is None:
            problems.append(f"{c.show()} does not parse: {parse_oplog(c.argv, c.env)[1]}")
    kinds = [c.command for c in commands if c.args is not None]
    for needed in ("serve", "init", "roster"):
        if needed not in kinds:
            problems.append(f"no service runs `oplog {needed}`")
    if not any(c.command == "publish" and c.args.schema for c in d.parsed()):  # type: ignore[union-attr]
        problems.append("no service runs `oplog publish --schema`")
    return problems


def oplog_env_names() -> set[str]:
    """Every ``OPLOG_*`` name that appears as a whole string in the installed packages
    (``os.environ.get("OPLOG_X")``, ``URL_ENV = ("OPLOG_NATS_URL", ...)``, ...): variables
    read at run time, such as the launchers' binaries."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    names = set()
    for pattern in patterns:
        for package in ROOT.glob(pattern.split(".")[0]):
            for source in package.rglob("*.py"):
                for node in ast.walk(ast.parse(source.read_text())):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        if re.fullmatch(r"OPLOG_[A-Z0-9_]+", node.value):
                            names.add(node.value)
    return names


def reads(command: list[str], env: dict[str, str], var: str) -> bool:
    """Whether ``oplog <command>`` takes ``var`` from its environment ``env``: its parse
    changes when the variable is removed or holds something else."""
    base = parse_oplog(command, env)
    without = {k: v for k, v in env.items() if k != var}
    for other in (without, {**env, var: env.get(var, "") + "-changed"}, {**env, var: "1"}):
        if parse_oplog(command, other) != base:
            return True
    return False


def check_env(d: Deployment) -> list[str]:
    """Every ``OPLOG_*`` variable a service sets is read: by one of the service's oplog
    command lines (as an option's value), or by name somewhere in oplog's packages."""
    by_name = oplog_env_names()
    commands, _ = d.oplog_commands()
    problems = []
    for name, service in d.services().items():
        env = env_of(service)
        lines = [c.argv for c in commands if c.service == name]
        for var in env:
            if not var.startswith("OPLOG_") or var in by_name:
                continue
            if not any(reads(line, env, var) for line in lines):
                runs = "its oplog commands" if lines else "it runs no oplog command and"
                problems.append(f"{name}: sets {var}, but {runs} oplog never reads it")
    return problems


def nats_services(d: Deployment) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in d.services().items() if image_name(s)[0] == NATS_IMAGE}


def strip_comment(line: str) -> str:
    """``line`` without a ``#`` or ``//`` comment outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" or line.startswith("//", i):
            return line[:i]
    return line


def parse_nats_conf(text: str) -> dict[str, Any]:
    """The keys of a nats-server config this deployment uses: top-level and one level of
    blocks (``jetstream.store_dir``, ``cluster.routes``, ...), arrays as lists of strings."""
    values: dict[str, Any] = {}
    path: list[str] = []
    array: tuple[str, list[str]] | None = None
    for raw in text.splitlines():
        line = strip_comment(raw).strip()
        if not line:
            continue
        if array is not None:
            if line.startswith("]"):
                values[array[0]] = array[1]
                array = None
            else:
                array[1].extend(json.loads(s) for s in re.findall(r'"[^"]*"', line))
            continue
        if line == "}":
            path.pop()
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[:=]?\s*(.*?)\s*,?$", line)
        if not m:
            continue
        key, value = ".".join([*path, m.group(1)]), m.group(2)
        if value == "{":
            path.append(m.group(1))
        elif value.startswith("["):
            items = [json.loads(s) for s in re.findall(r'"[^"]*"', value)]
            if value.endswith("]"):
                values[key] = items
            else:
                array = (key, items)
        else:
            values[key] = json.loads(value) if value.startswith('"') else value
    return values


def nats_config_path(d: Deployment, name: str) -> tuple[str | None, str | None]:
    """(container path, compose/-relative host file) of a NATS service's config."""
    argv = argv_list(d.services()[name].get("command"))
    for flag in ("-c", "--config"):
        if flag in argv[:-1]:
            path = argv[argv.index(flag) + 1]
            return path, d.file_in(name, path)
    return None, None


@dataclass
class NatsNode:
    service: str
    server_name: str
    client_port: int
    http_port: int | None
    cluster_port: int
    routes: list[str]
    conf: dict[str, Any]


def nats_nodes(d: Deployment, problems: list[str]) -> dict[str, NatsNode]:
    nodes = {}
    for name, service in nats_services(d).items():
        container_path, host = nats_config_path(d, name)
        if host is None:
            problems.append(f"{name}: no --config file mounted from the repository ({container_path})")
            continue
        conf = parse_nats_conf(d.read(host))
        server_name = str(conf.get("server_name", ""))
        if server_name.startswith("$"):
            server_name = env_of(service).get(server_name[1:], "")
        listen = conf.get("listen")
        client = (
            host_port(listen, NATS_DEFAULT_CLIENT_PORT)[1]
            if listen
            else int(conf.get("port", NATS_DEFAULT_CLIENT_PORT))
        )
        http = conf.get("http")
        http_port = host_port(http, 0)[1] if http else (int(conf["http_port"]) if "http_port" in conf else None)
        cluster_listen = conf.get("cluster.listen")
        cluster = (
            host_port(cluster_listen, NATS_DEFAULT_CLUSTER_PORT)[1]
            if cluster_listen
            else int(conf.get("cluster.port", NATS_DEFAULT_CLUSTER_PORT))
        )
        nodes[name] = NatsNode(
            name, server_name, client, http_port, cluster, list(conf.get("cluster.routes", [])), conf
        )
    return nodes


def check_nats(d: Deployment) -> list[str]:
    problems: list[str] = []
    nodes = nats_nodes(d, problems)
    if len(nodes) < 3:
        problems.append(f"a JetStream cluster needs 3 nodes; the services running {NATS_IMAGE} are {sorted(nodes)}")
    for name, service in nats_services(d).items():
        tag = image_name(service)[1]
        version = tuple(int(x) for x in re.findall(r"\d+", tag)[:2])
        if len(version) < 2 or version < MIN_NATS:
            problems.append(f"{name}: image {service.get('image')}: want nats {MIN_NATS[0]}.{MIN_NATS[1]} or newer")
    names = [n.server_name for n in nodes.values()]
    if any(not n for n in names) or len(set(names)) != len(names):
        problems.append(f"server names must be set and distinct: {names}")
    stores: dict[str, str] = {}
    for node in nodes.values():
        service = d.services()[node.service]
        if str(node.conf.get("jetstream.sync_interval")) != "always":
            problems.append(f"{node.service}: jetstream sync_interval is not `always` (docs/security.md)")
        store = node.conf.get("jetstream.store_dir")
        found = mount_of(d.compose, service, str(store)) if store else None
        if found is None or found[0].kind != "volume":
            problems.append(f"{node.service}: JetStream store {store} is not on a volume of its own")
        elif found[0].source in stores:
            problems.append(f"{node.service} shares store volume {found[0].source} with {stores[found[0].source]}")
        else:
            stores[found[0].source] = node.service
        routed = {host_port(r, NATS_DEFAULT_CLUSTER_PORT) for r in node.routes}
        expected = {(n.service, n.cluster_port) for n in nodes.values()}
        if not expected - {(node.service, node.cluster_port)} <= routed or not routed <= expected:
            problems.append(f"{node.service}: routes {sorted(routed)} are not the cluster's nodes {sorted(expected)}")
        published = {c for _, c in port_pairs(service)}
        if stray := published - {node.client_port, node.http_port, node.cluster_port}:
            problems.append(f"{node.service}: publishes container ports {sorted(stray)} nothing listens on")
        health = " ".join(argv_list((service.get("healthcheck") or {}).get("test")))
        for url in re.findall(r"https?://[^\s\"']+", health):
            if host_port(url, 80)[1] != node.http_port:
                problems.append(f"{node.service}: healthcheck {url} is not the monitoring port {node.http_port}")
    # Every client reaches every node, on its client port.
    for c in d.parsed():
        servers = [s.strip() for s in c.args.nats.split(",") if s.strip()]  # type: ignore[union-attr]
        reached = set()
        for server in servers:
            host, port = host_port(server, NATS_DEFAULT_CLIENT_PORT)
            node = nodes.get(host)
            if node is None:
                problems.append(f"{c.show()}: NATS server {server} is not a NATS service")
            elif port != node.client_port:
                problems.append(f"{c.show()}: {server}, but {host} listens on {node.client_port}")
            else:
                reached.add(host)
        if nodes and reached != set(nodes):
            problems.append(f"{c.show()}: connects to {sorted(reached)}, not to every node {sorted(nodes)}")
    return problems


def nats_config_test(d: Deployment, workdir: Path) -> list[str]:
    """``nats-server -t`` on each node's config, with every file mounted beside it as in
    its container (the generated ``oplog-auth.conf`` included) and the node's environment."""
    problems = []
    binary = find_nats_server()
    for name, service in nats_services(d).items():
        config, _ = nats_config_path(d, name)
        if config is None:
            problems.append(f"{name}: no --config")
            continue
        root = workdir / name
        for m in mounts(d.compose, service):
            if m.kind == "volume":
                continue
            source = d.host_file(m.source)
            target = root / m.target.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            key = str(PurePosixPath(m.source))
            if key in d.overrides:
                target.write_text(d.overrides[key])
            elif source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy(source, target)
            else:
                problems.append(
                    f"{name}: mounts {m.source}, which neither the repository nor the README's auth config has"
                )
        env = {"PATH": os.environ.get("PATH", ""), **env_of(service)}
        done = subprocess.run([binary, "-t", "-c", str(root / config.lstrip("/"))], env=env, capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0 or "is valid" not in output:
            problems.append(f"{name}: nats-server -t rejects {config}: {output}")
    return problems


def dolt_port_of(service: dict[str, Any]) -> int:
    """The port dolt sql-server listens on: the image's, unless the arguments set one."""
    port = DOLT_IMAGE_PORT
    argv = argv_list(service.get("command"))
    for i, arg in enumerate(argv):
        if arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
        elif arg in ("--port", "-P") and i + 1 < len(argv):
            port = int(argv[i + 1])
    return port


def pinned_dolt_version() -> str:
    m = re.search(r"^DOLT_VERSION=(\S+)", (ROOT / "scripts" / "install-dolt.sh").read_text(), re.M)
    assert m, "scripts/install-dolt.sh has no DOLT_VERSION"
    return m.group(1)


def check_dolt(d: Deployment) -> list[str]:
    problems = []
    services = d.services()
    dolts = {n: s for n, s in services.items() if image_name(s)[0] == DOLT_IMAGE}
    dates = {}
    for name, service in dolts.items():
        if image_name(service)[1] != pinned_dolt_version():
            problems.append(f"{name}: image {service.get('image')}, but the project pins dolt {pinned_dolt_version()}")
        date = env_of(service).get("DOLT_COMMITTER_DATE")
        dates[name] = date
        if not date:
            problems.append(f"{name}: DOLT_COMMITTER_DATE is not set; its commits would carry the clock")
        elif not DOLT_DATE.match(date):
            problems.append(f"{name}: DOLT_COMMITTER_DATE={date!r} is a form dolt ignores (it would use the clock)")
        elif date != DEFAULT_COMMITTER_DATE:
            problems.append(f"{name}: DOLT_COMMITTER_DATE={date}, not the backend's {DEFAULT_COMMITTER_DATE}")
        health = " ".join(argv_list((service.get("healthcheck") or {}).get("test")))
        for port in re.findall(r"/dev/tcp/[^/\s]+/(\d+)", health):
            if int(port) != dolt_port_of(service):
                problems.append(f"{name}: healthcheck probes port {port}, but dolt listens on {dolt_port_of(service)}")
    if len(set(dates.values())) > 1:
        problems.append(f"the Dolt servers' DOLT_COMMITTER_DATE differ: {dates}")
    used: dict[str, str] = {}
    for c in d.by_kind("serve"):
        a = c.args
        assert a is not None
        if a.backend != "dolt-server":
            problems.append(f"{c.show()}: backend {a.backend}, not dolt-server")
            continue
        service = dolts.get(a.dolt_host)
        if service is None:
            problems.append(f"{c.show()}: --dolt-host {a.dolt_host} is not a {DOLT_IMAGE} service")
            continue
        if a.dolt_host in used:
            problems.append(f"{c.service} and {used[a.dolt_host]} share Dolt server {a.dolt_host}")
        used[a.dolt_host] = c.service
        if a.dolt_port != dolt_port_of(service):
            problems.append(
                f"{c.show()}: --dolt-port {a.dolt_port}, but {a.dolt_host} listens on {dolt_port_of(service)}"
            )
        if dolt_port_of(service) not in {cp for _, cp in port_pairs(service)} and service.get("ports"):
            problems.append(f"{a.dolt_host}: publishes no port {dolt_port_of(service)}")
        dolt_env = env_of(service)
        if a.dolt_user != "root":
            problems.append(f"{c.show()}: --dolt-user {a.dolt_user}: the image only makes root (DOLT_ROOT_*)")
        elif dolt_env.get("DOLT_ROOT_HOST", "localhost") == "localhost":
            problems.append(f"{a.dolt_host}: root may log in from localhost only (set DOLT_ROOT_HOST)")
        if a.dolt_password != dolt_env.get("DOLT_ROOT_PASSWORD", ""):
            problems.append(
                f"{c.service}: its Dolt password (OPLOG_DOLT_PASSWORD) is not {a.dolt_host}'s DOLT_ROOT_PASSWORD"
            )
        if not a.dolt_password:
            problems.append(f"{c.service}: Dolt root has no password")
        if a.dolt_host not in (services[c.service].get("depends_on") or {}):
            problems.append(f"{c.service}: does not depend on {a.dolt_host}")
        # Genesis and snapshots: the server writes Dolt backups under the peer's temp dir
        # and the peer reads them (and back), so both must see it at the same path.
        tmp = c.env.get("TMPDIR", "/tmp")
        mine = mount_of(d.compose, services[c.service], tmp)
        theirs = mount_of(d.compose, service, tmp)
        if mine is None or theirs is None or mine[0].kind != "volume" or mine != theirs:
            problems.append(f"{c.service}: its temp dir {tmp} is not one volume shared with {a.dolt_host} at that path")
    return problems


def nkey_user(d: Deployment, c: OplogCommand) -> str | None:
    """The user whose seed ``c`` logs in with (``<user>.nk`` mounted at its --nkey path)."""
    if c.args is None or c.args.nkey is None:
        return None
    host = d.file_in(c.service, str(c.args.nkey))
    return PurePosixPath(host).stem if host and host.endswith(".nk") else None


def check_identities(d: Deployment) -> list[str]:
    problems = list(d.load_problems)
    auth = d.auth_args
    serves = d.by_kind("serve")
    names = [c.args.name for c in serves]  # type: ignore[union-attr]
    if len(set(names)) != len(names):
        problems.append(f"peer names are not unique: {names}")
    if sorted(auth.peers) != sorted(names):
        problems.append(f"README: auth config --peers {auth.peers}, but the peers are {names}")
    for c in serves:
        a = c.args
        assert a is not None
        if a.expected_peers != len(serves):
            problems.append(f"{c.show()}: --expected-peers {a.expected_peers}, but there are {len(serves)} peers")
        if nkey_user(d, c) != a.name:
            problems.append(
                f"{c.service}: peer {a.name} logs in as {nkey_user(d, c)!r}; it can only report as its own user"
            )
    for c in d.by_kind("roster"):
        peers = sorted(p.strip() for p in c.args.peers.split(",") if p.strip())  # type: ignore[union-attr]
        if peers != sorted(names):
            problems.append(f"{c.show()}: roster {peers}, but the peers are {sorted(names)}")
    for kind in ("init", "roster", "config"):
        for c in d.by_kind(kind):
            if nkey_user(d, c) not in auth.admins:
                problems.append(
                    f"{c.show()}: runs as {nkey_user(d, c)!r}; only admins {auth.admins} may publish config"
                )
    for c in d.by_kind("publish"):
        if c.args.schema and nkey_user(d, c) not in auth.admins:  # type: ignore[union-attr]
            problems.append(f"{c.show()}: publishes a schema as {nkey_user(d, c)!r}; only admins may")
    users = set(auth.peers) | set(auth.producers) | set(auth.admins) | set(auth.readers)
    for c in d.parsed():
        user = nkey_user(d, c)
        if c.args.nkey is not None and user not in users:  # type: ignore[union-attr]
            problems.append(f"{c.show()}: --nkey {c.args.nkey} is no seed the README's auth config makes")  # type: ignore[union-attr]
    # Every secret compose mounts is made by the README's command.
    for name, spec in (d.compose.get("secrets") or {}).items():
        file = str((spec or {}).get("file", ""))
        if not (d.generated / file).exists():
            problems.append(f"secret {name}: {file} is not written by the README's `oplog auth config`")
    dbs = {c.args.db for c in d.parsed() if c.command not in ("dev", "bench", "auth")}  # type: ignore[union-attr]
    if len(dbs) != 1:
        problems.append(f"the commands name several databases: {sorted(dbs)}")
    elif not dbs <= set(auth.db):
        problems.append(f"the database {dbs} is not in the README's auth config --db {auth.db}")
    nodes = len(nats_services(d))
    for c in d.by_kind("serve") + d.by_kind("init"):
        if c.args.replicas != nodes:  # type: ignore[union-attr]
            problems.append(f"{c.show()}: --replicas {c.args.replicas}, but the cluster has {nodes} nodes")  # type: ignore[union-attr]
    for c in d.by_kind("publish"):
        if c.args.schema:  # type: ignore[union-attr]
            host = d.file_in(c.service, str(c.args.schema))  # type: ignore[union-attr]
            if host is None:
                problems.append(f"{c.show()}: the schema file is not mounted from the repository")
            else:
                try:
                    SchemaMessage.model_validate_json(d.host_file(host).read_bytes())
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{c.show()}: {host} is not a valid schema: {e}")
    return problems


def prometheus_service(d: Deployment) -> tuple[str, dict[str, Any], str | None, int]:
    """Name, spec, compose/-relative config file and listen port of the Prometheus service."""
    for name, service in d.services().items():
        if image_name(service)[0].endswith("prometheus"):
            argv = argv_list(service.get("command"))
            config = next(
                (a.split("=", 1)[1] for a in argv if a.startswith("--config.file=")), "/etc/prometheus/prometheus.yml"
            )
            listen = next((a.split("=", 1)[1] for a in argv if a.startswith("--web.listen-address=")), None)
            port = host_port(listen, PROMETHEUS_DEFAULT_PORT)[1] if listen else PROMETHEUS_DEFAULT_PORT
            return name, service, d.file_in(name, config), port
    raise AssertionError("no Prometheus service")


def check_metrics_ports(d: Deployment) -> list[str]:
    problems = []
    prom_name, _, prom_file, _ = prometheus_service(d)
    if prom_file is None:
        return [f"{prom_name}: its config file is not mounted from the repository"]
    prom = d.read(prom_file, "yaml")
    targets = {host_port(t, 0) for job in prom.get("scrape_configs") or [] for sc in job.get("static_configs") or []
               for t in sc.get("targets") or []}  # fmt: skip
    wanted = set()
    for c in d.by_kind("serve"):
        a, service = c.args, d.services()[c.service]
        assert a is not None
        if a.metrics_port is None:
            problems.append(f"{c.show()}: no --metrics-port")
            continue
        if a.metrics_host in LOOPBACK:
            problems.append(f"{c.show()}: --metrics-host {a.metrics_host}: Prometheus cannot reach it")
        wanted.add((c.service, a.metrics_port))
        if a.metrics_port not in {cp for _, cp in port_pairs(service)}:
            problems.append(f"{c.service}: metrics port {a.metrics_port} is not published")
        health = " ".join(argv_list((service.get("healthcheck") or {}).get("test")))
        for url in re.findall(r"https?://[^\s\"']+", health):
            if host_port(url, 80)[1] != a.metrics_port:
                problems.append(f"{c.service}: healthcheck {url} is not its metrics port {a.metrics_port}")
    if missing := wanted - targets:
        problems.append(f"{prom_file}: does not scrape {sorted(missing)}")
    if stray := targets - wanted:
        problems.append(f"{prom_file}: scrapes {sorted(stray)}, which is no peer's metrics endpoint")
    # Host ports: compose refuses two services publishing the same one.
    seen: dict[int, str] = {}
    for name, service in d.services().items():
        for host, _ in port_pairs(service):
            if host is not None and host in seen:
                problems.append(f"{name} and {seen[host]} both publish host port {host}")
            elif host is not None:
                seen[host] = name
    return problems


def exposed_metrics() -> tuple[set[str], set[str]]:
    """Sample names and label names a peer exports (peer/metrics.py)."""
    samples, labels = set(), {"le"}
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    metrics = PeerMetrics("db", "peer")
    for family in metrics.registry.collect():
        samples.update(family.name + s for s in suffixes.get(family.type, ("",)))
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels.update(metric._labelnames)  # noqa: SLF001  (a labelled metric's names; no public API)
    return samples, labels


def promql(node: Any) -> Iterator[str]:
    """Every PromQL expression of a dashboard: targets' ``expr``, variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from promql(value)
    elif isinstance(node, list):
        for value in node:
            yield from promql(value)


def datasource_uids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            yield str(ds["uid"])
        for value in node.values():
            yield from datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_uids(value)


def grafana_files(d: Deployment) -> tuple[str, dict[str, Any], str | None]:
    for name, service in d.services().items():
        if image_name(service)[0].endswith("grafana"):
            return name, service, d.file_in(name, "/etc/grafana/provisioning")
    raise AssertionError("no Grafana service")


def check_grafana(d: Deployment) -> list[str]:
    problems = []
    name, service, provisioning = grafana_files(d)
    if provisioning is None:
        return [f"{name}: /etc/grafana/provisioning is not mounted from the repository"]
    prom_name, prom_service, _, prom_port = prometheus_service(d)
    uids = set()
    for source in sorted((d.host_file(provisioning) / "datasources").glob("*.y*ml")):
        rel = str(PurePosixPath(provisioning) / "datasources" / source.name)
        for ds in d.read(rel, "yaml").get("datasources") or []:
            uids.add(ds.get("uid"))
            if ds.get("type") == "prometheus" and host_port(ds.get("url", ""), 80) != (prom_name, prom_port):
                problems.append(f"{rel}: datasource url {ds.get('url')} is not {prom_name}:{prom_port}")
    if prom_port not in {cp for _, cp in port_pairs(prom_service)}:
        problems.append(f"{prom_name}: does not publish its port {prom_port}")
    dashboards: list[tuple[str, Any]] = []
    for source in sorted((d.host_file(provisioning) / "dashboards").glob("*.y*ml")):
        rel = str(PurePosixPath(provisioning) / "dashboards" / source.name)
        for provider in d.read(rel, "yaml").get("providers") or []:
            path = (provider.get("options") or {}).get("path", "")
            host = d.file_in(name, path)
            if host is None:
                problems.append(f"{rel}: dashboards path {path} is not mounted from the repository")
                continue
            for file in sorted(d.host_file(host).glob("*.json")):
                drel = str(PurePosixPath(host) / file.name)
                dashboards.append((drel, d.read(drel, "json")))
    if not dashboards:
        problems.append("Grafana provisions no dashboard")
    for var, value in env_of(service).items():
        if var.startswith("GF_") and value.startswith("/"):
            host = d.file_in(name, value)
            if host is None or not d.host_file(host).exists():
                problems.append(f"{name}: {var}={value} is no file mounted from the repository")
    samples, labels = exposed_metrics()
    prom_file = prometheus_service(d)[2]
    if prom_file:
        for job in d.read(prom_file, "yaml").get("scrape_configs") or []:
            for sc in job.get("static_configs") or []:
                labels.update((sc.get("labels") or {}).keys())
    labels |= {"instance", "job"}
    for drel, dash in dashboards:
        if stray := set(datasource_uids(dash)) - uids:
            problems.append(f"{drel}: datasource uids {sorted(stray)} are not provisioned ({sorted(uids)})")
        exprs = list(promql(dash))
        used = {m for e in exprs for m in re.findall(r"\boplog_[a-z_]+", e)}
        if unknown := used - samples:
            problems.append(f"{drel}: queries {sorted(unknown)}, which peer/metrics.py does not export")
        for e in exprs:
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
                if stray := {x.strip() for x in group.split(",") if x.strip()} - labels:
                    problems.append(f"{drel}: {e!r} groups by {sorted(stray)}, labels no peer metric has")
        wanted = {"oplog_ops_applied_total", "oplog_ops_rejected_total", "oplog_peer_lag_messages",
                  "oplog_peer_diverged", "oplog_peer_last_epoch"}  # fmt: skip
        if missing := wanted - used:
            problems.append(f"{drel}: shows nothing of {sorted(missing)}")
        if not any("oplog_ops_rejected_total" in e and re.search(r"by\s*\([^)]*\breason\b", e) for e in exprs):
            problems.append(f"{drel}: does not show rejections by reason")
        for histogram in ("oplog_epoch_commit_seconds", "oplog_seal_to_commit_seconds"):
            for q, p in (("0.5", "p50"), ("0.99", "p99")):
                if not any(
                    re.search(rf"histogram_quantile\(\s*{re.escape(q)}\s*,.*{histogram}_bucket", e) for e in exprs
                ):
                    problems.append(f"{drel}: no {p} of {histogram}")
    return problems


def check_image(d: Deployment) -> list[str]:
    """The oplog image copies every package pyproject.toml installs, and runs ``oplog``."""
    problems = []
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed |= {"pyproject.toml", str(pyproject["project"]["readme"])}
    copied = set()
    for line in d.dockerfile.splitlines():
        if line.strip().upper().startswith("COPY ") and "--from" not in line:
            copied.update(PurePosixPath(s).parts[0] for s in line.split()[1:-1] if not s.startswith("--"))
    if missing := needed - copied:
        problems.append(f"compose/Dockerfile does not COPY {sorted(missing)}")
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().split()
    if missing := {n for n in needed if f"!{n}" not in ignore and f"!{n}/" not in ignore}:
        problems.append(f"compose/Dockerfile.dockerignore leaves out {sorted(missing)}")
    if dockerfile_instruction(d.dockerfile, "ENTRYPOINT") != ["oplog"]:
        problems.append('compose/Dockerfile\'s ENTRYPOINT is not ["oplog"]')
    if not [n for n, s in d.services().items() if is_oplog_image(s)]:
        problems.append("no service is built from compose/Dockerfile")
    return problems


CHECKS = [check_commands, check_env, check_nats, check_dolt, check_identities, check_metrics_ports, check_grafana,
          check_image]  # fmt: skip


# ---- the deployment as it is -------------------------------------------------------------------


def test_the_compose_file_is_what_the_checks_expect(base: Deployment) -> None:
    services = base.services()
    assert base.load_problems == []
    assert len(nats_services(base)) == 3
    assert len(base.by_kind("serve")) == 3
    commands, problems = base.oplog_commands()
    assert problems == []
    assert sorted(c.command for c in commands) == ["init", "publish", "roster", "serve", "serve", "serve", "status"]
    assert {"prometheus", "grafana", "init"} <= set(services)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_no_drift(base: Deployment, check: Any) -> None:
    assert check(base) == []


def test_every_nats_config_passes_nats_server_config_test(base: Deployment, tmp_path: Path) -> None:
    assert nats_config_test(base, tmp_path) == []


def test_the_readme_section_points_here() -> None:
    text = (ROOT / "README.md").read_text()
    assert "## Deploying with Docker Compose" in text
    assert "compose/README.md" in text


# ---- the checks fail when something drifts ------------------------------------------------------


def svc(d: Deployment, name: str) -> dict[str, Any]:
    return d.services()[name]


def set_flag(argv: list[str], flag: str, value: str) -> None:
    argv[argv.index(flag) + 1] = value


def found(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


def test_an_unknown_flag_is_caught(d: Deployment) -> None:
    svc(d, "peer-a")["command"].append("--metrics-path")
    assert found(check_commands(d), "peer-a", "does not parse", "--metrics-path")


def test_an_unknown_command_in_the_init_script_is_caught(d: Deployment) -> None:
    svc(d, "init")["command"] = [svc(d, "init")["command"][0] + "oplog schema --db shop\n"]
    assert found(check_commands(d), "init", "does not parse")


def test_a_missing_init_step_is_caught(d: Deployment) -> None:
    script = svc(d, "init")["command"][0]
    svc(d, "init")["command"] = ["\n".join(line for line in script.splitlines() if "roster" not in line)]
    assert found(check_commands(d), "oplog roster")


def test_an_env_var_oplog_does_not_read_is_caught(d: Deployment) -> None:
    svc(d, "peer-b")["environment"]["OPLOG_NATS_SEED"] = "/run/secrets/b.nk"
    assert found(check_env(d), "peer-b", "OPLOG_NATS_SEED")


def test_a_nats_url_on_the_wrong_port_is_caught(d: Deployment) -> None:
    svc(d, "peer-c")["environment"]["OPLOG_NATS_URL"] = "nats://nats-1:4223,nats://nats-2:4222,nats://nats-3:4222"
    assert found(check_nats(d), "peer-c", "nats-1 listens on 4222")


def test_a_client_that_misses_a_node_is_caught(d: Deployment) -> None:
    svc(d, "init")["environment"]["OPLOG_NATS_URL"] = "nats://nats-1:4222"
    assert found(check_nats(d), "init", "not to every node")


def test_a_missing_route_or_sync_setting_is_caught(d: Deployment) -> None:
    _, host = nats_config_path(d, "nats-1")
    assert host is not None
    text = d.read(host).replace('"nats-route://nats-3:6222"', "").replace("sync_interval: always", "")
    d.overrides[host] = text
    problems = check_nats(d)
    assert found(problems, "routes")
    assert found(problems, "sync_interval")


def test_a_nats_config_the_server_rejects_is_caught(d: Deployment, tmp_path: Path) -> None:
    _, host = nats_config_path(d, "nats-2")
    assert host is not None
    d.overrides[host] = d.read(host).replace("sync_interval: always", "sync_interval: always\n  max_memory_stor: 1G")
    assert found(nats_config_test(d, tmp_path), "nats-2", "max_memory_stor")


def test_a_nats_node_without_its_name_is_caught(d: Deployment, tmp_path: Path) -> None:
    del svc(d, "nats-3")["environment"]["NATS_SERVER_NAME"]
    assert found(nats_config_test(d, tmp_path), "nats-3", "NATS_SERVER_NAME")
    assert found(check_nats(d), "server names")


def test_a_wrong_dolt_port_or_host_is_caught(d: Deployment) -> None:
    set_flag(svc(d, "peer-a")["command"], "--dolt-port", "3307")
    set_flag(svc(d, "peer-b")["command"], "--dolt-host", "dolt-a")
    problems = check_dolt(d)
    assert found(problems, "peer-a", "--dolt-port 3307", "3306")
    assert found(problems, "share Dolt server dolt-a")


def test_a_dolt_server_without_the_pinned_committer_date_is_caught(d: Deployment) -> None:
    svc(d, "dolt-b")["environment"] = {k: v for k, v in env_of(svc(d, "dolt-b")).items() if k != "DOLT_COMMITTER_DATE"}
    svc(d, "dolt-c")["environment"]["DOLT_COMMITTER_DATE"] = "2000-01-01 00:00:00"
    problems = check_dolt(d)
    assert found(problems, "dolt-b", "not set")
    assert found(problems, "dolt-c", "dolt ignores")
    assert found(problems, "differ")


def test_a_peer_without_the_shared_exchange_dir_is_caught(d: Deployment) -> None:
    del svc(d, "peer-b")["environment"]["TMPDIR"]
    assert found(check_dolt(d), "peer-b", "/tmp", "dolt-b")


def test_a_dolt_password_mismatch_is_caught(d: Deployment) -> None:
    svc(d, "dolt-a")["environment"]["DOLT_ROOT_PASSWORD"] = "something else"
    assert found(check_dolt(d), "peer-a", "DOLT_ROOT_PASSWORD")


def test_a_peer_with_another_peers_seed_is_caught(d: Deployment) -> None:
    svc(d, "peer-a")["environment"]["OPLOG_NATS_NKEY"] = "/run/secrets/b.nk"
    svc(d, "peer-a")["secrets"] = [{"source": "b_nkey", "target": "b.nk"}]
    assert found(check_identities(d), "peer-a", "logs in as 'b'")


def test_a_roster_or_expected_peers_mismatch_is_caught(d: Deployment) -> None:
    set_flag(svc(d, "peer-c")["command"], "--expected-peers", "2")
    svc(d, "init")["command"] = [svc(d, "init")["command"][0].replace("--peers a,b,c", "--peers a,b")]
    problems = check_identities(d)
    assert found(problems, "peer-c", "--expected-peers 2")
    assert found(problems, "roster")


def test_a_stream_with_fewer_replicas_than_nodes_is_caught(d: Deployment) -> None:
    svc(d, "init")["command"] = [svc(d, "init")["command"][0].replace("init --db shop --replicas 3", "init --db shop")]
    assert found(check_identities(d), "init", "--replicas 1")


def test_a_secret_the_readme_command_does_not_make_is_caught(d: Deployment) -> None:
    d.compose["secrets"]["p2_nkey"] = {"file": "./secrets/p2.nk"}
    assert found(check_identities(d), "p2_nkey", "not written")


def test_a_prometheus_target_on_the_wrong_port_is_caught(d: Deployment) -> None:
    _, _, prom_file, _ = prometheus_service(d)
    assert prom_file is not None
    prom = d.read(prom_file, "yaml")
    prom["scrape_configs"][0]["static_configs"][1]["targets"] = ["peer-b:9101"]
    d.overrides[prom_file] = prom
    problems = check_metrics_ports(d)
    assert found(problems, "does not scrape", "peer-b")
    assert found(problems, "peer-b', 9101")


def test_a_metrics_port_prometheus_does_not_scrape_is_caught(d: Deployment) -> None:
    set_flag(svc(d, "peer-c")["command"], "--metrics-port", "9200")
    set_flag(svc(d, "peer-c")["command"], "--metrics-host", "127.0.0.1")
    problems = check_metrics_ports(d)
    assert found(problems, "does not scrape", "9200")
    assert found(problems, "peer-c", "cannot reach")
    assert found(problems, "peer-c", "not published")


def test_a_dashboard_metric_that_does_not_exist_is_caught(d: Deployment) -> None:
    _, _, provisioning = grafana_files(d)
    rel = "grafana/dashboards/oplog.json"
    dash = d.read(rel, "json")
    dash["panels"][1]["targets"][0]["expr"] = 'oplog_peer_last_epochs{db="$db"}'
    dash["panels"][2]["targets"][0]["expr"] = "sum by (node) (oplog_peer_diverged)"
    d.overrides[rel] = dash
    problems = check_grafana(d)
    assert provisioning is not None
    assert found(problems, "oplog_peer_last_epochs")
    assert found(problems, "node")


def test_a_dashboard_without_p99_is_caught(d: Deployment) -> None:
    rel = "grafana/dashboards/oplog.json"
    text = json.dumps(d.read(rel, "json")).replace("histogram_quantile(0.99", "histogram_quantile(0.95")
    d.overrides[rel] = json.loads(text)
    assert found(check_grafana(d), "p99", "oplog_seal_to_commit_seconds")


def test_a_datasource_pointing_elsewhere_is_caught(d: Deployment) -> None:
    rel = "grafana/provisioning/datasources/prometheus.yml"
    ds = d.read(rel, "yaml")
    ds["datasources"][0]["url"] = "http://prometheus:9091"
    d.overrides[rel] = ds
    assert found(check_grafana(d), "datasource url")


def test_a_grafana_home_dashboard_that_is_not_there_is_caught(d: Deployment) -> None:
    svc(d, "grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] = "/etc/grafana/dashboards/x.json"
    assert found(check_grafana(d), "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")


def test_a_package_the_image_does_not_copy_is_caught(d: Deployment) -> None:
    d.dockerfile = d.dockerfile.replace("COPY epoch ./epoch\n", "")
    assert found(check_image(d), "epoch")


def test_an_unset_compose_variable_is_caught() -> None:
    problems: list[str] = []
    interpolate({"x": "${NOT_THERE}", "y": "${DEFAULTED:-1}", "z": "$$HOME"}, {}, problems, "compose")
    assert problems == ["compose.x: ${NOT_THERE} is not set and has no default"]
    assert interpolate("${A:?need A}/${B-b}/$$x", {"A": "a"}, problems) == "a/b/$x"
