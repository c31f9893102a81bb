"""MinIO, the S3 server users deploy, built once per machine from source with `go install`."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from pixstream.settings import Settings
from pixstream.stack.base import LocalService, StackError, run

# MinIO's community edition ships as source only; this is the newest module version the Go
# proxy serves (the repository's RELEASE.* tags are not semver, so `go install` needs this).
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
BUILD_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixstream"


class MinioService(LocalService):
    name = "minio"

    def __init__(self, home: Path, settings: Settings) -> None:
        super().__init__(home)
        url = urlsplit(settings.s3_endpoint_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 9000
        self.access_key = settings.s3_access_key_id
        self.secret_key = settings.s3_secret_access_key.get_secret_value()
        self.binary = BUILD_CACHE / f"minio-{MINIO_VERSION}" / "minio"
        self.data = self.dir / "data"

    def install(self) -> None:
        if self.binary.exists():
            return
        if shutil.which("go") is None:
            raise StackError("minio: the Go toolchain (`go`) is needed to build MinIO")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(self.binary.parent), "GOFLAGS": "-trimpath"}
        run(
            ["go", "install", f"github.com/minio/minio@{MINIO_VERSION}"],
            env=env,
            log_file=self.log_file,
        )

    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)

    def spawn(self) -> int:
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        return self.spawn_detached(
            [
                str(self.binary),
                "server",
                str(self.data),
                "--quiet",
                "--address",
                self.address,
                "--console-address",
                f"{self.host}:{self.port + 1}",
            ],
            env=env,
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.address}/minio/health/live", timeout=1
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False
