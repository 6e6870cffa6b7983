#!/usr/bin/env bash
# docs/cluster.md on one box, step by step: a token-authenticated Ray head, NODES GPU nodes (`ray start
# --address`, each declaring one GPU), the server as the head with an explicit address, one job through its HTTP
# API, then one node taken out. tests/cluster/test_cluster_doc.py runs it; an admin can run it to try the
# backend before buying boxes:
#
#   bash scripts/cluster-trial.sh [WORKDIR]
#
# Environment: PORT (the GCS, 6379), HTTP_PORT (8765), CLIENT_PORT (10001), NODES (2), PYTHON, RAY, and
# PORT_BASE (30000): box i's fixed ports (i = 0 the head) are PORT_BASE + 100 i + 0 node manager, 1 object
# manager, 2-5 the agents, 10-39 the workers, as docs/cluster.md fixes them on a real box (one box here, so each
# raylet needs its own).
#
# Every Ray process it starts is a `ray start --block` in the background, stopped by its own pid at the end
# (never `ray stop`, which would end every Ray of this user on the machine).
set -euo pipefail

WORK=${1:-$(mktemp -d)}
PORT=${PORT:-6379}
HTTP_PORT=${HTTP_PORT:-8765}
NODES=${NODES:-2}
CLIENT_PORT=${CLIENT_PORT:-10001}
PORT_BASE=${PORT_BASE:-30000}
PYTHON=${PYTHON:-python}
RAY=${RAY:-ray}
mkdir -p "$WORK"
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
say() { echo "== $*"; }
ports() {  # the fixed ports of box $1 (0: the head)
  local b=$((PORT_BASE + 100 * $1))
  echo "--node-manager-port $b --object-manager-port $((b + 1)) --dashboard-agent-listen-port $((b + 2))" \
    "--dashboard-agent-grpc-port $((b + 3)) --runtime-env-agent-port $((b + 4)) --metrics-export-port $((b + 5))" \
    "--min-worker-port $((b + 10)) --max-worker-port $((b + 39))"
}

say "step 2: one token for Ray on every box (and the server), token mode on, no usage stats"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
export RAY_USAGE_STATS_ENABLED=0

say "step 3: the head, on loopback here (on a real head: its LAN address), with fast node-loss detection"
RAY_health_check_period_ms=500 RAY_health_check_failure_threshold=3 RAY_health_check_timeout_ms=500 \
  "$RAY" start --head --block --port "$PORT" --node-ip-address 127.0.0.1 --num-gpus 0 --include-dashboard=false \
  --ray-client-server-port "$CLIENT_PORT" --disable-usage-stats $(ports 0) >"$WORK/head.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do grep -q "Ray runtime started" "$WORK/head.log" && break; sleep 0.5; done
grep -q "Ray runtime started" "$WORK/head.log" || { cat "$WORK/head.log"; exit 1; }

say "step 4: $NODES GPU nodes on this one box (each a raylet of its own declaring one GPU)"
NODE_PIDS=()
start_node() {  # $1: its number. Ray gives a raylet a fixed 30 s to register; on a busy box (CI's two cores) it can
  local i=$1 pid  # miss that ("The current node timed out during startup"): one at a time, and up to 3 tries
  for _try in 1 2 3; do
    "$RAY" start --block --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-gpus 1 --num-cpus 1 \
      --disable-usage-stats $(ports "$i") >"$WORK/node$i.log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do
      if grep -q "Ray runtime started" "$WORK/node$i.log"; then PIDS+=("$pid"); NODE_PIDS+=("$pid"); return 0; fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  done
  cat "$WORK/node$i.log"; exit 1
}
for i in $(seq "$NODES"); do start_node "$i"; done

say "a node without the cluster's token is refused"
intruder() {  # $1: a name for its log; the environment given before the call
  timeout 40 "$RAY" start --block --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 --num-gpus 1 \
    --disable-usage-stats $(ports 9) >"$WORK/$1.log" 2>&1 || true
  if grep -q "Ray runtime started" "$WORK/$1.log"; then echo "$1: joined"; exit 1; fi
  echo "$1: refused: $(grep -m1 -iE "auth|token|error" "$WORK/$1.log" | cut -c1-200)"
}
RAY_AUTH_TOKEN=wrong intruder wrong-token
say "a node with the token but without RAY_AUTH_MODE=token is refused too"
(unset RAY_AUTH_MODE; intruder token-without-mode)

say "step 3: the server as the head, with the explicit address"
cat >"$WORK/server.toml" <<TOML
[model]
base = "tiny"
[cluster]
backend = "ray"
address = "127.0.0.1:$PORT"
TOML
"$PYTHON" -m server --config "$WORK/server.toml" --port "$HTTP_PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
PIDS+=($!)

"$PYTHON" - "$HTTP_PORT" "$NODES" <<'PY'
import base64, io, json, sys, time, urllib.request
from PIL import Image, ImageDraw

url, nodes = f"http://127.0.0.1:{sys.argv[1]}", int(sys.argv[2])


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def until(what, check, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{what}: not after {timeout} s")


until("the server answers", lambda: call("/v1/health"))
workers = until(f"{nodes} workers idle", lambda: [w for w in call("/v1/health")["workers"] if w["state"] == "idle"]
                if len([w for w in call("/v1/health")["workers"] if w["state"] == "idle"]) == nodes else None)
print("workers:", ", ".join(w["name"] for w in workers))
img = Image.new("RGB", (64, 64))
ImageDraw.Draw(img).rectangle((8, 12, 40, 54), outline="white", width=2)
buf = io.BytesIO()
img.save(buf, format="PNG")
body = {"prompt": "a ball", "modality": "lineart", "num_frames": 16, "width": 64, "height": 64, "steps": 4,
        "keyframes": [{"index": 0, "image": base64.b64encode(buf.getvalue()).decode()}]}
job = call("/v1/jobs", body)["id"]
done = until("the job finishes", lambda: (j := call(f"/v1/jobs/{job}"))["status"] not in ("queued", "running") and j)
print("job", job, done["status"], "on", done["worker"])
sys.exit(0 if done["status"] == "succeeded" else 1)
PY

say "taking a node out: its ray start ends (on a real box: ray stop there); the server drops its worker"
kill -TERM "${NODE_PIDS[-1]}"
wait "${NODE_PIDS[-1]}" 2>/dev/null || true
"$PYTHON" - "$HTTP_PORT" "$NODES" <<'PY'
import json, sys, time, urllib.request

url, nodes = f"http://127.0.0.1:{sys.argv[1]}", int(sys.argv[2])
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    with urllib.request.urlopen(url + "/v1/health", timeout=30) as r:
        workers = json.loads(r.read())["workers"]
    if len(workers) == nodes - 1:
        print("workers after taking a node out:", ", ".join(w["name"] for w in workers))
        sys.exit(0)
    time.sleep(0.5)
sys.exit(f"still {len(workers)} workers")
PY
say "trial done: $WORK"
