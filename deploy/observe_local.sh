#!/usr/bin/env bash
# Observe a live alignserve without Docker: start alignserve (CPU, embedded model), Debian's
# Prometheus scraping it, a bounded load run on loopback, then headless-Chromium screenshots of
# Prometheus graph pages and of the dashboard's console page. Needs: apt-get install prometheus chromium. Writes deploy/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=deploy/screenshots; mkdir -p "$OUT"
WORK=$(mktemp -d); AS_PORT=18000; PROM_PORT=19090; LOAD_S=${LOAD_S:-120}
cleanup() { kill "${AS_PID:-}" "${PROM_PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ALIGNSERVE_HOME=${ALIGNSERVE_HOME:-$HOME/.cache/alignserve} alignserve serve --port $AS_PORT \
  --db-url "sqlite:///$WORK/profiles.db" --log-format text > "$WORK/alignserve.log" 2>&1 & AS_PID=$!
cat > "$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 2s}
scrape_configs:
  - job_name: alignserve
    static_configs: [{targets: ["127.0.0.1:$AS_PORT"]}]
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.console.templates=deploy/prometheus/consoles \
  --web.listen-address=127.0.0.1:$PROM_PORT > "$WORK/prometheus.log" 2>&1 & PROM_PID=$!
for _ in $(seq 1 120); do
  curl -sf localhost:$AS_PORT/readyz >/dev/null && break
  kill -0 "$AS_PID" 2>/dev/null || { echo "alignserve exited:" >&2; tail -20 "$WORK/alignserve.log" >&2; exit 1; }
  sleep 1
done
curl -sf localhost:$AS_PORT/readyz
python3 -m bench.load --url http://127.0.0.1:$AS_PORT --levels 1,4,8 --duration "$LOAD_S" --max-tokens 16 --mix \
  --device "$(uname -m) CPU" > "$WORK/load.txt" 2>&1 || true
sleep 4
shot() {  # name, PromQL
  local q; q=$(python3 -c "import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1]))" "$2")
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --hide-scrollbars \
    --window-size=1400,800 --virtual-time-budget=15000 --screenshot="$OUT/$1.png" \
    "http://127.0.0.1:$PROM_PORT/graph?g0.expr=$q&g0.tab=0&g0.range_input=5m" 2>/dev/null
}
shot requests_by_route 'sum by (route, status) (rate(alignserve_requests_total[20s]))'
shot ttft_p50_p99 'label_replace(histogram_quantile(0.5, sum by (le) (rate(alignserve_time_to_first_token_seconds_bucket[20s]))), "q", "p50", "", "") or label_replace(histogram_quantile(0.99, sum by (le) (rate(alignserve_time_to_first_token_seconds_bucket[20s]))), "q", "p99", "", "")'
shot queue_depth 'alignserve_queue_depth'
# every Grafana panel, same PromQL, on Prometheus's own console page (Grafana has no package here)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --hide-scrollbars \
  --window-size=1540,1250 --virtual-time-budget=20000 --screenshot="$OUT/dashboard_console.png" \
  "http://127.0.0.1:$PROM_PORT/consoles/alignserve.html?rate=20s&duration=$((LOAD_S / 60 + 2))m" 2>/dev/null
cat "$WORK/load.txt" | tail -12
ls -la "$OUT"
