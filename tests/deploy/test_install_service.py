"""install_service.sh and uninstall_service.sh run for real, as root, against a throw-away
prefix (/tmp/imx-deploy-*/{opt,etc,var}) with a real service user and a real virtualenv
from PyPI. Only systemctl is replaced, by tests/deploy/fake_systemctl.py, which starts the
installed unit the way systemd would (as its user, with its environment, Type=notify), so
the installer's own final health check talks to the service it installed."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mongomock
import pytest

from devtools import processes
from improvmx_archive import create_app
from improvmx_archive.sample import payload_from_mime, sample_mime
from tests import doc_commands
from tests.conftest import make_settings
from tests.deploy.helpers import request, require_tools, wait_until

pytestmark = pytest.mark.slow

REPO = processes.REPO_ROOT
SHIPPED = ["install_service.sh", "uninstall_service.sh", "scripts/service_lib.sh", "improvmx-webhook.service",
           "app.py", "gunicorn.conf.py", "requirements.txt", "improvmx_archive", "improvmx-imap.service"]
UNIT = "improvmx-webhook.service"
QUERIES = ("is-active", "is-enabled")


def _preconditions() -> None:
    if os.geteuid() != 0:
        pytest.skip("the installer creates a system user and root-owned files: run as root (CI does)")
    require_tools("useradd", "userdel", "setpriv")
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode:
        pytest.skip("/usr/bin/python3 cannot create virtualenvs (apt-get install python3-venv)")


@dataclass
class Site:
    """One throw-away installation: a source checkout copy and the prefix it installs into."""

    root: Path
    user: str
    port: int
    api_key: str
    webhook_secret: str
    first_run: subprocess.CompletedProcess | None = None

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def install_dir(self) -> Path:
        return self.root / "opt/improvmx-webhook"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc/systemd/system"

    @property
    def bin_dir(self) -> Path:
        return self.root / "usr/local/bin"

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/improvmx-webhook"

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("IMPROVMX_")}
        env.update(PATH=f"{self.root / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   FAKE_SYSTEMD_ROOT=str(self.root))
        common = ["--install-dir", str(self.install_dir), "--user", self.user, "--unit-dir", str(self.unit_dir),
                  "--bin-dir", str(self.bin_dir)]
        if script == "install_service.sh":
            common += ["--port", str(self.port)]
        else:
            common += ["--state-dir", str(self.state_dir)]
        result = subprocess.run([str(self.src / script), *common, *args], env=env, capture_output=True,
                                text=True, timeout=600)
        output = result.stdout + result.stderr
        assert self.api_key not in output and self.webhook_secret not in output, "a script printed a secret"
        return result

    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def main_pid(self) -> int | None:
        """The running service's main process (the gunicorn master), as the fake systemd knows it."""
        pid_file = self.root / "run" / f"{UNIT}.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        return pid if pid and _running(pid) else None

    def write_env(self, path: Path, **values: str) -> Path:
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
        return path


def _make_site(mongo_uri: str) -> Site:
    root = Path(tempfile.mkdtemp(prefix="imx-deploy-", dir="/tmp"))
    root.chmod(0o755)  # the service user must reach the install dir below it
    site = Site(root=root, user=f"imxt{secrets.token_hex(3)}", port=processes.free_port(),
                api_key=secrets.token_hex(20), webhook_secret=secrets.token_hex(12))
    site.src.mkdir()
    for name in SHIPPED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, site.src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (site.src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, site.src / name)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "systemctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).parent / "fake_systemctl.py"}" "$@"\n')
    shim.chmod(0o755)
    site.write_env(site.src / ".env", MONGO_URI=mongo_uri, MONGO_DB=f"deploy_{secrets.token_hex(4)}",
                   API_KEY=site.api_key, WEBHOOK_SECRET=site.webhook_secret, MONGO_TIMEOUT_MS="3000")
    return site


def _remove_site(site: Site) -> None:
    if site.main_pid():
        subprocess.run([str(site.root / "bin/systemctl"), "stop", UNIT],
                       env={**os.environ, "FAKE_SYSTEMD_ROOT": str(site.root)}, check=False)
    subprocess.run(["userdel", site.user], capture_output=True, check=False)
    shutil.rmtree(site.root, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path's type, mode, owner, mtime and content hash: any change shows up."""
    state = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                state[str(path)] = ("link", os.readlink(path))
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None
            state[str(path)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid,
                                info.st_gid, info.st_mtime_ns, digest)
    return state


def _changes(calls: list[str]) -> list[str]:
    """The systemctl calls that change something (queries left out)."""
    return [call for call in calls if call.split()[1] not in QUERIES]


def _workers(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return {int(pid) for pid in children.read_text().split()} if children.exists() else set()


@pytest.fixture(scope="module")
def site(secantus_server):
    """A first installation, shared by the tests below in file order (uninstall comes last)."""
    _preconditions()
    site = _make_site(processes.mongo_uri(secantus_server.port))
    site.first_run = site.run("install_service.sh")
    yield site
    _remove_site(site)


@pytest.fixture
def fresh_site(secantus_server):
    _preconditions()
    site = _make_site(processes.mongo_uri(secantus_server.port))
    yield site
    _remove_site(site)


def test_dry_run_prints_the_plan_and_changes_nothing(fresh_site):
    result = fresh_site.run("install_service.sh", "--dry-run")
    assert result.returncode == 0, result.stderr
    for planned in ("[dry-run] useradd --system", "[dry-run] install -D -m 0644 -o root -g root",
                    "-m venv", "[dry-run] systemctl enable", "[dry-run] systemctl start",
                    f"GET http://127.0.0.1:{fresh_site.port}/healthz"):
        assert planned in result.stdout
    assert not fresh_site.install_dir.exists() and not fresh_site.unit_dir.exists()
    assert not _user_exists(fresh_site.user)
    assert _changes(fresh_site.calls()) == []


def test_refuses_a_configuration_without_api_key_before_changing_anything(fresh_site):
    fresh_site.write_env(fresh_site.src / ".env", MONGO_URI="mongodb://127.0.0.1:1/")
    result = fresh_site.run("install_service.sh")
    assert result.returncode != 0
    assert "sets no API_KEY" in result.stderr
    assert not fresh_site.install_dir.exists() and not _user_exists(fresh_site.user)
    assert fresh_site.calls() == []


def test_install_creates_user_venv_unit_and_a_running_service(site):
    assert site.first_run.returncode == 0, site.first_run.stdout + site.first_run.stderr
    assert f"answers on 127.0.0.1:{site.port}" in site.first_run.stdout

    account = pwd.getpwnam(site.user)
    assert account.pw_uid < 1000 and account.pw_shell == "/usr/sbin/nologin"
    group = account.pw_gid

    for name in ("app.py", "gunicorn.conf.py", "requirements.txt", "improvmx_archive/__init__.py"):
        info = (site.install_dir / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644), name
    assert (site.install_dir / "improvmx_archive/__pycache__").is_dir()  # compiled: the service cannot write here
    assert os.access(site.install_dir / ".venv/bin/gunicorn", os.X_OK)
    env_file = (site.install_dir / ".env").stat()
    assert (env_file.st_uid, env_file.st_gid, stat.S_IMODE(env_file.st_mode)) == (0, group, 0o640)

    unit = (site.unit_dir / UNIT).read_text()
    install_dir = str(site.install_dir)
    for line in (f"User={site.user}", f"Group={site.user}", f"WorkingDirectory={install_dir}",
                 f"EnvironmentFile={install_dir}/.env", f"Environment=GUNICORN_BIND=127.0.0.1:{site.port}",
                 f"ExecStart={install_dir}/.venv/bin/gunicorn --config {install_dir}/gunicorn.conf.py app:app"):
        assert line in unit.splitlines()
    assert "/opt/improvmx-webhook" not in unit.replace(install_dir, "")
    assert (site.unit_dir / "multi-user.target.wants" / UNIT).is_symlink()
    assert _changes(site.calls()) == ["systemctl daemon-reload", f"systemctl enable --quiet {UNIT}",
                                      f"systemctl start {UNIT}"]

    pid = site.main_pid()
    uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M).group(1).split()
    assert set(uids) == {str(account.pw_uid)}
    assert request(site.port, "GET", "/readyz").json() == {"status": "ready"}
    stored = request(site.port, "POST", f"/webhook/{site.webhook_secret}",
                     headers={"Content-Type": "application/json"},
                     body=json.dumps(payload_from_mime(sample_mime())).encode())
    assert stored.status == 200 and stored.json()["success"] is True


def test_installed_unit_passes_systemd_analyze_verify(site):
    require_tools("systemd-analyze")
    result = subprocess.run(["systemd-analyze", "verify", str(site.unit_dir / UNIT)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_second_run_changes_nothing(site):
    before = _snapshot(site.install_dir, site.unit_dir)
    passwd, pid, calls = pwd.getpwnam(site.user), site.main_pid(), len(site.calls())
    result = site.run("install_service.sh")
    assert result.returncode == 0, result.stderr
    assert "running, nothing to apply" in result.stdout
    assert _snapshot(site.install_dir, site.unit_dir) == before
    assert pwd.getpwnam(site.user) == passwd and site.main_pid() == pid
    assert _changes(site.calls()[calls:]) == []


def test_new_code_is_applied_by_a_graceful_reload(site):
    pid = site.main_pid()
    old_workers = _workers(pid)
    with open(site.src / "app.py", "a") as app_py:
        app_py.write("# upgraded\n")
    calls = len(site.calls())
    result = site.run("install_service.sh")
    assert result.returncode == 0, result.stderr
    assert _changes(site.calls()[calls:]) == [f"systemctl reload {UNIT}"]
    assert (site.install_dir / "app.py").read_text().endswith("# upgraded\n")
    assert site.main_pid() == pid  # same master: no connection was dropped
    assert wait_until(lambda: _workers(pid) and not _workers(pid) & old_workers, timeout=30)
    assert request(site.port, "GET", "/healthz").status == 200


def test_a_configuration_that_fails_flask_check_is_not_installed(site):
    installed_env = (site.install_dir / ".env").read_bytes()
    pid, calls = site.main_pid(), len(site.calls())
    bad = site.write_env(site.root / "bad.env", MONGO_URI=f"mongodb://127.0.0.1:{processes.free_port()}/",
                         API_KEY=site.api_key, MONGO_TIMEOUT_MS="300")
    result = site.run("install_service.sh", "--env-file", str(bad))
    assert result.returncode != 0
    assert "MongoDB is not reachable" in result.stderr and "the service was not touched" in result.stderr
    assert (site.install_dir / ".env").read_bytes() == installed_env
    assert site.main_pid() == pid
    assert _changes(site.calls()[calls:]) == []


def test_the_operator_command_runs_flask_as_the_service_with_its_settings(site, tmp_path):
    """improvmx-archive, as root from any directory: the installed app, the installed .env
    (its MONGO_DB), as the service user; a plain user is sent through sudo."""
    command = site.bin_dir / "improvmx-archive"
    info = command.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)
    database = re.search(r"^MONGO_DB=(.*)$", (site.install_dir / ".env").read_text(), re.M).group(1)
    checked = subprocess.run([str(command), "check"], cwd="/", capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"database {database!r}" in checked.stdout and "spool at /var/lib/improvmx-webhook/spool" in checked.stdout
    listed = subprocess.run([str(command), "--help"], cwd="/", capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "check" in listed.stdout and "import" in listed.stdout
    assert f'--reuid="{site.user}"' in command.read_text()
    if shutil.which("shellcheck"):
        linted = subprocess.run(["shellcheck", "-s", "sh", str(command)], capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout
    assert site.api_key not in checked.stdout + checked.stderr
    app = create_app(make_settings(tmp_path), mongo_client=mongomock.MongoClient(tz_aware=True))
    for path in {doc_commands.command_path(app, c.args) for c in doc_commands.documented_commands()}:
        helped = subprocess.run([str(command), *path, "--help"], cwd="/tmp", capture_output=True, text=True,
                                timeout=60)
        assert helped.returncode == 0 and "Usage:" in helped.stdout, (path, helped.stderr)
    again = site.run("install_service.sh")
    assert again.returncode == 0 and "operator command" in again.stdout
    assert command.stat().st_mtime_ns == info.st_mtime_ns  # unchanged: not rewritten


def test_uninstall_keeps_data_and_env_then_purge_removes_everything(site):
    spooled = site.state_dir / "spool" / "0123456789abcdef01234567.json"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_text("{}")
    pid = site.main_pid()

    result = site.run("uninstall_service.sh")
    assert result.returncode == 0, result.stderr
    assert not _running(pid) and site.main_pid() is None
    assert not (site.unit_dir / UNIT).exists()
    assert not (site.unit_dir / "multi-user.target.wants" / UNIT).exists()
    assert sorted(p.name for p in site.install_dir.iterdir()) == [".env"]
    assert not (site.bin_dir / "improvmx-archive").exists()
    assert spooled.exists() and _user_exists(site.user)
    for left in (f"{site.install_dir}/.env", f"{site.state_dir} (the spool: 1 message(s)", f"user {site.user}"):
        assert left in result.stdout

    refused = site.run("uninstall_service.sh", "--purge")
    assert refused.returncode != 0 and "1 spooled message(s)" in refused.stderr
    assert spooled.exists()

    purged = site.run("uninstall_service.sh", "--purge", "--force")
    assert purged.returncode == 0, purged.stderr
    assert not site.install_dir.exists() and not site.state_dir.exists() and not _user_exists(site.user)

    again = site.run("uninstall_service.sh")
    assert again.returncode == 0 and "no unit file" in again.stdout


IMAP_UNIT = "improvmx-imap.service"


def test_imap_enabled_installs_and_starts_the_imap_unit_and_disabling_removes_it(fresh_site):
    """IMAP_ENABLED=true: the IMAP unit is checked (flask imap check), installed, started as
    the service user and answers IMAPS; IMAP_ENABLED=false on the next run removes it."""
    import imaplib
    import ssl

    site = fresh_site
    cert, key = processes.self_signed_certificate(site.root / "tls")
    key.chmod(0o644)  # a throw-away key: readable by the test's service user
    imap_port = processes.free_port()
    env = site.src / ".env"
    settings = env.read_text()
    env.write_text(settings + f"IMAP_ENABLED=true\nIMAP_PORT={imap_port}\nIMAP_HOST=127.0.0.1\n"
                              f"IMAP_TLS_CERT={cert}\nIMAP_TLS_KEY={key}\n")
    result = site.run("install_service.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "certificate:" in result.stdout
    unit = (site.unit_dir / IMAP_UNIT).read_text()
    assert f"User={site.user}" in unit.splitlines()
    assert f"ExecStart={site.install_dir}/.venv/bin/python -m improvmx_archive.imap" in unit.splitlines()
    assert f"systemctl start {IMAP_UNIT}" in site.calls()
    connection = imaplib.IMAP4_SSL("localhost", imap_port, ssl_context=ssl.create_default_context(cafile=str(cert)))
    assert connection.login("operator", site.api_key)[0] == "OK"
    assert any(b"INBOX" in line for line in connection.list()[1])
    connection.logout()

    env.write_text(settings + "IMAP_ENABLED=false\n")
    calls = len(site.calls())
    result = site.run("install_service.sh", "--env-file", str(env))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (site.unit_dir / IMAP_UNIT).exists()
    assert f"systemctl stop {IMAP_UNIT}" in site.calls()[calls:]
    removed = site.run("uninstall_service.sh")
    assert removed.returncode == 0, removed.stderr
