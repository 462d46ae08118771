"""The embedded MongoDB-compatible server (SecantusDB), always run as a separate process.

It is never imported into hyperfleet's processes: a server crash cannot take the coordinator down,
and SecantusDB's GPL-2.0 code stays apart from ours. Ready means ``ping`` answers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from coordinator import defaults
from coordinator.errors import ServerStartError

logger = logging.getLogger(__name__)

DEFAULT_DB_PATH = defaults.DB_PATH
_LISTENING_RE = re.compile(r"listening on (?P<host>[^\s:]+):(?P<port>\d+)")


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
        self._workdir = Path(tempfile.mkdtemp(prefix="hyperfleet-server-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "secantusd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def start(self, timeout_s: float = 60.0) -> EmbeddedServer:
        if isinstance(self.db_path, Path):
            self.db_path.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "secantusd.toml"
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
        try:
            self.process = subprocess.Popen(
                cmd,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the daemon
            )
        finally:
            log.close()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        logger.info("embedded server ready at %s (data: %s)", self.uri, self.db_path)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if code is not None:
                raise ServerStartError(self._explain_exit(code, text))
            if self.port == 0:
                match = _LISTENING_RE.search(text)
                if match:
                    self.port = int(match["port"])
            if self.port and self._ping():
                return
            time.sleep(0.05)
        raise ServerStartError(
            f"the embedded server did not answer ping within {timeout_s:.0f} s; "
            f"see its log {self.log_path}"
        )

    def _explain_exit(self, code: int, log_text: str) -> str:
        if "already being managed by another process" in log_text:
            return (
                f"database directory {self.db_path} is already used by another running server; "
                "stop that server or pass another --db-path"
            )
        if "Address already in use" in log_text or "address already in use" in log_text:
            return f"port {self.port} on {self.host} is already in use; pass another --port"
        last = [line for line in log_text.strip().splitlines() if line.strip()][-1:] or ["?"]
        return (
            f"the embedded server exited with code {code} during start ({last[0].strip()}); "
            f"full log: {self.log_path}"
        )

    def _ping(self) -> bool:
        from coordinator.store.connection import ping  # pymongo: only once a server starts

        return ping(self.uri, timeout_s=0.3)  # an answer asking for credentials counts: it is up

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM and wait (a clean shutdown takes a few seconds); SIGKILL after ``timeout_s``."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("embedded server did not stop within %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the daemon (tests of crash recovery)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

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
