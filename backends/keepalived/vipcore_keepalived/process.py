"""One supervised keepalived: write its config, start, reload, restart, stop; read its FIFO.

Contracts:

* The config is written atomically (temporary file + ``os.replace`` in the
  state directory) and keepalived gets SIGHUP only when the text changed.
* keepalived runs in the foreground with its own pid files
  (``keepalived -n -l -D --vrrp -f CONF -p PID -r VRRP_PID``), so several can
  run on one machine; without them a second keepalived prints "daemon is
  already running" and exits 0. keepalived gets SIGTERM if the agent dies
  (``PR_SET_PDEATHSIG``): a node without a running agent holds no VIP. A
  leftover keepalived of the same config (its pid file names a live process
  whose command line has our config) is stopped before a new one starts.
* If keepalived dies it is restarted: at once after a run longer than
  ``stable_after`` seconds, else with exponential backoff, giving up after
  ``restart_attempts`` quick deaths in a row. The owner hears of every
  death through ``on_exit(code, restarting)``. A later change of config
  tries again.
* :meth:`KeepalivedProcess.stop` sends SIGTERM (a master sends priority 0 and
  drops its VIPs), waits ``stop_timeout`` seconds, then SIGKILL. Processes are
  only ever signalled by PID.
* Transitions are read from the notify FIFO, lines like
  ``INSTANCE "name" MASTER 100``; the FIFO stays open (read-write) across
  keepalived restarts so no line is lost and no EOF is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import attrs
import tenacity

from vipcore.core.errors import PluginError
from vipcore_keepalived import BACKEND_NAME, DISTRIBUTION
from vipcore_keepalived.settings import KeepalivedSettings

log = logging.getLogger(__name__)

MIN_VERSION = (2, 0)
INSTALL_HINT = "install keepalived 2.0 or newer (Debian/Ubuntu: apt-get install keepalived)"
_VERSION = re.compile(r"Keepalived v(\d+)\.(\d+)(?:\.(\d+))?")
_FIFO_LINE = re.compile(r'^(?P<kind>[A-Z_]+) "(?P<name>[^"]*)" (?P<state>[A-Z_]+)(?: (?P<priority>\d+))?$')
#: Wait this long for a leftover keepalived to exit before SIGKILL.
LEFTOVER_TIMEOUT = 5.0
BACKOFF_MULTIPLIER = 0.2
#: How long a just-started keepalived gets to become reloadable, and how often we look.
READY_TIMEOUT = 5.0
READY_POLL = 0.005


class KeepalivedUnavailableError(PluginError):
    """keepalived is missing, too old, or could not be started."""

    def __init__(self, message: str) -> None:
        super().__init__(BACKEND_NAME, message, distribution=DISTRIBUTION)


def keepalived_version(binary: str) -> tuple[int, ...]:
    """The version of ``binary`` (``keepalived --version``); raises KeepalivedUnavailableError."""
    path = shutil.which(binary)
    if path is None:
        raise KeepalivedUnavailableError(f"the keepalived executable {binary!r} was not found: {INSTALL_HINT}")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeepalivedUnavailableError(f"{path} --version failed ({exc}): {INSTALL_HINT}") from None
    match = _VERSION.search(done.stdout + done.stderr)
    if match is None:
        raise KeepalivedUnavailableError(f"{path} --version did not print a keepalived version: {INSTALL_HINT}")
    return tuple(int(part) for part in match.groups() if part is not None)


def check_keepalived(binary: str) -> tuple[int, ...]:
    """The version, or KeepalivedUnavailableError if missing or older than 2.0."""
    version = keepalived_version(binary)
    if version[:2] < MIN_VERSION:
        found = ".".join(map(str, version))
        raise KeepalivedUnavailableError(f"keepalived {found} is too old (vipcore needs VRRPv3 with sub-second "
                                         f"adverts): {INSTALL_HINT}")
    return version


@attrs.frozen
class FifoEvent:
    """One notify FIFO line: ``kind`` is INSTANCE or GROUP, ``state`` MASTER/BACKUP/FAULT/STOP."""

    kind: str
    name: str
    state: str
    priority: int | None = None

    @classmethod
    def parse(cls, line: str) -> "FifoEvent | None":
        match = _FIFO_LINE.match(line.strip())
        if match is None:
            return None
        priority = match["priority"]
        return cls(match["kind"], match["name"], match["state"], int(priority) if priority is not None else None)


@attrs.frozen
class Paths:
    """Where one keepalived keeps its files (all in the backend's state directory)."""

    config: Path
    pid: Path
    vrrp_pid: Path
    fifo: Path
    log: Path

    @classmethod
    def in_dir(cls, directory: Path) -> "Paths":
        return cls(
            config=directory / "keepalived.conf",
            pid=directory / "keepalived.pid",
            vrrp_pid=directory / "keepalived-vrrp.pid",
            fifo=directory / "keepalived.fifo",
            log=directory / "keepalived.log",
        )


@attrs.define
class Counters:
    """What the process manager did, for metrics and tests."""

    starts: int = 0
    restarts: int = 0
    reloads: int = 0
    exits: int = 0


class _Died(Exception):
    """keepalived exited within ``stable_after`` seconds of starting."""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the agent dies, so a killed agent's keepalived
    resigns (priority 0) instead of holding VIPs nobody manages. Survives exec."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class KeepalivedProcess:
    """Runs and supervises one keepalived for one vipcore agent."""

    def __init__(
        self,
        paths: Paths,
        settings: KeepalivedSettings,
        *,
        on_event: Callable[[FifoEvent], None] = lambda event: None,
        on_exit: Callable[[int | None, bool], None] = lambda code, restarting: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.on_event = on_event
        #: Called with (exit code, whether a restart follows) when keepalived dies unasked.
        self.on_exit = on_exit
        self.clock = clock
        self.counters = Counters()
        self.gave_up = False
        self._text: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._fifo_transport: asyncio.ReadTransport | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    # -- state ----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The keepalived parent's PID while it runs."""
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def supervised(self) -> bool:
        """Running, or between a death and its restart."""
        return self._supervisor is not None and not self._supervisor.done()

    def command(self) -> list[str]:
        p = self.paths
        argv = [self.settings.binary, "-n", "-l", "-D", "--vrrp", "-f", str(p.config), "-p", str(p.pid),
                "-r", str(p.vrrp_pid)]
        if self.settings.netns:
            # `ip netns exec` execs keepalived in place: the PID is keepalived's.
            return ["ip", "netns", "exec", self.settings.netns, *argv]
        return argv

    # -- config ---------------------------------------------------------------

    async def apply(self, text: str) -> str:
        """Make keepalived run ``text``: "started", "reloaded" or "unchanged"."""
        async with self._lock:
            if text == self._text and (self.supervised or self.gave_up):
                return "unchanged"
            self.paths.config.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.paths.config, text)
            self._text = text
            self._stopping = False
            if self.running:
                assert self._proc is not None
                await self._wait_ready()
                if self._proc is None or self._proc.returncode is not None:
                    return "reloaded"  # died meanwhile: the restart reads the new file
                self._proc.send_signal(signal.SIGHUP)
                self.counters.reloads += 1
                log.info("keepalived reloaded (SIGHUP to pid %d)", self._proc.pid)
                return "reloaded"
            if self.supervised:
                # Between a death and its restart: the restart reads the new file.
                return "reloaded"
            await self._ensure_fifo()
            await self._spawn()
            self.gave_up = False
            self._supervisor = asyncio.create_task(self._supervise(), name="keepalived-supervisor")
            return "started"

    # -- lifecycle ------------------------------------------------------------

    async def _spawn(self) -> None:
        await self.stop_leftovers()
        for pidfile in (self.paths.pid, self.paths.vrrp_pid):
            pidfile.unlink(missing_ok=True)
        argv = self.command()
        # A fresh log per agent run (keepalived -D is chatty); restarts append to it.
        mode = "ab" if self.counters.starts else "wb"
        with open(self.paths.log, mode) as logfile:
            try:
                # A session of its own: a Ctrl-C meant for the agent must not stop keepalived
                # behind the agent's back; the agent stops it itself.
                self._proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise KeepalivedUnavailableError(f"cannot start {' '.join(argv)}: {exc}: {INSTALL_HINT}") from None
        self._started_at = self.clock()
        self.counters.starts += 1
        log.info("keepalived started pid=%d config=%s", self._proc.pid, self.paths.config)

    async def _wait_ready(self) -> None:
        """Wait until keepalived can take a SIGHUP: until then SIGHUP's default action kills it.

        Ready means its VRRP child runs (the child's pid file names a live process): the
        parent installs its handlers before it forks the child.
        """
        deadline = self.clock() + READY_TIMEOUT
        while self._proc is not None and self._proc.returncode is None:
            pid = _read_pid(self.paths.vrrp_pid)
            if pid is not None and _alive(pid):
                return
            if self.clock() > deadline:
                log.warning("keepalived pid %d did not start its VRRP process within %.0f s; reloading anyway",
                            self._proc.pid, READY_TIMEOUT)
                return
            await asyncio.sleep(READY_POLL)

    async def stop_leftovers(self) -> None:
        """Stop a keepalived of our config left by an earlier agent (by PID from our pid files)."""
        config = str(self.paths.config)
        pids = [pid for pid in (_read_pid(self.paths.pid), _read_pid(self.paths.vrrp_pid))
                if pid is not None and (self._proc is None or pid != self._proc.pid)]
        leftovers = [pid for pid in pids if _alive(pid) and config in _cmdline(pid)]
        if not leftovers:
            return
        log.warning("stopping leftover keepalived pid(s) %s of %s", leftovers, config)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = self.clock() + LEFTOVER_TIMEOUT
        while any(_alive(pid) for pid in leftovers) and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for pid in leftovers:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _retrying(self) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_Died),
            stop=tenacity.stop_after_attempt(self.settings.restart_attempts),
            wait=tenacity.wait_exponential(multiplier=BACKOFF_MULTIPLIER, max=self.settings.restart_backoff_max),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    async def _run_once(self) -> None:
        """Run keepalived until it exits; raise _Died if that was soon after its start."""
        if self._proc is None:
            await self._spawn()
            self.counters.restarts += 1
        assert self._proc is not None
        code = await self._proc.wait()
        self._proc = None
        if self._stopping:
            return
        self.counters.exits += 1
        quick = self.clock() - self._started_at < self.settings.stable_after
        log.error("keepalived exited with code %s after %.1f s; restarting", code, self.clock() - self._started_at)
        self.on_exit(code, True)
        if quick:
            raise _Died(code)

    async def _supervise(self) -> None:
        try:
            while not self._stopping:
                async for attempt in self._retrying():
                    with attempt:
                        await self._run_once()
        except _Died as died:
            self.gave_up = True
            log.error("keepalived keeps dying (last exit code %s, %d quick deaths in a row); giving up until "
                      "the configuration changes; see %s", died.args[0], self.settings.restart_attempts,
                      self.paths.log)
            self.on_exit(died.args[0], False)
        except KeepalivedUnavailableError as exc:
            self.gave_up = True
            log.error("%s", exc)
            self.on_exit(None, False)

    async def stop(self) -> None:
        """SIGTERM, wait ``stop_timeout``, SIGKILL; stop supervising. Idempotent."""
        async with self._lock:
            self._stopping = True
            self._text = None
            if self._supervisor is not None:
                self._supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._supervisor
                self._supervisor = None
            proc, self._proc = self._proc, None
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), self.settings.stop_timeout)
                except TimeoutError:
                    log.warning("keepalived pid %d ignored SIGTERM for %.1f s; killing it", proc.pid,
                                self.settings.stop_timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                log.info("keepalived stopped (pid %d, exit code %s)", proc.pid, proc.returncode)
            # The VRRP child could outlive a killed parent.
            await self.stop_leftovers()

    async def close(self) -> None:
        """Stop keepalived and the FIFO reader."""
        await self.stop()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._fifo_transport is not None:
            self._fifo_transport.close()
            self._fifo_transport = None

    # -- notify FIFO ----------------------------------------------------------

    async def _ensure_fifo(self) -> None:
        if self._reader is not None and not self._reader.done():
            return
        fifo = self.paths.fifo
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(fifo.lstat().st_mode):
                fifo.unlink()
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)
        # Read-write: the FIFO never reports EOF while keepalived restarts.
        handle: IO[bytes] = os.fdopen(os.open(fifo, os.O_RDWR | os.O_NONBLOCK), "rb", buffering=0)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), handle)
        self._fifo_transport = transport
        self._reader = asyncio.create_task(self._read_fifo(reader), name="keepalived-fifo")

    async def _read_fifo(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            event = FifoEvent.parse(line.decode(errors="replace"))
            if event is None:
                log.debug("ignoring notify FIFO line %r", line)
                continue
            try:
                self.on_event(event)
            except Exception:  # an observer's bug must not stop state reporting
                log.exception("handling keepalived event %s failed", event)
