"""The Dockerfile and the Kubernetes manifests: linted, validated, consistent, exercised."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import ROOT, free_port

K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (the dev extra)")
    return path


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1
    return docs[0]  # type: ignore[no-any-return]


def test_hadolint_passes_without_warnings() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_for_a_pinned_kubernetes(manifest: Path) -> None:
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_kustomization_lists_the_long_lived_resources() -> None:
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in MANIFESTS if p.name != "warm-job.yaml"
    )


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV block, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    env_line = next(line for line in runtime.splitlines() if line.startswith("ENV "))
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", runtime, re.M))
    assert "SOURCE" in args
    pairs = dict(item.split("=", 1) for item in env_line[4:].split())
    for name, default in args.items():
        pairs = {k: v.replace("${" + name + "}", default) for k, v in pairs.items()}
    return pairs


def python_stage_steps() -> list[tuple[str, str]]:
    """The COPY and RUN instructions of the stage that installs the package."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = next(s for s in text.split("\nFROM ")[1:] if " AS python\n" in s)
    steps = []
    for line in stage.splitlines():
        kind, _, args = line.partition(" ")
        if kind in ("COPY", "RUN"):
            steps.append((kind, args.strip()))
    return steps


def test_manifests_and_settings_agree() -> None:
    config = load("configmap.yaml")["data"]
    deployment = load("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    settings = Settings.from_env(config, esbuild=sys.executable)  # every key is a real setting
    assert set(config) <= {f"BUNDLER_{f.upper()}" for f in Settings.__dataclass_fields__}

    # Probe paths exist in the app, on the port the server listens on.
    routes = {
        r.resource.canonical for r in create_app(settings).router.routes() if r.resource is not None
    }
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == settings.port == int(dockerfile_env()["BUNDLER_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # The build pool is the CPU limit, one thread per build.
    cpu_limit = int(container["resources"]["limits"]["cpu"])
    assert settings.pool_size * settings.threads_per_build == cpu_limit

    # The grace period covers preStop + drain + the longest request/build.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    longest = max(settings.build_timeout_s, settings.shutdown_timeout_s)
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_s + longest

    # The data dir is the mounted volume (an emptyDir), and the image agrees.
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == settings.data_dir == dockerfile_env()["BUNDLER_DATA_DIR"]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume

    # Locked down.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    service = load("service.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.slow
@pytest.mark.timeout(600)  # a fresh venv's pip install may download everything
def test_the_image_recipe_outside_docker(tmp_path: Path) -> None:
    """The Dockerfile's steps, minus Docker: its python stage's COPY and RUN lines as they
    are written (the locked install), the esbuild binary `npm ci` fetched, the image's ENV,
    and `bundler serve` as its CMD."""
    venv = tmp_path / "venv"
    src = tmp_path / "src"  # the stage's WORKDIR: only what it copies
    src.mkdir()
    for kind, args in python_stage_steps():
        if kind == "COPY":
            *sources, dest = args.split()
            for name in sources:
                target = src / dest / Path(name).name if dest.endswith("/") else src / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / name).is_dir():
                    shutil.copytree(
                        ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / name, target)
        else:
            command = args.replace("/opt/venv", str(venv))
            path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # "python": this one
            subprocess.run(
                ["sh", "-c", command],
                cwd=src,
                check=True,
                timeout=600,
                env={**os.environ, "PATH": path},
            )
    [binary] = (ROOT / "node_modules" / "@esbuild").glob("linux-*/bin/esbuild")
    srv = tmp_path / "srv" / "bundler"
    shutil.copytree(ROOT / "examples" / "components", srv / "examples" / "components")
    shutil.copytree(ROOT / "static_fallback", srv / "static_fallback")
    local = tmp_path / "usr-local-bin"
    local.mkdir()
    shutil.copy(binary, local / "esbuild")

    def relocate(value: str) -> str:
        return (
            value.replace("/srv/bundler", str(srv))
            .replace("/var/lib/bundler", str(tmp_path / "data"))
            .replace("/usr/local/bin", str(local))
            .replace("/opt/venv", str(venv))
        )

    env = {k: relocate(v) for k, v in dockerfile_env().items()}
    env["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    port = free_port()
    env.update(BUNDLER_HOST="127.0.0.1", BUNDLER_PORT=str(port), BUNDLER_DRAIN_S="0")
    (tmp_path / "data").mkdir()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "bundler"), "serve"], env=env, stderr=out, cwd=tmp_path
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        with urllib.request.urlopen(url + "/bundle.js?modules=components/hero&v=1.1.0") as resp:
            assert resp.status == 200
            assert resp.headers["X-Bundle-Mode"] == "tailored"
            assert b"__bundlerModules" in resp.read()
    finally:
        server.terminate()
        assert server.wait(timeout=20) == 0
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines)  # JSON logs, as configured
