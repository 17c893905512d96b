"""Deployment files: the compose file, the systemd units and the Dockerfile say what the README
promises. The image is built only where a Docker engine answers (skipped with a message otherwise)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def env_example() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))


def test_compose_has_postgres_with_a_named_volume_and_docsach_waiting_for_it():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    db, app = compose["services"]["db"], compose["services"]["docsach"]
    assert db["image"].startswith("postgres:15")
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose["volumes"] and not volume.startswith(("/", "."))
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert app["environment"]["DOCSACH_DATABASE_URL"].startswith("postgresql+asyncpg://docsach:")
    assert app["build"] == "." and app["env_file"] == ".env"
    assert app["ports"] == ["127.0.0.1:8080:8080"]
    assert any(v.startswith("files:") for v in app["volumes"]) and "files" in compose["volumes"]
    documented = env_example()
    for name in app["environment"]:
        assert name in documented, f"{name} is not in .env.example"
    assert "POSTGRES_PASSWORD" in documented


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(ROOT / "deploy" / name)
    return parser


def test_systemd_units_have_the_fields_they_need():
    service = unit("docsach.service")
    assert set(service.sections()) == {"Unit", "Service", "Install"}
    s = service["Service"]
    assert s["User"] == "docsach" != "root" and s["EnvironmentFile"] == "/etc/docsach/docsach.env"
    assert s["ExecStart"].split()[0] == "/opt/docsach/.venv/bin/docsach" and " run " in s["ExecStart"] + " "
    assert s["ExecStartPre"].endswith("docsach db upgrade") and s["Restart"] == "on-failure"
    assert s["NoNewPrivileges"] == "yes" and "/var/lib/docsach" in s["ReadWritePaths"]
    assert service["Install"]["WantedBy"] == "multi-user.target"
    backup, timer = unit("docsach-backup.service"), unit("docsach-backup.timer")
    assert backup["Service"]["Type"] == "oneshot" and "docsach backup" in backup["Service"]["ExecStart"]
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_finds_no_syntax_errors(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for name in ("docsach.service", "docsach-backup.service", "docsach-backup.timer"):
        shutil.copy(ROOT / "deploy" / name, tmp_path / name)
    done = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / n) for n in
                           ("docsach.service", "docsach-backup.service", "docsach-backup.timer"))],
                          capture_output=True, text=True, timeout=60)
    # Without systemd as PID 1 (a container), verify still parses each file: only syntax errors
    # ("Unknown key", "Invalid …", "Failed to parse") matter here, not missing binaries or users.
    problems = [line for line in done.stderr.splitlines()
                if re.search(r"Unknown (key|section)|Invalid|Failed to parse|bad-setting|Missing '='", line)]
    assert not problems, done.stderr


def test_dockerfile_is_slim_non_root_compiles_locales_and_checks_health():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    first = [args for op, args in instructions if op == "FROM"]
    assert len(first) == 1 and "slim" in first[0]
    users = [args.strip() for op, args in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert "pybabel compile" in text and "COPY locales locales" in text
    [health] = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert "/healthz" in health
    cmd = [args for op, args in instructions if op == "CMD"][-1]
    assert cmd.startswith('["docsach", "run"')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def docker_engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if done.returncode == 0 and done.stdout.strip() else None


@pytest.mark.slow
def test_the_image_builds_and_its_cli_runs():
    docker = docker_engine()
    if docker is None:
        pytest.skip("no Docker engine answers here (docker info failed): the image build is not tested")
    tag = "docsach:test-build"
    build = subprocess.run([docker, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        who = subprocess.run([docker, "run", "--rm", tag, "id", "-u"], capture_output=True, text=True, timeout=120)
        assert who.stdout.strip() == "10001"
        doctor = subprocess.run([docker, "run", "--rm", tag, "docsach", "doctor"], capture_output=True, text=True,
                                timeout=300)
        assert doctor.returncode == 1 and "DOCSACH_SECRET_KEY" in doctor.stdout
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)
