"""k8s/monitoring: the Grafana dashboard and the Prometheus alert rules name only metrics
the service exports, the rules are a valid rule file (promtool check rules), and each
alert fires on the synthetic series made to trip it (promtool test rules).

promtool comes from Debian's prometheus package (`make test` installs it with the other
servers); without it the promtool tests are skipped with a loud reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import ROOT, wait_ready

MONITORING = ROOT / "k8s" / "monitoring"
DASHBOARD = MONITORING / "bundler-dashboard.json"
RULES = MONITORING / "bundler-alerts.yaml"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\bbundler_[a-z_]+\b")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="!!! promtool is not installed: the alert rules' checks are SKIPPED. Install "
    "Debian's prometheus package (make test tries apt-get). !!!",
)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exported(text: str) -> set[str]:
    """Every series name /metrics can have: each family's name as its TYPE line gives it,
    with a histogram's _bucket, _sum and _count."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                names.add(f"{name}_total")
    return names


def test_the_dashboard_loads_and_draws_the_status_pages_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"].lower() for panel in dashboard["panels"]]
    for needed in ("answers", "tailored", "first byte", "queue", "esbuild", "lag", "tiers"):
        assert any(needed in title for title in titles), needed
    assert all(panel["targets"] for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(titles)


@pytest.mark.parametrize("source", ["dashboard", "rules"])
async def test_every_metric_queried_is_exported(
    aiohttp_client: Any, make_settings: Callable[..., Settings], source: str
) -> None:
    """A name the service does not export draws an empty panel or an alert that never
    fires: each one queried must be in /metrics (a typo fails here)."""
    client = await aiohttp_client(create_app(make_settings()))
    await wait_ready(client)
    await client.get("/bundle.js?modules=components/card&v=1.1.0")
    names = exported(await (await client.get("/metrics")).text())
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    queried = {name for query in queries for name in METRIC.findall(query)}
    assert len(queried) >= 10
    assert sorted(queried - names) == []
    assert "bundler_misspelt_total" not in names  # the check itself can fail


def test_the_rules_are_a_prometheus_rule_file() -> None:
    rules = yaml.safe_load(RULES.read_text())
    assert set(rules) == {"groups"}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in ("page", "ticket")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    # What docs/operations.md says to page on.
    for needed in ("NotReady", "FallbackShareHigh", "BuildsFailing", "RedisDown",
                   "DiskWritesFailing", "ClientsLimited"):  # fmt: skip
        assert f"Bundler{needed}" in alerts


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_each_alert_fires_on_its_synthetic_series(tmp_path: Any) -> None:
    """The rules' unit tests; and the same tests against a rule file whose not-ready alert
    forgot the draining exception (the naive rule) fail."""
    assert PROMTOOL is not None
    tests = MONITORING / "bundler-alerts.test.yaml"
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60,
        cwd=MONITORING,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    naive = RULES.read_text().replace(
        "(bundler_ready == 0) unless on(instance) (bundler_draining == 1)", "bundler_ready == 0"
    )
    assert naive != RULES.read_text()
    (tmp_path / RULES.name).write_text(naive)
    shutil.copy(tests, tmp_path / tests.name)
    failed = subprocess.run(
        [PROMTOOL, "test", "rules", tests.name], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode != 0 and "BundlerNotReady" in failed.stdout + failed.stderr
