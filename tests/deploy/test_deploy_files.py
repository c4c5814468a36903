"""deploy/: the alert rules are valid Prometheus rules, and the dashboard and the rules name only
metrics that the app exports (a renamed metric must not leave a silent, empty panel)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import app.metrics  # noqa: F401 - registers the app's metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_OWN = {"up"}  # set by Prometheus for every scrape target
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "le", "inf", "nan"}


def exported() -> set[str]:
    """Every series name the app's registry exposes, including those with no sample yet (a
    labelled counter shows nothing until first counted)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "summary": ("_count", "_sum")}
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, groupings, ranges, strings,
    functions and Grafana's $variables taken out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "members-dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_parser_finds_names_and_only_names():
    assert metric_names('sum by (route) (rate(http_requests_total{job="$job", status=~"5.."}[5m]))') == \
        {"http_requests_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1h] offset 1d))) > 0.5") == \
        {"x_bucket"}


def test_the_dashboard_names_only_exported_metrics():
    known = exported() | PROMETHEUS_OWN
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used, "the dashboard has no queries"
    assert used <= known, f"not exported by the app: {sorted(used - known)}"
    # and it shows what operators need: traffic, latency, points, outbox, cap hits, WeChat
    assert {"http_requests_total", "http_request_duration_seconds_bucket", "points_issued_total",
            "points_spent_total", "outbox_messages", "points_cap_hits_total",
            "wechat_api_calls_total"} <= used


def test_the_alert_rules_name_only_exported_metrics():
    known = exported() | PROMETHEUS_OWN
    used = set().union(*(metric_names(e) for e in alert_exprs()))
    assert used <= known, f"not exported by the app: {sorted(used - known)}"


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make promtool` installs Debian's prometheus package"
    done = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_units_run_the_documented_commands():
    serve = (DEPLOY / "systemd" / "members-serve.service").read_text()
    worker = (DEPLOY / "systemd" / "members-worker.service").read_text()
    assert "-m app serve --no-migrate" in serve and "EnvironmentFile=/etc/members.env" in serve
    assert "-m app worker" in worker and "EnvironmentFile=/etc/members.env" in worker
