"""Who is asking: the dashboard's secret, its login sessions and the local user behind a request.

On a shared login node loopback is not private: every user of the machine can connect to
127.0.0.1. So the dashboard has a **secret** (Jupyter's token, in effect): 32 random bytes in a
file only its owner can read (mode 0600 in a 0700 folder, :func:`load_or_create_secret`),
printed once as part of a login URL. Opening ``/?token=SECRET`` sets a **session cookie**
(``HttpOnly``, ``SameSite=Strict``, :data:`SESSION_S` long) whose value carries its own expiry
and an HMAC under the secret, so the process keeps no session table and a restart with the same
secret keeps the browser logged in. Scripts send ``Authorization: Bearer SECRET`` instead.

Each session has its own **action token** (:meth:`Login.action_token`, an HMAC of the session),
so a token seen by one viewer acts for nobody else and expires with its session.

Who acted is logged as the session (or "bearer"), the client address and, for connections from
this machine, the local user that owns the client's socket (:func:`peer_user`, read from
``/proc/net/tcp``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pwd
import secrets
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import ConfigError

#: seconds a login session lasts (then the login URL is needed again)
SESSION_S = 12 * 3600.0
#: the environment variable that names the secret's file (``--token-file``)
TOKEN_FILE_ENV = "HYPERFLEET_DASHBOARD_TOKEN_FILE"
#: the query parameter of the login URL
TOKEN_PARAM = "token"
_MIN_SECRET_CHARS = 32


def default_token_file() -> Path:
    """``$XDG_CONFIG_HOME/hyperfleet/dashboard-token`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hyperfleet" / "dashboard-token"


def load_or_create_secret(path: Path, *, rotate: bool = False) -> str:
    """The secret in ``path``, created (mode 0600, its folder 0700) when missing or ``rotate``.
    A file that others could read or change, or that is not ours, is a :class:`ConfigError`
    that says how to fix it: the secret is only as private as its file."""
    path = Path(path)
    if rotate:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path)
    except OSError as e:
        raise ConfigError(
            f"cannot read the dashboard's secret {path} ({e.strerror}); delete it or pass "
            "another --token-file"
        ) from None
    with os.fdopen(fd) as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(
                f"{path} is not a file of yours; delete it or pass another --token-file"
            )
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}): "
                f"run `chmod 600 {path}` and restart, or delete it for a new secret"
            )
        secret = f.read().strip()
    if len(secret) < _MIN_SECRET_CHARS:
        raise ConfigError(f"{path} holds no usable secret; delete it for a new one")
    return secret


def _create(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise ConfigError(
            f"cannot create the dashboard's secret {path} ({e.strerror}); pass a writable "
            "--token-file"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


@dataclass(frozen=True)
class Identity:
    """Who a request comes from, as far as the dashboard can tell."""

    how: str  #: ``session``, ``bearer``, ``open`` (no secret: a library or test app) or ``public``
    session: str = ""  #: the cookie's value (``session``)

    @property
    def can_act(self) -> bool:
        """Whether this requester may be shown action forms (public viewers may not)."""
        return self.how != "public"

    @property
    def label(self) -> str:
        """A short, non-secret name for logs and the rate limit."""
        if self.how == "session":
            return "session " + hashlib.sha256(self.session.encode()).hexdigest()[:8]
        return "anonymous" if self.how == "public" else self.how


PUBLIC = Identity("public")
OPEN = Identity("open")


class Login:
    """Checks the secret, issues and verifies session cookies and per-session action tokens."""

    def __init__(
        self,
        secret: str,
        *,
        cookie_name: str = "hyperfleet-dashboard",
        session_s: float = SESSION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = hashlib.sha256(b"hyperfleet-dashboard|" + secret.encode()).digest()
        self._secret = secret
        self.cookie_name = cookie_name
        self.session_s = session_s
        self.clock = clock

    def _mac(self, *parts: str) -> str:
        return hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:40]

    def secret_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), self._secret.encode())

    def new_session(self) -> str:
        """A cookie value: ``expiry.nonce.mac``."""
        expires = str(int(self.clock() + self.session_s))
        nonce = secrets.token_hex(8)
        return f"{expires}.{nonce}.{self._mac('session', expires, nonce)}"

    def session_ok(self, value: str | None) -> bool:
        if not value or value.count(".") != 2 or len(value) > 200:
            return False
        expires, nonce, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac("session", expires, nonce)):
            return False
        return expires.isdigit() and int(expires) > self.clock()

    def set_cookie_header(self, value: str) -> str:
        return (
            f"{self.cookie_name}={value}; Max-Age={int(self.session_s)}; Path=/; HttpOnly; "
            "SameSite=Strict"
        )

    def identify(self, headers: Mapping[str, str]) -> Identity | None:
        """The requester of a request with ``headers`` (lower-case names), or ``None``."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self.secret_ok(auth[7:].strip()):
            return Identity("bearer")
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie_name and self.session_ok(value):
                return Identity("session", value)
        return None

    def action_token(self, who: Identity) -> str:
        """The token this requester's action forms carry (bound to its session)."""
        return self._mac("action", who.how, who.session)


# -- the local user behind a connection ----------------------------------------------------------


def _decode(hex_addr: str) -> tuple[str, int]:
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    words = b"".join(
        struct.pack("<I", struct.unpack(">I", raw[i : i + 4])[0]) for i in range(0, len(raw), 4)
    )
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def _same_ip(a: str, b: str) -> bool:
    if a == b:
        return True
    mapped = "::ffff:"
    return a.removeprefix(mapped) == b.removeprefix(mapped)


def peer_user(client: tuple[str, int] | None, server_port: int | None) -> str | None:
    """The local user that owns the client end of a TCP connection from this machine (``None``
    when it is not found: another machine, not Linux, a closed socket)."""
    if not client or server_port is None:
        return None
    host, port = client
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            try:
                local, remote = _decode(cols[1]), _decode(cols[2])
            except (ValueError, IndexError, struct.error):
                continue
            if local[1] == port and remote[1] == server_port and _same_ip(local[0], host):
                uid = int(cols[7])
                try:
                    return pwd.getpwuid(uid).pw_name
                except KeyError:
                    return f"uid {uid}"
    return None
