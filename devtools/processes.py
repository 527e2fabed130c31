"""Start and stop the real processes tests, benchmarks and the dev server run against.

SecantusDB is GPL-licensed and a development dependency only: it is started as a separate
process through its console script, never imported.
"""

from __future__ import annotations

import os
import shutil
import signal
from signal import SIGTERM
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _venv_script(name: str) -> str:
    """Find a console script next to the running interpreter, falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (pip install -r requirements-dev.txt)")
    return found


@dataclass
class ManagedProcess:
    """A child process with its log file; stop() is idempotent."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO_ROOT
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            # An exit (a port or a data directory held by another server) is a failure at once,
            # even if something else answers on the port.
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode} at start; "
                                   f"log:\n{self.log_text()}")
            try:
                wait_for_port(self.port, min(0.5, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() < deadline:
                    continue
                self.stop()
                raise RuntimeError(f"{self.name} did not start; log:\n{self.log_text()}") from None
            if self.proc.poll() is None:
                return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = SIGTERM, timeout: float = 15.0) -> None:
        # (the method `signal` above shadows the module inside this class body)
        if not self.proc or self.proc.poll() is not None:
            return
        self.signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def secantus(data_dir: Path, port: int | None = None, log_path: Path | None = None) -> ManagedProcess:
    """A SecantusDB server on 127.0.0.1 keeping its WiredTiger files in data_dir (not started)."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        name="secantusdb",
        argv=[
            _venv_script("secantusd-py"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--storage-path", str(data_dir),
            "--log-level", "WARNING",
            "--sync-on-commit",
        ],
        port=port,
        log_path=log_path or data_dir.parent / f"secantus-{port}.log",
    )


def mongo_uri(port: int) -> str:
    """The connection string for a local SecantusDB (a single node, so connect directly)."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def gunicorn(env: dict[str, str], log_path: Path, port: int | None = None,
             extra_args: list[str] | None = None) -> ManagedProcess:
    """The real gunicorn serving app:app with the shipped gunicorn.conf.py (not started)."""
    port = port or free_port()
    argv = [
        _venv_script("gunicorn"),
        "--config", str(REPO_ROOT / "gunicorn.conf.py"),
        "--bind", f"127.0.0.1:{port}",
        *(extra_args or []),
        "app:app",
    ]
    return ManagedProcess(name="gunicorn", argv=argv, port=port, log_path=log_path, env=env)


def gunicorn_serving(app_spec: str, env: dict[str, str], log_path: Path, port: int | None = None,
                     extra_args: list[str] | None = None) -> ManagedProcess:
    """gunicorn serving any WSGI app (e.g. the benchmark's reference receivers) with the same
    settings as the archive: the shipped gunicorn.conf.py when it exists, then extra_args.
    (not started)"""
    port = port or free_port()
    config = REPO_ROOT / "gunicorn.conf.py"
    argv = [
        _venv_script("gunicorn"),
        *(["--config", str(config)] if config.exists() else []),
        "--bind", f"127.0.0.1:{port}",
        *(extra_args or []),
        app_spec,
    ]
    return ManagedProcess(name=f"gunicorn {app_spec}", argv=argv, port=port, log_path=log_path, env=env)


def caddy(work_dir: Path, upstreams: list[str], port: int | None = None,
          env: dict[str, str] | None = None) -> ManagedProcess:
    """The real Caddy (Debian package) running the shipped Caddyfile as plain HTTP on loopback.

    Only global options are added, through a wrapper that imports the shipped file: no admin
    endpoint, loopback-only listeners and state in work_dir, so tests and benchmarks neither
    collide with a system Caddy nor reach for certificates. (not started)
    """
    binary = shutil.which("caddy")
    if not binary:
        raise FileNotFoundError("caddy is not installed (apt-get install caddy)")
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    wrapper = work_dir / "Caddyfile.test"
    wrapper.write_text(
        "{\n"
        "\tadmin off\n"
        "\tdefault_bind 127.0.0.1\n"
        f"\tstorage file_system {work_dir / 'data'}\n"
        "}\n"
        f"import {REPO_ROOT / 'Caddyfile'}\n"
    )
    return ManagedProcess(
        name="caddy",
        argv=[binary, "run", "--config", str(wrapper), "--adapter", "caddyfile"],
        port=port,
        log_path=work_dir / "caddy.log",
        env={
            "HOME": str(work_dir),
            "XDG_CONFIG_HOME": str(work_dir / "config"),
            "XDG_DATA_HOME": str(work_dir / "data"),
            "IMPROVMX_DOMAIN": f"http://127.0.0.1:{port}",
            "IMPROVMX_UPSTREAMS": " ".join(upstreams),
            **(env or {}),
        },
    )


def imap_server(env: dict[str, str], log_path: Path, port: int | None = None) -> ManagedProcess:
    """The IMAP view (`python -m improvmx_archive.imap`) with IMAP_PORT set (not started)."""
    port = port or free_port()
    return ManagedProcess(name="improvmx-imap", argv=[sys.executable, "-m", "improvmx_archive.imap"],
                          port=port, log_path=log_path, env={**env, "IMAP_ENABLED": "true", "IMAP_PORT": str(port),
                                                             "IMAP_HOST": "127.0.0.1"})


def self_signed_certificate(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A throwaway certificate and key (PEM) for TLS servers in tests."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                   .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "imap.crt", directory / "imap.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
