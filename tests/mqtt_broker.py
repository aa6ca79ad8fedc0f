"""A real mosquitto on a free loopback port, for tests (and e2e scripts).

    with MosquittoBroker() as broker:
        connect(broker.host, broker.port)
        broker.stop()     # simulate an outage ...
        broker.start()    # ... and come back on the SAME port

Only 127.0.0.1 is used. The broker runs in a temporary directory with a generated
config (no persistence, anonymous access); `stop()` terminates it, `close()` also
removes the directory. Its message limits (`limits`):

* ``"tuned"`` (default): large queues, unlimited in-flight window, TCP_NODELAY;
* ``"stock"``: mosquitto's defaults, as a distribution's mosquitto runs (20
  messages in flight and 1,000 queued per client, the rest dropped);
* ``"addon"``: what Home Assistant's Mosquitto broker add-on sets (the defaults
  but 8,192 queued).

    with MosquittoBroker(limits="stock", sys_interval=1) as broker: ...
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import tempfile
import time
from typing import Literal, Self

from devtools.net import free_port, port_open

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"

type Limits = Literal["tuned", "stock", "addon"]
LIMITS: tuple[Limits, ...] = ("tuned", "stock", "addon")
# The Mosquitto broker add-on's generated mosquitto.conf sets only this limit.
ADDON_MAX_QUEUED_MESSAGES = 8192


class BrokerError(RuntimeError):
    """mosquitto did not start or stop as expected."""


class MosquittoBroker:
    """A mosquitto process bound to 127.0.0.1 on a fixed (free) port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str = MOSQUITTO,
        extra_config: str = "",
        max_queued_messages: int = 100_000,
        verbose: bool = False,
        limits: Limits = "tuned",
        sys_interval: int | None = None,
    ) -> None:
        """Prepare (not start) a broker; `port` None picks a free one.

        `max_queued_messages` applies to the tuned limits; `sys_interval` (s)
        how often mosquitto publishes its `$SYS` topics (None: its default, 10).
        """
        if limits not in LIMITS:
            raise ValueError(f"limits must be one of {LIMITS}: {limits!r}")
        self.host = HOST
        self.port = port or free_port()
        self.executable = executable
        self.extra_config = extra_config
        self.max_queued_messages = max_queued_messages
        self.verbose = verbose
        self.limits = limits
        self.sys_interval = sys_interval
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:<port>`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>` (the simulator's --broker form)."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def directory(self) -> Path:
        """The temporary directory holding the config and the log."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        return self._dir

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self.directory / "mosquitto.log"

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tuning_lines(self) -> str:
        """The config lines of the limits and socket (none: mosquitto's defaults)."""
        if self.limits == "stock":
            return ""
        if self.limits == "addon":
            return f"max_queued_messages {ADDON_MAX_QUEUED_MESSAGES}\n"
        return (
            f"max_queued_messages {self.max_queued_messages}\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "max_inflight_bytes 0\n"
            "set_tcp_nodelay true\n"
        )

    def config_text(self) -> str:
        """The generated mosquitto.conf."""
        log_types = (
            "all" if self.verbose else "error\nlog_type warning\nlog_type notice"
        )
        sys_interval = (
            "" if self.sys_interval is None else f"sys_interval {self.sys_interval}\n"
        )
        return (
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"{self.tuning_lines()}"
            f"{sys_interval}"
            f"log_dest file {self.log_path}\n"
            f"log_type {log_types}\n"
            "connection_messages true\n"
            # As root mosquitto would switch to the `mosquitto` user, which cannot
            # write into our private temp dir.
            f"{'user root' if os.geteuid() == 0 else ''}\n"
            f"{self.extra_config}\n"
        )

    def start(self, timeout: float = 10.0) -> Self:
        """Start mosquitto and wait until the port accepts connections."""
        if self.running:
            return self
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port, self.host, timeout=0.2):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(
                    f"mosquitto exited with {code} on port {self.port}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"mosquitto not listening on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate mosquitto (the temp dir stays until `close()`)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def restart(self, down_for: float = 0.0, timeout: float = 10.0) -> Self:
        """Stop, optionally stay down for `down_for` seconds, start on the same port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        return self.start(timeout)

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        """Start on entering a `with` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop and clean up on leaving a `with` block."""
        self.close()
