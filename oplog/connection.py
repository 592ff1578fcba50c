"""Connecting to NATS: every connection option in one frozen model, secrets kept out of logs.

Every oplog process (peer, producer, CLI command) connects through :func:`connect` with a
:class:`NatsOptions`. Authentication is one of: user and password (also accepted inside
the URL, ``nats://user:password@host:4222``), a token (``nats://token@host``), a
decentralized-auth ``.creds`` file (user JWT + NKEY seed, operator mode), or an NKEY seed
file (``nkey`` users of a server's ``authorization`` block). TLS adds a CA to verify the
server and, when the server verifies clients, a client certificate and key.

Secrets never reach a log line or an error message: URLs are shown through
:func:`redact`, passwords and tokens are :class:`~pydantic.SecretStr`, and every error
text from the client library is scrubbed of them before it is logged or raised.

A refused connection fails fast: the first "Authorization Violation" or TLS
verification failure of the *initial* connection raises :class:`NatsAuthError` (retrying
the same credentials cannot help), while unreachable servers are retried only for
``start_wait_s``. Once connected, the client reconnects forever (a cluster node may
restart) unless ``reconnect=False``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from nats.aio.client import Client
from nats.errors import AuthorizationError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from oplog.errors import NatsAuthError, NatsConnectError

DEFAULT_URL = "nats://127.0.0.1:4222"
# Environment variables naming the servers, first match wins: ours, then the one the
# `nats` CLI reads. Read by the entry point only (NatsOptions.default_url).
URL_ENV = ("OPLOG_NATS_URL", "NATS_URL")
RECONNECT_WAIT_S = 0.2
REDACTED = "***"

# What the server says when it refuses a connection's credentials (lower-cased).
_REFUSALS = ("authorization violation", "authentication expired", "authentication revoked", "authentication timeout")

_log = logging.getLogger("oplog.nats")


def redact(url: str) -> str:
    """``url`` (one or a comma-separated list) with every password or token replaced by ``***``.

    ``nats://u:secret@h:4222`` -> ``nats://u:***@h:4222``; ``nats://tok@h`` (a token) ->
    ``nats://***@h``. Use it for every URL that goes into a log line or an error message.
    """
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(server: str) -> str:
    scheme, sep, rest = server.partition("://")
    if not sep:
        scheme, rest = "", server
    userinfo, at, host = rest.rpartition("@")  # rpartition: a password may hold an unescaped '@'
    if not at:
        return server
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{REDACTED}" if colon else REDACTED
    return f"{scheme}{sep}{shown}@{host}"


def _split_server(server: str) -> tuple[str, str | None, str | None]:
    """``(url without credentials, user or token, password)`` of one server URL."""
    server = server.strip()
    if "://" not in server:
        server = "nats://" + server  # as nats-py does for a bare host:port
    scheme, _, rest = server.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return server, None, None
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{host}", unquote(user) or None, unquote(password) if colon else None


class NatsOptions(BaseModel):
    """How to reach and authenticate to NATS; built once by the entry point (CLI) and passed down.

    At most one of ``user``/``password``, ``token``, ``creds`` and ``nkey`` may be given;
    credentials inside ``url`` count as given, and explicit fields win over the URL's.
    """

    model_config = ConfigDict(frozen=True)

    url: str = Field(DEFAULT_URL, min_length=1, description="comma-separated server URLs")
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds: Path | None = Field(None, description="a .creds file (user JWT + NKEY seed): operator-mode servers")
    nkey: Path | None = Field(None, description="an NKEY seed file: nkey users of an authorization block")
    tls_ca: Path | None = Field(None, description="CA bundle that signed the server's certificate")
    tls_cert: Path | None = Field(None, description="client certificate, for servers that verify clients")
    tls_key: Path | None = None
    tls_hostname: str | None = Field(None, description="name to check the server's certificate against")
    connect_timeout_s: float = Field(5.0, gt=0, description="one connection attempt (TCP + TLS + CONNECT)")
    start_wait_s: float = Field(60.0, gt=0, description="how long the first connection waits for a server")

    @model_validator(mode="after")
    def _one_method(self) -> NatsOptions:
        user, password, token = self.credentials()
        methods = [
            name
            for name, given in (
                ("user/password", user is not None or password is not None),
                ("token", token is not None),
                ("creds", self.creds is not None),
                ("nkey", self.nkey is not None),
            )
            if given
        ]
        if len(methods) > 1:
            raise ValueError(f"give one way to authenticate to NATS, not {' and '.join(methods)}")
        if (user is None) != (password is None):
            raise ValueError("a NATS user needs a password, and a password needs a user")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("a TLS client certificate needs its key (tls_cert and tls_key go together)")
        return self

    @classmethod
    def default_url(cls, environ: Mapping[str, str]) -> str:
        """The servers an entry point uses when none are given: ``$OPLOG_NATS_URL``, else
        ``$NATS_URL`` (as the ``nats`` CLI reads it), else ``nats://127.0.0.1:4222``."""
        for name in URL_ENV:
            if environ.get(name):
                return environ[name]
        return DEFAULT_URL

    @classmethod
    def coerce(cls, value: str | NatsOptions) -> NatsOptions:
        """``value`` itself, or options for the URL ``value`` (credentials in it included)."""
        return value if isinstance(value, NatsOptions) else cls(url=value)

    @property
    def servers(self) -> list[str]:
        """The server URLs without credentials (those go in the CONNECT message)."""
        return [_split_server(part)[0] for part in self.url.split(",") if part.strip()]

    @property
    def display_url(self) -> str:
        """The URL as logs and errors show it: credentials replaced by ``***``."""
        return redact(self.url)

    def credentials(self) -> tuple[str | None, str | None, str | None]:
        """``(user, password, token)`` in effect: the explicit fields, else the URL's."""
        user = self.user
        password = self.password.get_secret_value() if self.password is not None else None
        token = self.token.get_secret_value() if self.token is not None else None
        if user is None and password is None and token is None:
            for part in self.url.split(","):
                _, url_user, url_password = _split_server(part)
                if url_user is not None:
                    if url_password is None:
                        return None, None, url_user  # a lone userinfo is a token, as nats-py reads it
                    return url_user, url_password, None
        return user, password, token

    def scrub(self, text: str) -> str:
        """``text`` without this connection's password or token (for messages of the client library)."""
        _, password, token = self.credentials()
        for secret in (password, token):
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def describe_auth(self) -> str:
        """Which credentials these options present, without secrets (for error messages)."""
        user, _, token = self.credentials()
        if user is not None:
            return f"user {user!r} with a password"
        if token is not None:
            return "a token"
        if self.creds is not None:
            return f"creds file {str(self.creds)!r}"
        if self.nkey is not None:
            return f"nkey seed file {str(self.nkey)!r} (public key {_public_nkey(self.nkey)})"
        if self.tls_cert is not None:
            return f"TLS client certificate {str(self.tls_cert)!r}"
        return "no credentials"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for these options, or None when they ask for no TLS."""
        tls_scheme = any(s.startswith("tls://") for s in self.servers)
        if self.tls_ca is None and self.tls_cert is None and not tls_scheme:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca is not None else None)
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as e:
            raise NatsAuthError(
                f"cannot load the TLS files for NATS at {self.display_url}: {e}; "
                "check tls_ca, tls_cert and tls_key (PEM files this process can read)"
            ) from None
        return context

    def connect_kwargs(self, *, name: str) -> dict[str, Any]:
        """Keyword arguments of ``nats.aio.client.Client.connect`` for these options."""
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "name": name,
            "connect_timeout": self.connect_timeout_s,
            "reconnect_time_wait": RECONNECT_WAIT_S,
        }
        user, password, token = self.credentials()
        if user is not None:
            kwargs.update(user=user, password=password)
        if token is not None:
            kwargs["token"] = token
        for path, what in ((self.creds, "creds"), (self.nkey, "nkey seed")):
            if path is not None and not path.is_file():
                raise NatsAuthError(f"the NATS {what} file {str(path)!r} does not exist; give the path of "
                                    f"the file `oplog auth config --credentials-dir` wrote (or nsc made)")  # fmt: skip
        if self.creds is not None:
            kwargs["user_credentials"] = str(self.creds)
        if self.nkey is not None:
            kwargs["nkeys_seed"] = str(self.nkey)
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
            if self.tls_hostname is not None:
                kwargs["tls_hostname"] = self.tls_hostname
        return kwargs


def _public_nkey(seed_file: Path) -> str:
    try:
        import nkeys

        pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
        try:
            return str(pair.public_key.decode())
        finally:
            pair.wipe()
    except Exception:  # only ever used in error messages: say so rather than fail again
        return "unreadable"


def _refusal(error: BaseException) -> str | None:
    """The server's reason if ``error`` says it refused the credentials, else None."""
    if isinstance(error, AuthorizationError):
        return "Authorization Violation"
    text = str(error)
    if any(reason in text.lower() for reason in _REFUSALS):
        return text.removeprefix("nats: ").strip().strip("'")
    return None


def _tls_failure(error: BaseException) -> bool:
    # A certificate the CA did not sign, or a server that wants a client certificate we do
    # not have, fails the same way on every try; an EOF mid-handshake may be a restart.
    return isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError)


async def connect(
    options: NatsOptions, *, name: str, reconnect: bool = True, logger: logging.Logger | None = None
) -> Client:
    """A connected NATS client for ``options``.

    Raises :class:`NatsAuthError` at the first refusal of the credentials or of TLS, and
    :class:`NatsConnectError` when no server answered within ``options.start_wait_s``.
    With ``reconnect`` the client then reconnects forever; without it, it closes on the
    first disconnect. Errors after connecting (a permission violation, a refused
    reconnect) are logged, scrubbed of secrets, on ``logger``.
    """
    log = logger or _log
    where = options.display_url
    kwargs = options.connect_kwargs(name=name)
    nc = Client()
    last: list[BaseException] = []
    # "connecting" until Client.connect returned, then "connected"; "failed" silences the
    # errors a half-open client reports while it is torn down after a refusal.
    phase = ["connecting"]

    async def on_error(error: Exception) -> None:
        if phase[0] == "failed":
            return
        if phase[0] == "connecting":
            # Raising here ends Client.connect's retry loop: a refusal will not change.
            if (reason := _refusal(error)) is not None:
                raise NatsAuthError(f"NATS at {where} refused the credentials ({options.describe_auth()}): "
                                    f"{options.scrub(reason)}; check them against the server's authorization "
                                    "config (docs/security.md)")  # fmt: skip
            if "maximum control line exceeded" in str(error).lower():
                # Operator mode: the CONNECT line carries the user's JWT, which holds its
                # permissions; a peer's can outgrow the server's default limit (4 KB).
                raise NatsAuthError(f"NATS at {where} refused the CONNECT line of {options.describe_auth()} as "
                                    "too long (maximum control line exceeded): the user JWT and its permissions "
                                    "exceed the server's max_control_line; set max_control_line: 16KB in its "
                                    "config (docs/security.md)")  # fmt: skip
            if _tls_failure(error):
                raise NatsAuthError(f"TLS with NATS at {where} failed: {options.scrub(str(error))}; check "
                                    "tls_ca (the CA that signed the server's certificate) and, if the server "
                                    "verifies clients, tls_cert and tls_key")  # fmt: skip
            last[:] = [error]
            log.debug("NATS %s: connecting: %s", where, options.scrub(repr(error)))
            return
        if (reason := _refusal(error)) is not None:
            log.error("NATS %s refused the credentials (%s): %s", where, options.scrub(reason), options.describe_auth())
        elif phase[0] == "disconnected" and isinstance(error, OSError):
            # Each reconnect attempt fails the same way while the server is down: the
            # change of state was logged once (on_disconnect), the attempts are not.
            log.debug("NATS %s: reconnecting: %s", where, options.scrub(repr(error)))
        else:
            log.warning("NATS %s: %s", where, options.scrub(str(error) or repr(error)))

    async def on_disconnect() -> None:
        if nc.is_closed or nc.is_draining:
            return  # our own close(), not a lost server
        if phase[0] == "connected":
            phase[0] = "disconnected"
            log.warning("lost the connection to NATS at %s; reconnecting", where)

    async def on_reconnect() -> None:
        if phase[0] == "disconnected":
            phase[0] = "connected"
            log.info("reconnected to NATS at %s", where)

    try:
        # Retry forever inside the client (a cluster may still be starting), bounded by
        # start_wait_s here; on_error ends it at once on a refusal.
        await asyncio.wait_for(
            nc.connect(
                **kwargs,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
            ),
            options.start_wait_s,
        )
    except NatsAuthError:
        phase[0] = "failed"
        await _discard(nc)
        raise
    except TimeoutError:  # asyncio.wait_for: start_wait_s passed
        phase[0] = "failed"
        await _discard(nc)
        why = options.scrub(repr(last[0])) if last else "no answer"
        raise NatsConnectError(f"no NATS server at {where} answered within {options.start_wait_s:.0f} s "
                               f"(last error: {why}); check the URL and that the servers run") from None  # fmt: skip
    except BaseException:
        phase[0] = "failed"
        await _discard(nc)
        raise
    phase[0] = "connected"
    # The retry policy above is for the first connection; this one is for later drops.
    # Client.connect reads both from its options dict, so setting it here is what it uses.
    nc.options["allow_reconnect"] = reconnect
    return nc


async def _discard(nc: Client) -> None:
    """Close a client whose connect failed half-way (its socket and tasks)."""
    # Nothing was sent that a graceful close could flush, and after a failed TLS upgrade
    # Client.close would wait for a stream the upgrade replaced (until the server's TLS
    # timeout). So drop the socket and let close() skip it; nats-py has no public handle.
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    if writer is not None:
        writer.transport.abort()
        nc._transport = None
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:  # nothing left to save; the original error is what matters
        pass


CLOSE_TIMEOUT_S = 5.0


async def close(nc: Client) -> None:
    """Close ``nc``, bounded and quiet: a connection whose server is gone cannot flush
    (nats-py raises ConnectionResetError from its drain), and a stopping process must
    not fail or hang on that."""
    try:
        await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        _log.debug("closing the NATS connection: %r", e)
