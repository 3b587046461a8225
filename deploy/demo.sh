#!/usr/bin/env bash
# The matmine demo: a devnet node, a pool and a CPU worker mining together on loopback.
# It shows shares accepted, blocks found, PPLNS credits maturing and a payout.
#   bash deploy/demo.sh                  # until Ctrl-C
#   MATMINE_DEMO_SECONDS=300 bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/matmine-pool ]; then
    echo "== setting up .venv (first run only)"
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[opencl]'
fi
bin=.venv/bin
data=${MATMINE_DEMO_DIR:-$(mktemp -d /tmp/matmine-demo.XXXXXX)}
node_port=${MATMINE_NODE_PORT:-18444}
stratum_port=${MATMINE_STRATUM_PORT:-3333}
http_port=${MATMINE_HTTP_PORT:-8080}
metrics_port=${MATMINE_METRICS_PORT:-9110}
address=$($bin/matmine-node new-address)

# Demo settings: 15 s blocks that mature after 3 confirmations, balances paid every 10 s,
# so the whole cycle (share → block → credit → maturity → payout) shows within minutes.
cat > "$data/pool.toml" <<TOML
[pool]
min_payout = 1_000_000
payout_interval = 10.0
unlock_interval = 3.0

[chain]
kind = "rpc"
rpc_port = $node_port
TOML

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo "== stopping (data kept in $data)"
    # Worker first, then pool (it flushes its ledger on SIGTERM), then the node.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
}
trap cleanup INT TERM EXIT

run() {  # run NAME CMD...: start a part with its output prefixed by its name
    local name=$1
    shift
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=($!)
}

echo "== data in $data; miner address $address"
run node $bin/matmine-node serve --data-dir "$data/node" --port "$node_port" \
    --maturity 3 --block-time 15 --start-difficulty 100
sleep 2
run pool $bin/matmine-pool serve --config "$data/pool.toml" --data-dir "$data/pool" \
    --stratum-port "$stratum_port" --http-port "$http_port"
sleep 3
run worker $bin/matmine-worker mine --pool "127.0.0.1:$stratum_port" --login "$address.demo" \
    --backend blas --metrics-port "$metrics_port"

report() {  # one line from the pool's JSON API: chain, blocks, this miner's money
    $bin/python - "$http_port" "$address" <<'PY' || true
import sys, httpx
port, address = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}/api"
try:
    pool = httpx.get(f"{base}/pool", timeout=2).json()
    miner = httpx.get(f"{base}/miners/{address}", timeout=2)
except httpx.HTTPError as exc:
    print(f"[demo] pool API not answering yet ({exc.__class__.__name__})")
    raise SystemExit
m = miner.json() if miner.status_code == 200 else {}
coin = 10**8
print(f"[demo] height {pool.get('height')} | pool blocks {pool.get('blocks_found')} | "
      f"miner {address[:12]}…: balance {m.get('balance', 0) / coin:.8f}, "
      f"immature {m.get('immature', 0) / coin:.8f}, paid {m.get('paid', 0) / coin:.8f}")
PY
}

start=$(date +%s)
while :; do
    sleep 15
    report
    if [ -n "${MATMINE_DEMO_SECONDS:-}" ] && (( $(date +%s) - start >= MATMINE_DEMO_SECONDS )); then
        break
    fi
done
