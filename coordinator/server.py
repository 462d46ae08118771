"""The embedded MongoDB-compatible server (SecantusDB), always run as a separate process.

It is never imported into hyperfleet's processes: a server crash cannot take the coordinator down,
and SecantusDB's GPL-2.0 code stays apart from ours. Ready means the daemon we started logged that
it listens and ``ping`` answers.

Process hygiene: the daemon dies with the process that started it (Linux parent-death signal, set
by a tiny launcher that then execs the daemon), a database directory held by another daemon is
refused before anything starts, naming that daemon's pid, and the temporary working folder
(``hyperfleet-server-*``) is removed on stop; folders left by killed servers are swept at the next
start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from coordinator import defaults
from coordinator.errors import ServerStartError

logger = logging.getLogger(__name__)

DEFAULT_DB_PATH = defaults.DB_PATH
#: the daemon's "listening on HOST:PORT" line; HOST may be an IPv6 address (``:::27017``)
_LISTENING_RE = re.compile(r"listening on (?P<host>\S*):(?P<port>\d+)")


WORKDIR_PREFIX = "hyperfleet-server-"
#: in a working folder: the pid of the hyperfleet process that owns it (swept once that is gone)
OWNER_FILE = "owner.pid"
PR_SET_PDEATHSIG = 1  #: linux/prctl.h

# argv: parent pid, signal number, the command to exec. Sets the parent-death signal, exits if the
# parent is already gone (it died while this started), then becomes the command (same pid).
_LAUNCHER = """\
import ctypes, os, sys
parent, sig, cmd = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(0)
os.execv(cmd[0], cmd)
"""


def die_with_parent(cmd: list[str], sig: signal.Signals = signal.SIGTERM) -> list[str]:
    """``cmd`` wrapped so that its process gets ``sig`` when the calling thread's process dies
    (SIGKILL included; Linux only, elsewhere ``cmd`` unchanged). The kernel sends the signal when
    the *thread* that started the child ends, so only the main thread wraps: from another thread
    ``cmd`` is returned as is. ``cmd[0]`` must be a path to an executable."""
    if not sys.platform.startswith("linux"):
        return cmd
    if threading.current_thread() is not threading.main_thread():
        return cmd
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), str(int(sig)), *cmd]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_workdirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove ``hyperfleet-server-*`` folders whose owning process is gone (a server that was
    SIGKILLed cannot clean up after itself). Returns the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours to judge (older versions wrote no owner file)
        if not _pid_alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _proc_cmdlines() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            found.append((int(entry.name), raw.decode(errors="replace").split("\0")))
    return found


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def holder_of(db_path: Path) -> str | None:
    """Describe the running SecantusDB daemon that uses ``db_path`` (its pid, and whether the
    hyperfleet process that started it is gone), or None. Reads ``/proc`` (Linux)."""
    wanted = str(db_path)
    for pid, argv in _proc_cmdlines():
        if pid == os.getpid() or not any("secantus" in a for a in argv[:4]):
            continue
        paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--storage-path"]
        paths += [a.split("=", 1)[1] for a in argv if a.startswith("--storage-path=")]
        if wanted not in paths:
            continue
        parent = _parent_pid(pid)
        if parent in (None, 0, 1):
            return f"secantusd-py pid {pid} (an orphan: the process that started it is gone)"
        return f"secantusd-py pid {pid} (started by pid {parent})"
    return None


def check_db_path(db_path: str | os.PathLike[str], *, create: bool = True) -> None:
    """Raise :class:`ServerStartError` unless ``db_path`` is ``:memory:`` or a directory that
    exists (or can be created) and is writable; creates it, unless ``create`` is false (option
    parsing: a run refused later must leave no folder behind)."""
    if str(db_path) == ":memory:":
        return
    path = Path(db_path)
    # without ``create``, what this check makes is removed again (permission bits alone say
    # nothing for root, or for /proc: only trying tells)
    missing = [] if create else [p for p in (path, *path.absolute().parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".hyperfleet-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ServerStartError(
            f"cannot use {path} as the database directory ({e.strerror or e}); "
            "pass a writable --db-path"
        ) from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


# argv: storage path, user name; the password on stdin. Opens the storage directly (no socket:
# nobody can connect while the user is made) and runs SecantusDB's own createUser command on it,
# so the record is exactly the one the daemon would write. Uses SecantusDB's internal API (the
# version is pinned exactly); runs in its own process, like the daemon (GPL-2.0 code stays apart).
_CREATE_USER = """\
import json, sys
from secantus.commands import CommandContext, dispatch
from secantus.cursors import CursorRegistry
from secantus.storage import Storage
path, user, password = sys.argv[1], sys.argv[2], sys.stdin.read()
storage = Storage(path, enable_oplog=False, sync_on_commit=True)
try:
    ctx = CommandContext(
        connection_id=0, storage=storage, cursors=CursorRegistry(), db_name="admin"
    )
    roles = [{"role": "root", "db": "admin"}]
    reply = dispatch({"createUser": user, "pwd": password, "roles": roles}, ctx)
finally:
    storage.close()
print(json.dumps({"ok": reply.get("ok"), "errmsg": reply.get("errmsg", "")}))
"""


def create_first_user(
    db_path: str | os.PathLike[str], user: str, password: str, *, timeout_s: float = 60.0
) -> None:
    """Create ``user`` (role root, ``authSource=admin``) in the database directory ``db_path``
    without starting a server: SecantusDB only creates users over a connection to a server
    without ``--auth``, and a server on loopback, even for a second, is one that every user of a
    shared machine may connect to. :class:`ServerStartError` (one line) when it cannot."""
    path = Path(db_path).resolve()
    check_db_path(path)
    holder = holder_of(path)
    if holder is not None:
        raise ServerStartError(
            f"database directory {path} is in use by {holder}; stop it before creating users"
        )
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CREATE_USER, str(path), user],
            input=password,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise ServerStartError(
            f"creating user {user!r} in {path} took over {timeout_s:.0f} s"
        ) from None
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except ValueError:
        reply = {}
    if done.returncode != 0 or reply.get("ok") != 1.0:
        why = reply.get("errmsg") or _last_words(done.stderr) or f"exit code {done.returncode}"
        raise ServerStartError(f"cannot create user {user!r} in {path}: {why}")
    logger.info("created user %r in %s (no server was started)", user, path)


def _last_words(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _daemon_command() -> list[str]:
    script = Path(sys.executable).parent / "secantusd-py"
    if script.exists():
        return [str(script)]
    found = shutil.which("secantusd-py")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from secantus.cli import main; sys.exit(main())"]


class EmbeddedServer:
    """Start and stop one SecantusDB daemon (``--standalone``) on ``host:port``.

    ``db_path`` is the storage directory (``":memory:"`` for a throwaway server); ``port=0``
    lets the daemon choose a free port, read back from its log. ``sync`` makes every commit
    durable before it is acknowledged, so a killed server loses nothing.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] = DEFAULT_DB_PATH,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: bool = False,
        sync: bool = True,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.db_path = db_path if str(db_path) == ":memory:" else Path(db_path).resolve()
        self.host = host
        self.port = port
        self.auth = auth
        self.sync = sync
        self._log_path = Path(log_path) if log_path else None
        self._workdir: Path | None = None
        self._log_start = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """The daemon's log: ``log_path`` if given, else a file in the temporary working
        folder (removed on stop)."""
        if self._log_path is not None:
            return self._log_path
        return self._ensure_workdir() / "secantusd.log"

    def _ensure_workdir(self) -> Path:
        if self._workdir is None:
            sweep_stale_workdirs()
            self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self._workdir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        return self._workdir

    def _remove_workdir(self) -> None:
        workdir, self._workdir = self._workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    @property
    def uri(self) -> str:
        """The address clients use: an IPv6 literal in brackets, and the IPv6 wildcard ``::``
        (every address) as its loopback ``::1``: ``mongodb://:::27017/`` is no URI, and the
        readiness ping through it waited a minute for nothing."""
        host = "::1" if self.host == "::" else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"mongodb://{host}:{self.port}/"

    def start(self, timeout_s: float = 60.0) -> EmbeddedServer:
        """Start the daemon and wait until it answers; :class:`ServerStartError` (one line, the
        daemon stopped and the working folder removed) when it cannot."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> EmbeddedServer:
        if isinstance(self.db_path, Path):
            check_db_path(self.db_path)
            holder = holder_of(self.db_path)
            if holder is not None:
                raise ServerStartError(self._locked(holder))
        workdir = self._ensure_workdir()
        config = workdir / "secantusd.toml"
        config.write_text("# empty: hyperfleet passes every option on the command line\n")
        cmd = [
            *_daemon_command(),
            "--config",
            str(config),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.db_path),
            "--standalone",
            "--log-level",
            "INFO",
        ]
        if self.auth:
            cmd.append("--auth")
        if self.sync:
            # durable commits: without it a killed server forgets its last acknowledged writes
            # (a finished trial, a queued one); costs about 3 ms per write
            cmd.append("--sync-on-commit")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon owns it while it runs
        self._log_start = log.tell()  # a restart appends: older lines do not count
        try:
            self.process = subprocess.Popen(
                # no orphaned daemon when we are SIGKILLed. SIGKILL, not SIGTERM: nobody is
                # left to escalate, and SecantusDB 0.7.0b3 was seen hanging for good in its
                # SIGTERM shutdown (CI, stop 10), holding the database; commits are durable
                # with --sync-on-commit, and a killed daemon's recovery is tested
                die_with_parent(cmd, signal.SIGKILL),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the daemon
            )
        finally:
            log.close()
        self._wait_ready(timeout_s)
        logger.info("embedded server ready at %s (data: %s)", self.uri, self.db_path)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            text = self._log_text()
            if code is not None:
                raise ServerStartError(self._explain_exit(code, text))
            # only our daemon's own "listening" line counts: another server already on this
            # port would answer ping while ours fails to start
            match = _LISTENING_RE.search(text)
            if match:
                self.port = int(match["port"])
                if self._ping():
                    return
            time.sleep(0.05)
        raise ServerStartError(
            f"the embedded server did not answer ping within {timeout_s:.0f} s "
            f"(last log line: {self._last_line(self._log_text())})"
        )

    def _log_text(self) -> str:
        """What the daemon logged since this start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def last_log_line(self) -> str:
        """The daemon's last log line since it started (for error messages)."""
        return self._last_line(self._log_text())

    @staticmethod
    def _last_line(log_text: str) -> str:
        lines = [line.strip() for line in log_text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "none"

    def _locked(self, holder: str) -> str:
        return (
            f"database directory {self.db_path} is in use by {holder}; stop that process "
            "(e.g. `kill PID`) or pass another --db-path"
        )

    def _explain_exit(self, code: int, log_text: str) -> str:
        if "already being managed by another process" in log_text:
            holder = holder_of(self.db_path) if isinstance(self.db_path, Path) else None
            return self._locked(holder or "another running server")
        if "Address already in use" in log_text or "address already in use" in log_text:
            return f"port {self.port} on {self.host} is already in use; pass another --port"
        where = f"; full log: {self._log_path}" if self._log_path else ""
        return (
            f"the embedded server exited with code {code} during start "
            f"({self._last_line(log_text)}){where}"
        )

    def _ping(self) -> bool:
        from coordinator.store.connection import ping  # pymongo: only once a server starts

        return ping(self.uri, timeout_s=0.3)  # an answer asking for credentials counts: it is up

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM and wait (a clean shutdown takes a few seconds); SIGKILL after ``timeout_s``.
        Removes the temporary working folder."""
        proc, self.process = self.process, None
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("embedded server did not stop within %.0f s; killing it", timeout_s)
                proc.kill()
                proc.wait()
        finally:
            self._remove_workdir()

    def kill(self) -> None:
        """SIGKILL the daemon (tests of crash recovery); its working folder goes too (a later
        :meth:`start` makes a new one)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._remove_workdir()

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
