"""A stand-in for `systemctl` where no systemd runs (CI containers), so install_service.sh
and uninstall_service.sh can be run for real and their unit actually started.

It follows the unit file the installer wrote: ExecStart runs as User=/Group= in
WorkingDirectory= with Environment=, EnvironmentFile=, UMask= and the StateDirectory= and RuntimeDirectory= it
creates, and `start` waits for READY=1 on NOTIFY_SOCKET as Type=notify does; `reload` runs
ExecReload= with $MAINPID; `stop` sends SIGTERM to the main process (KillMode=mixed) and
waits TimeoutStopSec=. enable/disable manage the WantedBy= symlink. Sandboxing settings are
not emulated (systemd-analyze checks those). Every call is appended to $FAKE_SYSTEMD_ROOT/calls.log;
units live in $FAKE_SYSTEMD_ROOT/etc/systemd/system, state in var/lib, pids in run.
"""

from __future__ import annotations

import configparser
import os
import pwd
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(os.environ["FAKE_SYSTEMD_ROOT"])
UNIT_DIR = ROOT / "etc/systemd/system"
RUN_DIR = ROOT / "run"


def load(unit: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNIT_DIR / unit)
    if not parser.has_section("Service"):
        sys.exit(f"Unit {unit} not found.")
    return parser


def read_env_file(path: str) -> dict[str, str]:
    optional = path.startswith("-")
    path = path.lstrip("-")
    if not os.path.exists(path):
        if optional:
            return {}
        sys.exit(f"Failed to load environment file {path}")
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key.strip()] = value
    return env


def main_pid(unit: str) -> int | None:
    """The recorded main pid if that process is alive (and not a zombie)."""
    try:
        pid = int((RUN_DIR / f"{unit}.pid").read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return None if state in ("Z", "X") else pid


def start(unit: str) -> None:
    if main_pid(unit):
        return
    service = load(unit)["Service"]
    user = pwd.getpwnam(service["User"])
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "SHELL": user.pw_shell}
    for assignment in shlex.split(service.get("Environment", "")):
        key, value = assignment.split("=", 1)
        env[key] = value
    if "EnvironmentFile" in service:
        env.update(read_env_file(service["EnvironmentFile"]))
    for setting, parent, variable in (("StateDirectory", "var/lib", "STATE_DIRECTORY"),
                                      ("RuntimeDirectory", "run", "RUNTIME_DIRECTORY")):
        if setting in service:
            directory = ROOT / parent / service[setting]
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, user.pw_uid, user.pw_gid)
            directory.chmod(int(service.get(f"{setting}Mode", "0755"), 8))
            env[variable] = str(directory)

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"fake-systemd-{uuid.uuid4().hex}"
    notify.bind("\0" + address)
    env["NOTIFY_SOCKET"] = "@" + address
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / f"{unit}.log", "ab") as log:
        process = subprocess.Popen(
            shlex.split(service["ExecStart"]), cwd=service.get("WorkingDirectory", "/"), env=env,
            user=user.pw_uid, group=service.get("Group", user.pw_gid), extra_groups=[],
            umask=int(service.get("UMask", "0022"), 8), stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, start_new_session=True,
        )
    (RUN_DIR / f"{unit}.pid").write_text(str(process.pid))
    notify.settimeout(0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"Job for {unit} failed: main process exited with status {process.returncode}.")
        try:
            if b"READY=1" in notify.recv(4096):
                return
        except TimeoutError:
            continue
    sys.exit(f"Job for {unit} failed: no READY=1 within 60 s.")


def stop(unit: str) -> None:
    pid = main_pid(unit)
    if not pid:
        return
    timeout = float(load(unit)["Service"].get("TimeoutStopSec", "90"))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while main_pid(unit) and time.monotonic() < deadline:
        time.sleep(0.1)
    if main_pid(unit):
        os.killpg(pid, signal.SIGKILL)
    (RUN_DIR / f"{unit}.pid").unlink(missing_ok=True)


def reload(unit: str) -> None:
    pid = main_pid(unit)
    if not pid:
        sys.exit(f"{unit} is not active, cannot reload.")
    command = load(unit)["Service"]["ExecReload"].replace("$MAINPID", str(pid))
    subprocess.run(shlex.split(command), check=True)


def wants_link(unit: str) -> Path:
    target = load(unit)["Install"]["WantedBy"]
    return UNIT_DIR / f"{target}.wants" / unit


def main(argv: list[str]) -> int:
    with open(ROOT / "calls.log", "a") as calls:
        calls.write(" ".join(["systemctl", *argv]) + "\n")
    words = [word for word in argv if not word.startswith("-")]
    command, units = words[0], words[1:]
    if command == "daemon-reload":
        return 0
    for unit in units:
        if command == "is-active":
            return 0 if main_pid(unit) else 3
        if command == "is-enabled":
            return 0 if (UNIT_DIR / unit).exists() and wants_link(unit).is_symlink() else 1
        if command == "enable":
            link = wants_link(unit)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(UNIT_DIR / unit)
        elif command == "disable":
            wants_link(unit).unlink(missing_ok=True)
        elif command == "start":
            start(unit)
        elif command == "stop":
            stop(unit)
        elif command == "restart":
            stop(unit)
            start(unit)
        elif command == "reload":
            reload(unit)
        else:
            sys.exit(f"fake systemctl: unsupported command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
