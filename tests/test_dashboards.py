"""Every PromQL query in the provisioned dashboards names metrics the service really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

DASHBOARDS = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "without", "avg", "max", "min", "irate",
                "increase", "count", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset"}
IDENT = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*=)")


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # drop label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop range selectors
    expr = re.sub(r"by\s*\([^)]*\)", "", expr)  # drop grouping labels
    names = {m for m in IDENT.findall(expr) if m not in PROMQL_WORDS and not m.replace(".", "").isdigit()}
    return {n for n in names if not n.startswith("$")}


def exported_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_metric_name_extraction() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, mode) (rate(alignserve_la_strength_bucket{mode="fixed"}[5m])))'
    assert metric_names(expr) == {"alignserve_la_strength_bucket"}


def test_every_dashboard_metric_is_exported(client: TestClient) -> None:
    # exercise every route so that labelled series exist
    client.post("/generate", json={"prompt": "hello", "max_tokens": 4, "profile": {"principle": "Be brief."}})
    client.post("/generate", json={"prompt": "hello", "max_tokens": 4})
    client.post("/generate", json={"prompt": ""})
    client.post("/score", json={"prompt": "q", "responses": ["a", "b"]})
    live = exported_names(client.get("/metrics").text)
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    checked = 0
    for path in dashboards:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                names = metric_names(target["expr"])
                assert names, (path.name, panel["title"], target["expr"])
                missing = names - live
                assert not missing, f"{path.name} / {panel['title']}: {sorted(missing)} not in /metrics"
                checked += 1
    assert checked >= 20


def test_prometheus_console_page_matches_the_dashboard() -> None:
    """The console page is generated from the Grafana dashboard; it must be regenerated with it."""
    import subprocess
    import sys

    script = DASHBOARDS.parents[1] / "prometheus" / "make_console.py"
    check = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    page = (DASHBOARDS.parents[1] / "prometheus" / "consoles" / "alignserve.html").read_text()
    exprs = [t["expr"] for p in json.loads((DASHBOARDS / "alignserve.json").read_text())["panels"]
             for t in p.get("targets", [])]
    for expr in exprs:
        assert json.dumps(expr.replace("$__rate_interval", "{{ $rate }}")) in page, expr
    assert "$__rate_interval" not in page
    # prom_console.js wants the duration in seconds and derives the query step from the graph's
    # width; a string duration or a 0-px cell gives step=NaN/Infinity and the graph never loads.
    graphs = page.count("new PromConsole.Graph(")
    assert graphs == len(json.loads((DASHBOARDS / "alignserve.json").read_text())["panels"])
    assert page.count("duration: {{ parseDuration $duration }},") == graphs
    assert len(re.findall(r"\n  width: [1-9][0-9]*,\n", page)) == graphs


def test_prometheus_serves_the_console_page(tmp_path: Path) -> None:
    """A real Prometheus renders the template: durations become seconds, the rate window is applied."""
    import shutil
    import socket
    import subprocess
    import time

    import httpx
    import pytest

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (apt-get install prometheus)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 15s}\nscrape_configs: []\n")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.console.templates={DASHBOARDS.parents[1] / 'prometheus' / 'consoles'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        # The web server answers 503 until the TSDB is open; wait for /-/ready (CI machines are slow).
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"prometheus did not become ready (exit code {proc.poll()})")
            time.sleep(0.2)
        r = httpx.get(f"{base}/consoles/alignserve.html?rate=20s&duration=5m", timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
    assert r.status_code == 200, r.text[:500]
    assert len(re.findall(r"duration:\s*300\s*,", r.text)) == r.text.count("new PromConsole.Graph(") > 0
    assert "[20s]" in r.text and "{{" not in r.text
