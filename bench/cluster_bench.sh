#!/usr/bin/env bash
# The 2-node cluster benchmark on one machine, mobula beside Ray.
#
# (a) starts a mobula cluster on 127.0.0.1 (a head and a worker node offering the custom
#     resource bench_remote, each with its own temp dir and port), runs
#     `mobula cluster-benchmark` as a driver on the head, stops the cluster;
# (b) starts Ray the same way (`ray start --head`, then `ray start --address` with
#     `--resources '{"bench_remote": 1000}'`, its own ports and temp dir), runs
#     bench/ray_cluster_bench.py, stops it (only the processes of its temp dir);
# (c) writes bench/results/<date><RUN>-cluster-mobula.txt and -cluster-ray.txt and prints
#     ../shared/bench/compare.py of them.
#
# Env: MOBULA (default: the release binary under $CARGO_TARGET_DIR or ./target), RAY_VENV
#      (default ~/.cache/ray-baseline-venv), RUN (a suffix of the result files, e.g. "a"),
#      NUM_CPUS (per node, default 2), OBJECT_MIB (default 256), MOBULA_PORT (default 26379),
#      RAY_PORT (default 26380), ONLY=mobula|ray (one side only), EXTRA (more flags for
#      `mobula cluster-benchmark`, e.g. "--rounds 1").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
mobula=${MOBULA:-$target/release/mobula}
venv=${RAY_VENV:-$HOME/.cache/ray-baseline-venv}
cpus=${NUM_CPUS:-2}
mib=${OBJECT_MIB:-256}
mport=${MOBULA_PORT:-26379}
rport=${RAY_PORT:-26380}
stamp=$(date -u +%F)${RUN:-}
out_m=$here/results/$stamp-cluster-mobula.txt
out_r=$here/results/$stamp-cluster-ray.txt
mkdir -p "$here/results"

mtmp=$(mktemp -d /tmp/mobula-cb.XXXXXX)
rtmp=$(mktemp -d /tmp/ray-cb.XXXXXX)

stop_mobula() {
  "$mobula" stop --temp-dir "$mtmp" --port "$mport" --grace-period 5 >&2 || true
}

# Ray's processes of this benchmark only: those naming its temp dir or its head's address on
# their command line (GCS, raylets, monitors, the client server) and their descendants (workers, agents rename themselves
# `ray::...`). `ray stop` would stop every Ray cluster of the machine.
ray_pids() {
  local roots
  roots=$( (pgrep -f -- "$rtmp"; pgrep -f -- "--address=[0-9.]*:$rport( |\$)") || true)
  [ -z "$roots" ] && return 0
  ps -e -o pid=,ppid= | awk -v roots="$roots" '
    BEGIN { n = split(roots, r, /[ \n]+/); for (i = 1; i <= n; i++) if (r[i] != "") keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      changed = 1
      while (changed) {
        changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
      }
      for (p in keep) if (p in parent) print p
    }'
}
stop_ray() {
  local pids alive
  pids=$(ray_pids)
  [ -z "$pids" ] && return 0
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 50); do
    alive=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
    [ -z "$alive" ] && return 0
    sleep 0.2
  done
  kill -KILL $alive 2>/dev/null || true
}

cleanup() {
  stop_mobula
  stop_ray
  rm -rf "$mtmp" "$rtmp"
}
trap cleanup EXIT INT TERM

header() {
  echo "# $1, $(date -u '+%F %T UTC'), $(nproc) CPUs; 2 nodes on 127.0.0.1, $cpus CPUs each; objects of $mib MiB"
}

if [ "${ONLY:-mobula}" != ray ]; then
  echo "== mobula: $("$mobula" --version)" >&2
  "$mobula" start --head --dashboard-port 0 --port "$mport" --bind 127.0.0.1 --temp-dir "$mtmp" --num-cpus "$cpus" >&2
  "$mobula" start --address "127.0.0.1:$mport" --bind 127.0.0.1 --temp-dir "$mtmp" \
    --num-cpus "$cpus" --resources '{"bench_remote": 1000}' >&2
  {
    header "mobula $(git -C "$repo" rev-parse --short HEAD)"
    # shellcheck disable=SC2086
    "$mobula" cluster-benchmark --address "127.0.0.1:$mport" --temp-dir "$mtmp" \
      --object-mib "$mib" ${EXTRA:-}
  } | tee "$out_m"
  stop_mobula
fi

if [ "${ONLY:-ray}" != mobula ]; then
  export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
  ray=$venv/bin/ray
  if ! "$venv/bin/python" -c 'import ray, numpy' 2>/dev/null; then
    echo "bench: $venv lacks ray or numpy: run ../shared/bench/ray_baseline.sh once (it installs both) or set RAY_VENV" >&2
    exit 1
  fi
  echo "== ray: $("$ray" --version)" >&2
  "$ray" start --head --port "$rport" --node-ip-address 127.0.0.1 --num-cpus "$cpus" \
    --temp-dir "$rtmp" --include-dashboard=false --disable-usage-stats \
    --object-store-memory 4000000000 \
    --node-manager-port 26381 --object-manager-port 26382 --ray-client-server-port 26383 \
    --dashboard-agent-listen-port 26384 --dashboard-agent-grpc-port 26385 \
    --metrics-export-port 26386 --runtime-env-agent-port 26387 \
    --min-worker-port 26400 --max-worker-port 26499 >&2
  "$ray" start --address "127.0.0.1:$rport" --node-ip-address 127.0.0.1 --num-cpus "$cpus" \
    --temp-dir "$rtmp" --disable-usage-stats --resources '{"bench_remote": 1000}' \
    --object-store-memory 4000000000 \
    --node-manager-port 26391 --object-manager-port 26392 \
    --dashboard-agent-listen-port 26394 --dashboard-agent-grpc-port 26395 \
    --metrics-export-port 26396 --runtime-env-agent-port 26397 \
    --min-worker-port 26500 --max-worker-port 26599 >&2
  {
    header "ray $("$venv/bin/python" -c 'import ray; print(ray.__version__)')"
    RAY_ADDRESS=127.0.0.1:$rport BENCH_OBJECT_MIB=$mib "$venv/bin/python" "$here/ray_cluster_bench.py"
  } | tee "$out_r"
  stop_ray
fi

if [ -s "$out_m" ] && [ -s "$out_r" ]; then
  python3 "$repo/../shared/bench/compare.py" "$out_m" "$out_r"
fi
