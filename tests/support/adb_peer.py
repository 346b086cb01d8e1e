"""A device-side ADB peer (what adbd does) on a loopback TCP port, in the standard library only.

Debian ships the adb client and server but no adbd, so the ADB transport is tested against this
peer, driven by the *real* adb client: ``adb connect 127.0.0.1:PORT`` then ``adb push``, ``adb
shell``, ``adb pull``. It implements the part of the protocol those commands use
(``system/core/adb/protocol.txt``, ``SYNC.TXT`` and ``shell_protocol.h`` in AOSP):

* the transport messages CNXN (no auth) / OPEN / OKAY / WRTE / CLSE with one outstanding WRTE per
  stream (a write waits for the host's OKAY),
* ``shell,v2`` (stdout, stderr and the exit code as separate packets) and the legacy ``shell:``,
* the sync service: STAT, LIST, SEND (DATA... DONE) and RECV.

Commands run under ``/bin/sh`` on this machine; sync paths must lie under ``root`` (like Android's
writable ``/data/local/tmp``). Faults for tests: ``drop_pushes`` cuts the TCP connection in the
middle of that many file transfers (the partial file is deleted, as adbd does), ``unauthorized``
answers CNXN with an AUTH challenge that is never accepted, and ``env`` sets the shell environment
(e.g. a PATH with a ``df`` that reports a nearly full disk).

The port must lie outside 5555-5585: an adb server probes that range for emulators and would list
the peer twice.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import stat
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

CNXN, OPEN, OKAY, WRTE, CLSE, AUTH = (
    struct.unpack("<I", c)[0] for c in (b"CNXN", b"OPEN", b"OKAY", b"WRTE", b"CLSE", b"AUTH")
)
AUTH_TOKEN, AUTH_SIGNATURE = 1, 2
VERSION = 0x01000001  # from this version on the receiver skips the payload checksum
MAX_PAYLOAD = 256 * 1024
SYNC_CHUNK = 64 * 1024
BANNER = b"device::ro.product.name=edgeprune_peer;ro.product.model=AdbPeer;ro.product.device=peer;features=shell_v2,cmd"
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN = 0, 1, 2, 3, 4
EMULATOR_PORTS = range(5555, 5586)


class PeerDropped(Exception):
    """Raised inside the peer to cut the connection on purpose (fault injection)."""


@dataclass
class Faults:
    drop_pushes: int = 0
    unauthorized: bool = False
    env: dict[str, str] = field(default_factory=dict)


class _Connection:
    """One TCP connection from an adb server: the message loop and its open streams."""

    def __init__(self, peer: AdbPeer, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD
        self.closed = threading.Event()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        header = struct.pack("<6I", command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF)
        with self.send_lock:
            if self.closed.is_set():
                raise OSError("connection closed")
            self.sock.sendall(header + data)

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _checksum, _magic = struct.unpack("<6I", self._read_exact(24))
                data = self._read_exact(length) if length else b""
                self._dispatch(command, arg0, arg1, data)
        except (EOFError, OSError, PeerDropped):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for stream in list(self.streams.values()):
            stream.on_close()

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == CNXN:
            self.max_payload = min(arg1 or MAX_PAYLOAD, MAX_PAYLOAD)
            if self.peer.faults.unauthorized:
                self.send(AUTH, AUTH_TOKEN, 0, os.urandom(20))
            else:
                self.send(CNXN, VERSION, MAX_PAYLOAD, BANNER)
        elif command == OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif command == WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                self.send(OKAY, arg1, arg0)
                stream.on_data(data)
        elif command == OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.can_write.set()
        elif command == CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.on_close()
        elif command == AUTH and arg0 == AUTH_SIGNATURE:
            # As adbd when no stored key verifies the signature: challenge again, until the host
            # gives up and offers its public key (AUTH_RSAPUBLICKEY), which waits for a user
            # who never taps "Allow": the device stays "unauthorized".
            self.send(AUTH, AUTH_TOKEN, 0, os.urandom(20))

    def _open(self, remote_id: int, service: str) -> None:
        local_id, self.next_id = self.next_id, self.next_id + 1
        if service.startswith("shell"):
            options, _, command = service.partition(":")
            stream: _Stream = _ShellStream(self, local_id, remote_id, command, v2="v2" in options.split(","))
        elif service.startswith("sync:"):
            stream = _SyncStream(self, local_id, remote_id)
        else:
            self.send(CLSE, 0, remote_id)  # service not supported: refuse the OPEN
            return
        self.streams[local_id] = stream
        self.send(OKAY, local_id, remote_id)
        stream.start()


class _Stream:
    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.can_write = threading.Event()
        self.can_write.set()
        self.write_lock = threading.Lock()
        self.closed = False

    def start(self) -> None:
        """Begin producing output (shell) or wait for requests (sync)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` to the host as WRTE packets, one outstanding at a time."""
        with self.write_lock:
            for start in range(0, len(data), self.conn.max_payload):
                while not self.can_write.wait(0.5):
                    if self.closed or self.conn.closed.is_set():
                        return
                self.can_write.clear()
                self.conn.send(WRTE, self.local_id, self.remote_id, data[start : start + self.conn.max_payload])

    def finish(self) -> None:
        """Close from our side once all output is sent."""
        if not self.closed:
            self.closed = True
            self.conn.streams.pop(self.local_id, None)
            with contextlib.suppress(OSError):
                self.conn.send(CLSE, self.local_id, self.remote_id)

    def on_data(self, data: bytes) -> None:
        """Bytes the host wrote to this stream."""

    def on_close(self) -> None:
        self.closed = True


class _ShellStream(_Stream):
    """``shell,v2:`` (packetised, exit code) or ``shell:`` (raw, stderr merged) running /bin/sh -c."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, command: str, v2: bool) -> None:
        super().__init__(conn, local_id, remote_id)
        self.command, self.v2 = command, v2
        self.pending = b""
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, **self.conn.peer.faults.env}
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", self.command],
            cwd=self.conn.peer.root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if self.v2 else subprocess.STDOUT,
        )
        pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, SHELL_STDOUT), daemon=True)]
        if self.v2:
            pumps.append(threading.Thread(target=self._pump, args=(self.proc.stderr, SHELL_STDERR), daemon=True))
        for t in pumps:
            t.start()
        threading.Thread(target=self._reap, args=(pumps,), daemon=True).start()

    def _packet(self, kind: int, data: bytes) -> bytes:
        return struct.pack("<BI", kind, len(data)) + data if self.v2 else data

    def _pump(self, pipe, kind: int) -> None:  # noqa: ANN001 - a binary pipe
        for chunk in iter(lambda: os.read(pipe.fileno(), 65536), b""):
            if not self.closed:
                with contextlib.suppress(OSError):
                    self.write(self._packet(kind, chunk))

    def _reap(self, pumps: list[threading.Thread]) -> None:
        code = self.proc.wait()
        for t in pumps:
            t.join()
        if self.v2 and not self.closed:
            with contextlib.suppress(OSError):
                self.write(self._packet(SHELL_EXIT, bytes([code & 0xFF])))
        self.finish()

    def on_data(self, data: bytes) -> None:
        if not self.v2:
            self._stdin(data)
            return
        self.pending += data
        while len(self.pending) >= 5:
            kind, length = struct.unpack("<BI", self.pending[:5])
            if len(self.pending) < 5 + length:
                return
            payload, self.pending = self.pending[5 : 5 + length], self.pending[5 + length :]
            if kind == SHELL_STDIN:
                self._stdin(payload)
            elif kind == SHELL_CLOSE_STDIN and self.proc and self.proc.stdin:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()

    def _stdin(self, data: bytes) -> None:
        if self.proc and self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(data)
                self.proc.stdin.flush()

    def on_close(self) -> None:
        # Like adbd without a pty: the host going away closes the pipes, it does not kill the
        # process. A benchmark that timed out keeps running until someone kills it.
        super().on_close()
        if self.proc and self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


class _SyncStream(_Stream):
    """The file-transfer service behind ``adb push`` / ``adb pull``."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        super().__init__(conn, local_id, remote_id)
        self.buffer = bytearray()
        self.upload: tuple[Path, object] | None = None  # (path, open file) during SEND
        # Requests are served on a worker thread: a reply waits for the host's OKAY, which the
        # connection's reader thread must stay free to receive.
        self.inbox: queue.Queue[bytes | None] = queue.Queue()

    def start(self) -> None:
        threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        try:
            for data in iter(self.inbox.get, None):
                self._consume(data)
        except (PeerDropped, OSError):
            pass
        finally:
            self._abort_upload()

    def _path(self, raw: bytes) -> Path | None:
        """The host path for a device path, or None when it lies outside the writable root."""
        path = Path(os.path.realpath(raw.decode("utf-8", "replace")))
        root = Path(os.path.realpath(self.conn.peer.root))
        return path if path == root or root in path.parents else None

    def _fail(self, message: str) -> None:
        data = message.encode()
        self.write(b"FAIL" + struct.pack("<I", len(data)) + data)

    def on_data(self, data: bytes) -> None:
        self.inbox.put(data)

    def _consume(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 8:
            request, length = bytes(self.buffer[:4]), struct.unpack("<I", self.buffer[4:8])[0]
            if request == b"DONE" and self.upload is not None:
                del self.buffer[:8]
                self._finish_upload(mtime=length)
                continue
            if len(self.buffer) < 8 + length:
                return
            payload = bytes(self.buffer[8 : 8 + length])
            del self.buffer[: 8 + length]
            self._request(request, payload)

    def _request(self, request: bytes, payload: bytes) -> None:
        if request == b"DATA" and self.upload is not None:
            path, handle = self.upload
            if self.conn.peer.take_drop():
                self.conn.close()  # the worker's exit deletes the partial file, as adbd does
                raise PeerDropped
            handle.write(payload)
        elif request == b"STAT":
            path = self._path(payload)
            info = os.stat(path) if path is not None and path.exists() else None
            values = (info.st_mode, info.st_size, int(info.st_mtime)) if info else (0, 0, 0)
            self.write(b"STAT" + struct.pack("<III", *values))
        elif request == b"LIST":
            self._list(payload)
        elif request == b"SEND":
            self._start_upload(payload)
        elif request == b"RECV":
            self._download(payload)
        elif request == b"QUIT":
            self.finish()
        else:
            self._fail(f"unsupported sync request {request!r}")

    def _list(self, payload: bytes) -> None:
        path = self._path(payload)
        if path is not None and path.is_dir():
            for entry in sorted(path.iterdir()):
                info = entry.lstat()
                name = entry.name.encode()
                self.write(
                    b"DENT" + struct.pack("<IIII", info.st_mode, info.st_size, int(info.st_mtime), len(name)) + name
                )
        self.write(b"DONE" + bytes(16))

    def _start_upload(self, payload: bytes) -> None:
        raw_path, _, mode = payload.rpartition(b",")
        path = self._path(raw_path)
        if path is None:
            self._fail(f"couldn't create file: Read-only file system: {raw_path.decode()}")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("wb")
        os.chmod(path, stat.S_IMODE(int(mode or b"420")))
        self.upload = (path, handle)

    def _finish_upload(self, mtime: int) -> None:
        path, handle = self.upload
        self.upload = None
        handle.close()
        os.utime(path, (mtime, mtime))
        self.write(b"OKAY" + bytes(4))

    def _download(self, payload: bytes) -> None:
        path = self._path(payload)
        if path is None or not path.is_file():
            self._fail(f"remote object '{payload.decode()}' does not exist")
            return
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(SYNC_CHUNK), b""):
                self.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.write(b"DONE" + bytes(4))

    def on_close(self) -> None:
        super().on_close()
        self.inbox.put(None)

    def _abort_upload(self) -> None:
        """A transfer that never reached DONE leaves no file behind."""
        if self.upload is not None:
            path, handle = self.upload
            handle.close()
            path.unlink(missing_ok=True)
            self.upload = None


class AdbPeer:
    """The device: ``with AdbPeer(root) as peer: ... adb connect 127.0.0.1:{peer.port}``."""

    def __init__(self, root: Path, port: int = 0, faults: Faults | None = None) -> None:
        if port in EMULATOR_PORTS:
            raise ValueError(f"port {port} is in the adb emulator range 5555-5585; the device would appear twice")
        self.root = Path(root)
        self.faults = faults or Faults()
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.connections: list[_Connection] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.port}"

    def take_drop(self) -> bool:
        """Consume one injected mid-push drop, if any remain."""
        with self._lock:
            if self.faults.drop_pushes > 0:
                self.faults.drop_pushes -= 1
                return True
            return False

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            self.connections.append(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def start(self) -> AdbPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would leave it listening.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.connections:
            conn.close()

    def __enter__(self) -> AdbPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
