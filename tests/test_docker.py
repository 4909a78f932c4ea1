"""The production Docker set-up: docker/Dockerfile, docker/entrypoint.sh, docker/compose.yml.

No Docker engine is needed. The files are parsed and checked against the code they name (the ASGI
app, the Celery app, management commands, settings, files in the build context), and the entry
point is run for real from the checkout, including the web role under production settings
probed by the image's own health check.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import importlib.util
import json
import os
import posixpath
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yml"
HEALTHCHECK = DOCKER / "healthcheck.py"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_BIN = Path(sys.executable).parent  # the interpreter running the tests; not resolved

APP_SERVICES = ("migrate", "web", "worker", "beat")
ROLES = {"web", "worker", "beat", "migrate", "manage"}


# --- helpers: Dockerfile -----------------------------------------------------------------------


def dockerfile_stages() -> list[dict[str, Any]]:
    """Stages in order: {"image", "name", "instructions": [(INSTRUCTION, arguments)]}."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    stages: list[dict[str, Any]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append({"image": words[0], "name": name, "instructions": []})
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1]["instructions"].append((instruction, arguments.strip()))
    return stages


def instructions(stage: dict[str, Any], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage["instructions"] if instruction == name]


def copy_parts(arguments: str) -> tuple[dict[str, str], list[str], str]:
    """COPY in shell form: (flags, sources, destination)."""
    words = shlex.split(arguments)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(words) >= 2, f"COPY needs a source and a destination: {arguments}"
    return flags, words[:-1], words[-1]


def image_files(stage: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """Paths the stage's COPYs create: image path -> (source stage or None for context, source)."""
    files: dict[str, tuple[str | None, str]] = {}
    workdir = "/"
    for instruction, arguments in stage["instructions"]:
        if instruction == "WORKDIR":
            workdir = posixpath.join(workdir, arguments)
        elif instruction == "COPY":
            flags, sources, destination = copy_parts(arguments)
            target = posixpath.normpath(posixpath.join(workdir, destination))
            for source in sources:
                path = target
                if destination.endswith("/") or len(sources) > 1:
                    path = posixpath.join(target, posixpath.basename(source.rstrip("/")))
                files[path] = (flags.get("from"), source)
    return files


def env_assignments(arguments: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in shlex.split(arguments) if "=" in word)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the context) out of the build context."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").strip("/")))
    parts = Path(path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        patterns = [pattern]
        if pattern.startswith("**/"):
            patterns.append(pattern[3:])
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns):
            excluded = not negated
    return excluded


def vendor_files() -> set[str]:
    """The files scripts/assets.sh copies into static/vendor."""
    text = (ROOT / "scripts" / "assets.sh").read_text()
    found = set(re.findall(r"^cp \S+ static/vendor/([\w.-]+)$", text, re.MULTILINE))
    assert found, "scripts/assets.sh copies files into static/vendor"
    return found


def prod_required_variables() -> tuple[str, ...]:
    """The REQUIRED tuple of llmwise/settings/prod.py (importing it here would fail: no secrets)."""
    tree = ast.parse((ROOT / "llmwise" / "settings" / "prod.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "REQUIRED" for t in node.targets)
            and isinstance(node.value, ast.Tuple)
        ):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("llmwise/settings/prod.py has no REQUIRED tuple")


def collectstatic_env() -> dict[str, str]:
    """The throwaway variables given inline to collectstatic in the final stage."""
    runs = [r for r in instructions(dockerfile_stages()[-1], "RUN") if "collectstatic" in r]
    assert len(runs) == 1, "the final stage runs collectstatic exactly once"
    inline: dict[str, str] = {}
    for word in shlex.split(runs[0]):
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", word):
            break
        key, _, value = word.partition("=")
        inline[key] = value
    return inline


# --- helpers: entry point and compose ------------------------------------------------------------


def entrypoint_branches() -> dict[str, str]:
    """The bodies of the entry point's ``case "$role"`` branches, keyed by their pattern."""
    branches: dict[str, str] = {}
    current: str | None = None
    for line in ENTRYPOINT.read_text().splitlines():
        label = re.fullmatch(r"\s*([\w*|-]+)\)\s*", line)
        if current is None and label:
            current = label.group(1)
            branches[current] = ""
        elif current is not None:
            if line.strip() == ";;":
                current = None
            else:
                branches[current] += line.strip().removesuffix("\\").strip() + " "
    return branches


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def run_env(**extra: str) -> dict[str, str]:
    """This environment without the deployment variables, with the venv first on PATH."""
    dropped = {
        "DATABASE_URL",
        "REDIS_URL",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "SECURE_SSL_REDIRECT",
        "FIELD_ENCRYPTION_KEYS",
    }
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llmwise_docker_healthcheck", HEALTHCHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_stages_assets_build_runtime() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 3
    assets, build, runtime = stages
    assert assets["image"].startswith("node:")
    assert any("scripts/assets.sh" in run for run in instructions(assets, "RUN"))
    # The virtualenv is copied between stages, so both must have the same interpreter.
    assert build["image"] == runtime["image"] == "python:3.11-slim"
    requires = re.search(r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text())
    assert requires is not None
    assert runtime["image"] == f"python:{requires.group(1)}-slim"


def test_dockerfile_installs_the_project_pinned_without_dev_extras() -> None:
    build = dockerfile_stages()[1]
    runs = instructions(build, "RUN")
    assert any(re.search(r"pip install -c constraints\.txt \.(\s|$)", run) for run in runs)
    assert all("-c constraints.txt" in run for run in runs if "pip install" in run)
    assert "[dev]" not in DOCKERFILE.read_text()
    runtime_copies = [copy_parts(a) for a in instructions(dockerfile_stages()[2], "COPY")]
    assert ({"from": "build"}, ["/opt/venv"], "/opt/venv") in runtime_copies


def test_dockerfile_copies_vendor_files_built_by_assets_script() -> None:
    assets, _, runtime = dockerfile_stages()
    assert instructions(assets, "WORKDIR") == ["/build"]
    files = image_files(runtime)
    assert files["/app/static/vendor"] == ("assets", "/build/static/vendor")
    made = vendor_files()
    used: set[str] = set()
    for template in (ROOT / "templates").rglob("*.html"):
        used |= set(re.findall(r"['\"]vendor/([\w.-]+)['\"]", template.read_text()))
    assert used, "the templates load vendored assets"
    assert used <= made, f"templates use vendor files assets.sh does not make: {used - made}"


def test_dockerfile_context_sources_exist_and_are_not_dockerignored() -> None:
    stage_names = {stage["name"] for stage in dockerfile_stages()}
    checked = 0
    for stage in dockerfile_stages():
        for arguments in instructions(stage, "COPY"):
            flags, sources, _ = copy_parts(arguments)
            if "from" in flags:
                assert flags["from"] in stage_names, f"COPY from unknown stage: {arguments}"
                continue
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), f"COPY source missing from the repo: {source}"
                assert not dockerignored(source), f".dockerignore excludes COPY source {source}"
                checked += 1
    assert checked >= 8


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (".venv", "node_modules/x", "var/llmwise.db", "static/vendor/htmx.min.js", ".git"):
        assert dockerignored(path), path
    assert dockerignored(".env"), "a local .env (secrets) must never reach the image"
    assert dockerignored("apps/accounts/__pycache__/models.cpython-311.pyc")
    for path in ("static/css/app.css", "manage.py", "llmwise/asgi.py", "docker/entrypoint.sh"):
        assert not dockerignored(path), path


def test_dockerfile_runtime_runs_as_non_root_with_prod_settings() -> None:
    runtime = dockerfile_stages()[-1]
    users = instructions(runtime, "USER")
    assert users, "the final stage has a USER line"
    user = users[-1].split(":")[0]
    assert user not in ("", "0", "root")
    assert user == "10001" or re.search(rf"useradd .*--uid 10001 .*\b{user}\b", str(runtime))
    env: dict[str, str] = {}
    for arguments in instructions(runtime, "ENV"):
        env.update(env_assignments(arguments))
    assert env["DJANGO_SETTINGS_MODULE"] == "llmwise.settings.prod"
    assert (ROOT / "llmwise" / "settings" / "prod.py").is_file()
    assert env["PYTHONPATH"] == "/app" == instructions(runtime, "WORKDIR")[-1]
    # Secrets are never baked into the image.
    assert not set(env) & set(prod_required_variables())
    assert instructions(runtime, "EXPOSE") == ["8000"]


def test_dockerfile_collectstatic_gets_every_variable_prod_requires() -> None:
    inline = collectstatic_env()
    assert set(prod_required_variables()) <= set(inline)
    runs = [r for r in instructions(dockerfile_stages()[-1], "RUN") if "collectstatic" in r]
    assert "manage.py collectstatic --noinput" in runs[0]


def test_dockerfile_collectstatic_succeeds_under_prod_settings(tmp_path: Path) -> None:
    """The build's collectstatic step, run as the Dockerfile runs it, into a scratch STATIC_ROOT."""
    made = vendor_files()
    assert all((ROOT / "static" / "vendor" / name).is_file() for name in made), "run assets.sh"
    static_root = tmp_path / "staticfiles"
    result = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=run_env(
            **collectstatic_env(),
            DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
            STATIC_ROOT=str(static_root),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    assert {f"vendor/{name}" for name in made} <= set(manifest)


def test_dockerfile_entrypoint_and_healthcheck_point_at_copied_files() -> None:
    runtime = dockerfile_stages()[-1]
    files = image_files(runtime)
    (entrypoint,) = instructions(runtime, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/app/docker/entrypoint.sh"]
    assert files["/app/docker/entrypoint.sh"] == (None, "docker/entrypoint.sh")
    # The entry point runs from the directory above its own, which must hold manage.py.
    assert files["/app/manage.py"] == (None, "manage.py")
    assert json.loads(instructions(runtime, "CMD")[-1]) == ["web"]

    (healthcheck,) = instructions(runtime, "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert files[command[1]] == (None, "docker/healthcheck.py")
    assert "urllib" in HEALTHCHECK.read_text()
    assert "/healthz" in HEALTHCHECK.read_text()


# --- entry point ---------------------------------------------------------------------------------


def test_entrypoint_is_valid_strict_bash_and_executable() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable (git mode)"
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_entrypoint_roles_run_the_right_commands() -> None:
    branches = entrypoint_branches()
    assert set(branches) == ROLES | {"*"}
    web = branches["web"]
    assert "exec uvicorn llmwise.asgi:application --host 0.0.0.0" in web
    for option in (
        '--port "${PORT:-8000}"',
        "--proxy-headers",
        "--forwarded-allow-ips='*'",
        '--workers "${WEB_CONCURRENCY:-2}"',
        '--timeout-keep-alive "${HTTP_KEEP_ALIVE_SECONDS:-75}"',
        "--lifespan on",
    ):
        assert option in web
    assert "migrate" not in web, "web must not migrate: the one-shot migrate service does"
    assert "exec celery -A llmwise worker --loglevel=info --concurrency" in branches["worker"]
    beat = branches["beat"]
    assert (
        "exec celery -A llmwise beat --loglevel=info --schedule var/run/celerybeat-schedule" in beat
    )
    migrate = branches["migrate"]
    assert migrate.index("manage.py migrate --noinput") < migrate.index("manage.py seed")
    assert 'exec python manage.py "$@"' in branches["manage"]


def test_everything_the_entrypoint_names_exists() -> None:
    text = ENTRYPOINT.read_text()
    (target,) = set(re.findall(r"uvicorn (\S+)", text))
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute))

    (celery_app,) = set(re.findall(r"celery -A (\S+)", text))
    app = find_app(celery_app)
    assert isinstance(app, Celery)
    assert app is importlib.import_module("llmwise.celery").app
    assert app.main == "llmwise"

    commands = set(re.findall(r"python manage\.py (\w+)", text + DOCKERFILE.read_text()))
    assert {"migrate", "seed", "collectstatic"} <= commands
    assert commands <= set(get_commands()), commands - set(get_commands())

    for executable in ("python", "uvicorn", "celery"):
        assert (VENV_BIN / executable).exists(), f"{executable} is not installed in the venv"


def test_entrypoint_manage_runs_check_from_any_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "manage", "check"],
        cwd=tmp_path,
        env=run_env(DJANGO_SETTINGS_MODULE="llmwise.settings.test"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_entrypoint_execs_other_commands_in_the_app_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "pwd"],
        cwd=tmp_path,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT


def test_healthcheck_host_header_comes_from_allowed_hosts() -> None:
    healthcheck = load_healthcheck()
    assert healthcheck.host_header("llmwise.example.com,localhost") == "llmwise.example.com"
    assert healthcheck.host_header(" .example.com") == "example.com"
    assert healthcheck.host_header("*") == "localhost"
    assert healthcheck.host_header("") == "localhost"


@contextmanager
def web_role(tmp_path: Path) -> Iterator[tuple[int, str, dict[str, str], Path]]:
    """`entrypoint.sh web` with the image's settings and the collectstatic throwaway values,
    listening: its port, the Host header the healthcheck sends, its environment and its log."""
    runtime = dockerfile_stages()[-1]
    image_env: dict[str, str] = {}
    for arguments in instructions(runtime, "ENV"):
        image_env.update(env_assignments(arguments))
    port = free_port()
    env = run_env(
        **collectstatic_env(),
        DJANGO_SETTINGS_MODULE=image_env["DJANGO_SETTINGS_MODULE"],
        PORT=str(port),
        WEB_CONCURRENCY="1",
        STATIC_ROOT=str(tmp_path / "staticfiles"),
    )
    assert "SECURE_SSL_REDIRECT" not in env, "probe the production default (redirect on)"
    host = load_healthcheck().host_header(env["ALLOWED_HOSTS"])
    (tmp_path / "staticfiles").mkdir()
    log = tmp_path / "web.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            ["bash", str(ENTRYPOINT), "web"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # uvicorn listens only once the application and its lifespan have started.
        deadline = time.monotonic() + 20
        while not listening(port):
            assert server.poll() is None, f"web exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"web never listened:\n{log.read_text()}"
            time.sleep(0.05)
        yield port, host, env, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.mark.slow
def test_web_role_serves_healthz_under_prod_settings(tmp_path: Path) -> None:
    healthcheck = load_healthcheck()
    with web_role(tmp_path) as (port, host, env, log):
        assert healthcheck.healthy(port, host), log.read_text()
        probe = [sys.executable, str(HEALTHCHECK)]
        result = subprocess.run(probe, env=env, capture_output=True, timeout=10)
        assert result.returncode == 0, log.read_text()
    # With the server gone the same probe reports unhealthy.
    result = subprocess.run(probe, env=env, capture_output=True, timeout=10)
    assert result.returncode == 1


def _http_get(sock: socket.socket, host: str) -> bytes:
    """One ``GET /healthz`` on an open keep-alive connection: the response's status line."""
    sock.sendall(
        f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: https\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length, head
    while len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return head.split(b"\r\n", 1)[0]


@pytest.mark.slow
def test_web_role_keeps_an_idle_connection_open_longer_than_its_clients_do(
    tmp_path: Path,
) -> None:
    """Clients and load balancers reuse an idle keep-alive connection for some seconds (httpx
    5 s, common load balancers 60 s). A server that closes it first resets the request a client
    sends at that instant: with uvicorn's default of 5 s the capacity bench saw 1 to 11 such
    resets in every 100,000 calls, and none with the image's 75 s."""
    with (
        web_role(tmp_path) as (port, host, _env, _log),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        assert _http_get(sock, host) == b"HTTP/1.1 200 OK"
        time.sleep(6)  # longer than uvicorn's default keep-alive
        assert _http_get(sock, host) == b"HTTP/1.1 200 OK"


# --- compose -------------------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    assert set(services()) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    assert compose().get("name") == "llmwise", "without a name the project is called 'docker'"


def test_compose_app_services_build_the_repo_image_and_run_their_role() -> None:
    found = services()
    images = set()
    for name in APP_SERVICES:
        service = found[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(service["image"])
        assert service["command"] == [name]
        assert name in ROLES
    assert len(images) == 1, "one image for every role"
    assert found["web"]["ports"] == ["8000:8000"]


def test_compose_environment_matches_the_settings() -> None:
    found = services()
    env = found["web"]["environment"]
    for name in APP_SERVICES:
        assert found[name]["environment"] == env, f"{name} does not share the common environment"
    assert set(prod_required_variables()) <= set(env)
    assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", env["SECRET_KEY"])
    assert env["SECURE_SSL_REDIRECT"] in ("false", "${SECURE_SSL_REDIRECT:-false}")

    postgres = found["postgres"]["environment"]
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgres"
    assert database.hostname == "postgres"
    assert database.port == 5432
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]
    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)

    # Every variable compose sets is one the settings actually read.
    settings_text = "".join(p.read_text() for p in (ROOT / "llmwise" / "settings").glob("*.py"))
    for key in env:
        assert re.search(rf"env\.\w+\(\s*\"{key}\"", settings_text), f"settings never read {key}"


def test_compose_start_order_and_healthchecks() -> None:
    found = services()
    assert "pg_isready" in " ".join(found["postgres"]["healthcheck"]["test"])
    assert found["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    volumes = compose()["volumes"]
    assert found["postgres"]["volumes"][0].split(":")[0] in volumes

    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in found[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    web = conditions("web")
    assert web["migrate"] == "service_completed_successfully"
    assert web["redis"] == "service_healthy"
    for name in ("worker", "beat"):
        assert conditions(name)["migrate"] == "service_completed_successfully"
        assert conditions(name)["redis"] == "service_healthy"

    for name, service in found.items():
        for dep, spec in service.get("depends_on", {}).items():
            target = found[dep]
            if spec["condition"] == "service_healthy":
                assert "test" in target.get("healthcheck", {}), f"{name} waits on {dep}'s health"
            if spec["condition"] == "service_completed_successfully":
                # A one-shot with a restart policy would run again and again.
                assert target.get("restart") in ("no", "on-failure"), dep

    # Only web serves /healthz; the image's health check would mark the others unhealthy.
    assert "healthcheck" not in found["web"]
    for name in ("migrate", "beat"):
        assert found[name]["healthcheck"] == {"disable": True}
    assert "inspect ping" in " ".join(found["worker"]["healthcheck"]["test"])


def _compose_plugin() -> bool:
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    command = ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"]
    ok = subprocess.run(
        command,
        env=run_env(SECRET_KEY="x", FIELD_ENCRYPTION_KEYS="y"),
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(command, env=run_env(), capture_output=True, timeout=30)
    assert missing.returncode != 0, "compose must refuse to start without SECRET_KEY"
