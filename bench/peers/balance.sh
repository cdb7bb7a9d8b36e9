#!/usr/bin/env bash
# Peer comparison for load balancing by hand-off, on loopback, 2 worker processes in each case:
#   1 ceiling   two `baton-balancer --serve --reuseport` processes accepting on one port
#               (SO_REUSEPORT), the same tiny HTTP handler, no hand-off
#   2 baton     `baton-balancer --workers 2 --policy least-connections` (or --policy P)
#   3 node      Node.js cluster, SCHED_RR, 2 workers (node_cluster.js)
#   4 nginx     nginx (2 worker processes) proxying to two `baton-balancer --serve` backends
# each driven by wrk with keep-alive and with `Connection: close` (one request per connection).
# Prints requests/s, p99 latency, the servers' CPU time per request (all their processes), the
# CPU of the hand-off layer alone (baton's dispatcher, node's primary, nginx) per request, the
# ratio to (1) in the same round, and how the measured run's connections spread over the workers.
#
#   bench/peers/balance.sh [--rounds N] [--duration SECONDS] [--connections N[,N...]]
#                          [--policy round-robin|least-connections] [--build DIR]
#
# Needs a native build with baton-balancer (built here if missing). Installs wrk and nginx with
# apt when missing; Node.js is expected at /usr/bin/node.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3 duration=5 conns_list=16 policy=least-connections build="$root/build/linux"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) conns_list=$2; shift 2 ;;  # one count or a list: 16,64,256
    --build) build=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=../../scripts/common.sh
. "$root/scripts/common.sh"
command -v wrk >/dev/null || baton_install_packages wrk
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || baton_install_packages nginx-light
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
node_bin=$(command -v node || echo /usr/bin/node)
balancer="$build/samples/baton-balancer"
if [ ! -x "$balancer" ]; then
  cmake --preset linux -S "$root" >/dev/null
  cmake --build "$build" -j1 --target baton-balancer
fi

tmp=$(mktemp -d /tmp/baton-peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -f "$tmp/nginx.pid" ] && kill -KILL "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Below the ephemeral range (32768 and up here): a port some client connection used moments ago
# can still be held by its TIME-WAIT entry, and the reuseport servers' bind then fails.
base=$((20000 + ($$ % 1200) * 10))
port=$base; backend1=$((base + 1)); backend2=$((base + 2))
clk=$(getconf CLK_TCK)

wait_port() {  # port
  for _ in $(seq 1 500); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.02
  done
  echo "port $1 did not open" >&2
  return 1
}

# All descendants of the given pids, and themselves.
tree() {
  local all=("$@") frontier=("$@") next p c
  while [ ${#frontier[@]} -gt 0 ]; do
    next=()
    for p in "${frontier[@]}"; do
      for c in $(pgrep -P "$p" 2>/dev/null || true); do all+=("$c"); next+=("$c"); done
    done
    frontier=("${next[@]}")
  done
  echo "${all[@]}"
}

ticks() {  # pids... -> utime+stime summed, in clock ticks
  local sum=0 p f
  for p in "$@"; do
    if f=$(cat "/proc/$p/stat" 2>/dev/null); then
      f=${f##*) }  # fields after the command name
      set -- $f
      sum=$((sum + ${12} + ${13}))
    fi
  done
  echo $sum
}

nginx_conf() {
  cat >"$tmp/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx-body;
  proxy_temp_path $tmp/nginx-proxy;
  fastcgi_temp_path $tmp/nginx-fastcgi;
  uwsgi_temp_path $tmp/nginx-uwsgi;
  scgi_temp_path $tmp/nginx-scgi;
  upstream backends { server 127.0.0.1:$backend1; server 127.0.0.1:$backend2; keepalive 64; }
  server {
    listen 127.0.0.1:$port reuseport;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}

# start CASE: starts the servers; sets all_pids (every server process), handoff_pids (the
# hand-off layer alone) and report_pids (who prints counts on SIGUSR2).
start() {
  : >"$tmp/err"
  case "$1" in
    ceiling)
      "$balancer" --serve --reuseport --listen "127.0.0.1:$port" --tag 0 2>>"$tmp/err" & pids+=($!); a=$!
      "$balancer" --serve --reuseport --listen "127.0.0.1:$port" --tag 1 2>>"$tmp/err" & pids+=($!); b=$!
      wait_port "$port"
      all_pids="$a $b"; handoff_pids=""; report_pids="$a $b" ;;
    baton)
      "$balancer" --listen "127.0.0.1:$port" --workers 2 --policy "$policy" >/dev/null 2>>"$tmp/err" &
      pids+=($!); a=$!
      wait_port "$port"
      sleep 0.2
      all_pids=$(tree "$a"); handoff_pids="$a"; report_pids="$a" ;;
    node)
      "$node_bin" "$here/node_cluster.js" "$port" 2 2>>"$tmp/err" & pids+=($!); a=$!
      wait_port "$port"
      sleep 0.3
      all_pids=$(tree "$a"); handoff_pids="$a"; report_pids="$a" ;;
    nginx)
      "$balancer" --serve --listen "127.0.0.1:$backend1" --tag 0 2>>"$tmp/err" & pids+=($!); b1=$!
      "$balancer" --serve --listen "127.0.0.1:$backend2" --tag 1 2>>"$tmp/err" & pids+=($!); b2=$!
      nginx_conf
      "$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" 2>>"$tmp/nginx-error.log" & pids+=($!); a=$!
      wait_port "$backend1"; wait_port "$backend2"; wait_port "$port"
      sleep 0.2
      local ng; ng=$(tree "$a")
      all_pids="$ng $b1 $b2"; handoff_pids="$ng"; report_pids="$b1 $b2" ;;
  esac
}

stop() {
  local p
  for p in $all_pids; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $all_pids; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.02; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  pids=()
}

# Per-worker connection counts printed on SIGUSR2, as "a:b".
counts() {
  : >"$tmp/err"
  local p
  for p in $report_pids; do kill -USR2 "$p" 2>/dev/null || true; done
  sleep 0.3
  python3 - "$tmp/err" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.findall(r"spread:(.*)", text)
if m:
    print(":".join(re.findall(r"=(\d+)", m[-1])))
else:
    counts = {}
    for tag, n in re.findall(r"(?:serve|node worker) (\d+) \(pid \d+\): (\d+) connections", text):
        counts[int(tag)] = int(n)
    print(":".join(str(counts[k]) for k in sorted(counts)))
PY
}

results="$tmp/results.tsv"
: >"$results"
echo "peer comparison: $rounds rounds x 2 modes x 4 cases, wrk -t2 -c{$conns_list} -d${duration}s on loopback, $(nproc) CPUs; baton-balancer --policy $policy"
for conns in ${conns_list//,/ }; do
for round in $(seq 1 "$rounds"); do
  for mode in keepalive close; do
    for case in ceiling baton node nginx; do
      start "$case"
      hdr=()
      [ "$mode" = close ] && hdr=(-H "Connection: close")
      wrk -t2 -c"$conns" -d1s "${hdr[@]}" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true  # warm-up
      all_pids=$(for p in $all_pids; do echo "$p"; done; for p in $all_pids; do pgrep -P "$p" 2>/dev/null || true; done)
      all_pids=$(echo "$all_pids" | sort -u | tr '\n' ' ')
      before=$(counts)
      t0=$(ticks $all_pids); h0=$(ticks $handoff_pids)
      # `times` in the subshell: the CPU time of its child, wrk (the load generator shares the CPUs).
      (wrk -t2 -c"$conns" -d"${duration}s" --latency "${hdr[@]}" "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1 || true
       times >"$tmp/wrk.times")
      t1=$(ticks $all_pids); h1=$(ticks $handoff_pids)
      after=$(counts)
      stop
      python3 - "$tmp/wrk.out" "$round" "$mode" "$case" "$((t1 - t0))" "$((h1 - h0))" "$clk" "$before" "$after" \
        "$tmp/wrk.times" "$conns" >>"$results" <<'PY'
import re, sys
out, rnd, mode, case, ticks, hticks, clk, before, after, times, conns = sys.argv[1:]
text = open(out).read()
# bash `times`: the shell's line, then its children's ("0m1.234s 0m5.678s").
child = open(times).read().splitlines()[-1].split()
wrk_s = sum(int(m) * 60 + float(sec) for m, sec in (re.match(r"(\d+)m([\d.]+)s", x).groups() for x in child))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
unit = {"us": 1, "ms": 1e3, "s": 1e6}
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
p99 = float(m.group(1)) * unit[m.group(2)] if m else float("nan")
errors = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m: errors += sum(int(x) for x in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if m: errors += int(m.group(1))
cpu = int(ticks) / int(clk) * 1e6 / max(total, 1)
hcpu = int(hticks) / int(clk) * 1e6 / max(total, 1)
wcpu = wrk_s * 1e6 / max(total, 1)
b = [int(x) for x in before.split(":") if x] if before else []
a = [int(x) for x in after.split(":") if x] if after else []
spread = ":".join(str(y - (b[i] if i < len(b) else 0)) for i, y in enumerate(a)) if a else "?"
print(f"{rnd}\t{mode}\t{case}\t{rps:.0f}\t{p99:.0f}\t{cpu:.1f}\t{hcpu:.1f}\t{errors}\t{spread}\t{wcpu:.1f}\t{conns}")
PY
      tail -1 "$results" | awk -F'\t' '{printf "  -c%s round %s %-9s %-8s %8s req/s  p99 %6s us  cpu/req %6s us  hand-off cpu/req %5s us  wrk cpu/req %5s us  errors %s  spread %s\n", $11,$1,$2,$3,$4,$5,$6,$7,$10,$8,$9}'
    done
  done
done
done

python3 - "$results" "$(nproc)" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cpus = int(sys.argv[2])
by = {}
for rnd, mode, case, rps, p99, cpu, hcpu, err, spread, wcpu, conns in rows:
    by.setdefault((int(conns), mode, case), []).append(dict(rnd=rnd, rps=float(rps), p99=float(p99), cpu=float(cpu),
                                                            hcpu=float(hcpu), err=int(err), spread=spread,
                                                            all=float(cpu) + float(wcpu)))
ref = {(n, r["rnd"], m, c): r for (n, m, c), rs in by.items() for r in rs}
names = {"ceiling": "1 SO_REUSEPORT, no hand-off", "baton": "2 baton-balancer", "node": "3 Node.js cluster RR",
         "nginx": "4 nginx proxy"}
med = statistics.median
print()
# "all CPU": the servers' and wrk's CPU time per request; with every CPU busy, req/s cannot exceed
# CPUs / all CPU, so "CPU-bound ratio" (the ceiling's all CPU over the case's) is the most a case
# can reach against (1) on this machine however its latency is hidden.
print("| wrk -c | mode | case | req/s | ratio to (1) | to (4) | p99 us | server CPU us/req | hand-off CPU us/req "
      "| all CPU us/req (with wrk) | CPU-bound ratio to (1) | busy CPUs | errors | spread (last round) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted({k[0] for k in by}):
    for mode in ("keepalive", "close"):
        for case in ("ceiling", "baton", "node", "nginx"):
            rs = by.get((n, mode, case), [])
            if not rs: continue
            def vs(other, key):
                return med(r[key] / ref[(n, r["rnd"], mode, other)][key] for r in rs
                           if (n, r["rnd"], mode, other) in ref)
            ratio = vs("ceiling", "rps")
            to_nginx = vs("nginx", "rps") if any((n, r["rnd"], mode, "nginx") in ref for r in rs) else float("nan")
            bound = med(ref[(n, r["rnd"], mode, "ceiling")]["all"] / r["all"] for r in rs
                        if (n, r["rnd"], mode, "ceiling") in ref)
            busy = med(r["rps"] * r["all"] / 1e6 for r in rs)
            print(f"| {n} | {'keep-alive' if mode == 'keepalive' else 'Connection: close'} | {names[case]} | "
                  f"{med(r['rps'] for r in rs):.0f} | {ratio:.2f}x | {to_nginx:.2f}x | {med(r['p99'] for r in rs):.0f} | "
                  f"{med(r['cpu'] for r in rs):.1f} | {med(r['hcpu'] for r in rs):.1f} | {med(r['all'] for r in rs):.1f} | "
                  f"{bound:.2f}x | {busy:.2f} of {cpus} | {sum(r['err'] for r in rs)} | {rs[-1]['spread']} |")
PY
