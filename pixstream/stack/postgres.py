"""PostgreSQL from Debian's packages, as a cluster of our own under the stack's home."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pixstream.settings import Settings
from pixstream.stack.base import LocalService, StackError, run

SERVER_USER = "postgres"  # PostgreSQL refuses to run as root; Debian's package creates this user


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresService(LocalService):
    name = "postgres"

    def __init__(self, home: Path, settings: Settings) -> None:
        super().__init__(home)
        url = urlsplit(settings.database_url.get_secret_value())
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 5432
        self.user = unquote(url.username or "pixstream")
        self.password = unquote(url.password or "")
        self.database = url.path.lstrip("/") or "pixstream"
        self.as_root = os.geteuid() == 0
        self.data = self._data_dir()
        self.socket_dir = self.data.parent / "socket"

    @property
    def server_log(self) -> Path:
        """The server's own log, next to its data where the `postgres` user can write."""
        return self.data.parent / "server.log"

    # -- where the cluster lives --------------------------------------------------------
    def _data_dir(self) -> Path:
        preferred = self.dir / "data"
        if not self.as_root or self._server_user_can_reach(self.home):
            return preferred
        # The server runs as `postgres`, which cannot enter a home under e.g. /root: keep the
        # cluster in a world-traversable place named after the home, and say so in the log.
        tag = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"pixstream-postgres-{tag}" / "data"

    @staticmethod
    def _server_user_can_reach(path: Path) -> bool:
        try:
            pw = pwd.getpwnam(SERVER_USER)
        except KeyError:
            return True  # decided again after the package is installed
        p = path
        while not p.exists():
            p = p.parent
        for part in [p, *p.parents]:
            st = part.stat()
            if st.st_uid != pw.pw_uid and not st.st_mode & 0o001:
                return False
        return True

    def _bin(self, tool: str) -> str:
        found = sorted(
            glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
            key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
        )
        if found:
            return found[-1]
        path = shutil.which(tool)
        if path is None:
            raise StackError(f"postgres: `{tool}` not found; install Debian's `postgresql`")
        return path

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if self.as_root else cmd

    def _own(self, *paths: Path) -> None:
        if self.as_root:
            pw = pwd.getpwnam(SERVER_USER)
            for p in paths:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    # -- lifecycle ------------------------------------------------------------------------
    def install(self) -> None:
        try:
            self._bin("initdb")
        except StackError:
            if not self.as_root:
                raise
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-qq"], env=env, log_file=self.log_file)
            run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, log_file=self.log_file)
            self.data = self._data_dir()
            self.socket_dir = self.data.parent / "socket"

    def prepare(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.server_log.touch()
        self._own(self.data.parent, self.socket_dir, self.server_log)
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(mode=0o700, exist_ok=True)
        self._own(self.data)
        run(
            self._as_server_user(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SERVER_USER,
                    "-E",
                    "UTF8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-instructions",
                ]
            ),
            log_file=self.log_file,
        )

    def spawn(self) -> int:
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.socket_dir} "
            "-c max_connections=200"
        )
        run(
            self._as_server_user(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.server_log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ]
            ),
            log_file=self.log_file,
        )
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop_process(self, pid: int) -> None:
        os.kill(pid, signal.SIGINT)  # "fast" shutdown: roll back clients, checkpoint, exit

    def after_start(self) -> None:
        if not self._query(f"SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(self.user)}"):
            self._query(
                f"CREATE ROLE {_quote_ident(self.user)} LOGIN "
                f"PASSWORD {_quote_literal(self.password)}"
            )
        if not self._query(
            f"SELECT 1 FROM pg_database WHERE datname = {_quote_literal(self.database)}"
        ):
            self._query(
                f"CREATE DATABASE {_quote_ident(self.database)} OWNER {_quote_ident(self.user)}"
            )
        # Tests create a database per test from a template: the role needs CREATEDB, and
        # pg_signal_backend for DROP DATABASE ... WITH (FORCE) to end an autovacuum worker
        # that happens to be in the database (PostgreSQL 15 refuses otherwise).
        self._query(f"ALTER ROLE {_quote_ident(self.user)} CREATEDB")
        self._query(f"GRANT pg_signal_backend TO {_quote_ident(self.user)}")

    def _query(self, sql: str) -> str:
        cmd = self._as_server_user(
            [
                self._bin("psql"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SERVER_USER,
                "-d",
                "postgres",
                "-tAc",
                sql,
            ]
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"postgres: {sql.split()[0]} failed: {result.stderr.strip()}")
        return result.stdout.strip()
