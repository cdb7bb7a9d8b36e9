#!/usr/bin/env bash
# Hot restart under load: nginx's two ways of replacing itself, and Baton's, measured in one run
# with the same wrk load (200 keep-alive connections, 2 threads, 12 s, the restart at ~4 s).
#
#   bench/peers/restart.sh [SAMPLES_DIR]      SAMPLES_DIR holds baton-http and batonctl
#                                             (default build/linux/samples)
#   BATON_BENCH_KEEP=1 bench/peers/restart.sh   keeps the work directory (wrk outputs, logs)
#   BATON_BENCH_CONNS=1000 bench/peers/restart.sh   wrk -c1000 instead of 200
#
# Rows:
#   nginx, no restart                  the baseline under the same load
#   nginx binary upgrade               kill -USR2 master; wait for the new master's pid file (and
#                                      nginx.pid.oldbin); kill -WINCH old; kill -QUIT old. Timed
#                                      from USR2 to the old master's exit.
#   nginx -s reload                    HUP; timed until every old worker process has exited.
#   baton-http + batonctl restart      timed from the command to the old generation's exit (our
#                                      own watch of the old pid; batonctl's figures printed too).
#   baton-balancer front + batonctl    the same for the balancer's front (--name, 2 workers): the
#     restart                          dispatcher process is replaced, its workers stay.
# Each row is its own wrk run, so its socket errors and non-2xx belong to that restart alone.
# Native Linux only; loopback only; every wait is bounded; everything started here is stopped
# on exit (trap).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/common.sh"
SAMPLES=${1:-$ROOT/build/linux/samples}

LOAD_SECS=12       # wrk -d
RESTART_AT=4       # seconds into the wrk run
CONNS=${BATON_BENCH_CONNS:-200}  # BATON_BENCH_CONNS=1000 for the issue-13 row
WRK_THREADS=2

command -v wrk >/dev/null 2>&1 || baton_install_packages wrk
command -v curl >/dev/null 2>&1 || baton_install_packages curl
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || baton_install_packages nginx-light
# Absolute path: nginx re-executes its own argv[0] on USR2, without a PATH search.
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/baton-restart-bench.XXXXXX)
# Every server process this script started (or learned of from nginx / batonctl), as pid:name,
# stopped on exit. The name guards against signalling a recycled pid.
OWNED=()
own() { OWNED+=("$1:$(cat "/proc/$1/comm" 2>/dev/null || echo gone)"); }
still_ours() { alive "${1%%:*}" && [ "$(cat "/proc/${1%%:*}/comm" 2>/dev/null)" = "${1#*:}" ]; }

cleanup() {
  set +e  # clean up as much as possible, whatever fails
  local e left
  for e in "${OWNED[@]}"; do still_ours "$e" && kill -TERM "${e%%:*}" 2>/dev/null; done
  for _ in $(seq 50); do
    left=0
    for e in "${OWNED[@]}"; do still_ours "$e" && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  for e in "${OWNED[@]}"; do still_ours "$e" && kill -KILL "${e%%:*}" 2>/dev/null; done
  [ -n "${WRK_PID:-}" ] && kill "$WRK_PID" 2>/dev/null
  if [ "${BATON_BENCH_KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A process counts as gone once it is a zombie: a daemonised nginx master is reparented to a
# PID 1 that may never reap it.
alive() {
  local line
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  line=${line##*) }
  [ "${line%% *}" != Z ]
}

now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $(( t / 1000 )); }  # bash 5: no fork of date

# Polls `cond` every 5 ms for at most $1 seconds; returns 1 on time-out.
wait_for() {
  local secs=$1; shift
  local end=$(( $(now_ms) + secs * 1000 ))
  until "$@"; do
    [ "$(now_ms)" -ge "$end" ] && return 1
    sleep 0.005
  done
}

# A port below the ephemeral range (wrk's own connections take ports from that range, and a
# listener cannot bind a port a connection uses), with no socket on it in any state.
free_port() {
  local p lo
  lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$lo" -gt 11024 ] || lo=11024
  for _ in $(seq 100); do
    p=$(( lo - 10000 + RANDOM % 9999 ))
    if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2
  return 1
}

port_answers() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

# The pid a Baton sample server on port $1 puts in its X-Baton-Pid header (empty if none).
baton_pid() {
  curl -s --max-time 2 -D - -o /dev/null "http://127.0.0.1:$1/" | tr -d '\r' | sed -n 's/^[Xx]-[Bb]aton-[Pp]id: *\([0-9]*\).*/\1/p'
}

# Starts wrk in the background against port $1, output to $2.
start_wrk() {
  timeout $(( LOAD_SECS + 20 )) wrk -t$WRK_THREADS -c$CONNS -d${LOAD_SECS}s --latency "http://127.0.0.1:$1/" >"$2" 2>&1 &
  WRK_PID=$!
}

# Waits for wrk (it stops itself after LOAD_SECS; `timeout` bounds it) and forgets its pid.
wait_wrk() {
  wait "$WRK_PID" || true
  WRK_PID=
}

# Table row from a wrk output file: req/s, p99, socket errors c/r/w/t, non-2xx.
ROWS=()
add_row() {  # name wrk_output old_exit_text
  local f=$2 rps p99 errs non2xx
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4 "/" $6 "/" $8 "/" $10}' "$f")
  non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$f")
  ROWS+=("$(printf '| %-38s | %9s | %9s | %-16s | %7s | %-40s |' "$1" "${rps:-?}" "${p99:-?}" "${errs:-0/0/0/0}" "${non2xx:-0}" "$3")")
}

# --- nginx -----------------------------------------------------------------------------------

# Writes a config for a fresh nginx in $WORK/nginx-$1 listening on port $2; prints the dir.
nginx_setup() {
  local dir=$WORK/nginx-$1
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 65;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$2;
    location / { return 200 "ok\n"; }
  }
}
EOF
  echo "$dir"
}

nginx_start() {  # dir port; sets MASTER
  local dir=$1
  "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_for 10 test -s "$dir/nginx.pid" || { echo "nginx did not write its pid file" >&2; return 1; }
  MASTER=$(cat "$dir/nginx.pid")
  own "$MASTER"
  wait_for 10 port_answers "$2" || { echo "nginx does not answer on port $2" >&2; return 1; }
}

nginx_stop() {  # dir
  local pid
  pid=$(cat "$1/nginx.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill -QUIT "$pid" 2>/dev/null || true
  wait_for 10 none_alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
}

oldbin_ready() {  # dir old_master: the new master has written its pid file and renamed the old one
  [ -s "$1/nginx.pid.oldbin" ] && [ -s "$1/nginx.pid" ] && [ "$(cat "$1/nginx.pid")" != "$2" ]
}

none_alive() { local p; for p in "$@"; do alive "$p" && return 1; done; return 0; }

run_nginx_baseline() {
  local port dir
  port=$(free_port); dir=$(nginx_setup baseline "$port")
  nginx_start "$dir" "$port"
  start_wrk "$port" "$dir/wrk.txt"
  wait_wrk
  nginx_stop "$dir"
  add_row "nginx, no restart (baseline)" "$dir/wrk.txt" "-"
}

run_nginx_upgrade() {
  local port dir t0 t_new t_exit old new note
  port=$(free_port); dir=$(nginx_setup upgrade "$port")
  nginx_start "$dir" "$port"
  old=$MASTER
  start_wrk "$port" "$dir/wrk.txt"
  sleep $RESTART_AT
  t0=$(now_ms)
  kill -USR2 "$old"
  if wait_for 10 oldbin_ready "$dir" "$old"; then
    t_new=$(now_ms)
    new=$(cat "$dir/nginx.pid")
    own "$new"
    kill -WINCH "$old"
    kill -QUIT "$old"
    if wait_for 20 none_alive "$old"; then
      t_exit=$(now_ms)
      note="$(( t_exit - t0 )) ms (new master after $(( t_new - t0 )) ms)"
    else
      note="old master still alive after 20 s"
    fi
  else
    note="no new master within 10 s"
  fi
  wait_wrk
  nginx_stop "$dir"
  add_row "nginx binary upgrade (USR2/WINCH/QUIT)" "$dir/wrk.txt" "$note"
}

run_nginx_reload() {
  local port dir t0 workers note
  port=$(free_port); dir=$(nginx_setup reload "$port")
  nginx_start "$dir" "$port"
  start_wrk "$port" "$dir/wrk.txt"
  sleep $RESTART_AT
  mapfile -t workers < <(pgrep -P "$MASTER")
  t0=$(now_ms)
  "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -s reload
  if wait_for 20 none_alive "${workers[@]}"; then
    note="$(( $(now_ms) - t0 )) ms (${#workers[@]} old workers)"
  else
    note="old workers still alive after 20 s"
  fi
  wait_wrk
  nginx_stop "$dir"
  add_row "nginx -s reload (HUP)" "$dir/wrk.txt" "$note"
}

# --- Baton -----------------------------------------------------------------------------------

BATON_LINE=""
BATON_LINES=()  # batonctl's last line for each Baton row
run_baton() {
  local http=$SAMPLES/baton-http ctl=$SAMPLES/batonctl
  if [ ! -x "$http" ] || [ ! -x "$ctl" ]; then
    echo "== Baton: skipped, $http or $ctl not found (build them: cmake --build build/linux --target baton-http batonctl)"
    ROWS+=("$(printf '| %-38s | %9s | %9s | %-16s | %7s | %-40s |' "baton-http + batonctl restart" "skipped" "-" "-" "-" "binaries not built")")
    return 0
  fi
  local port name dir old new t0 t_exit rc=0 note
  port=$(free_port); name="restart-bench-$$"; dir=$WORK/baton
  mkdir -p "$dir"
  "$http" --name "$name" --listen "127.0.0.1:$port" >"$dir/gen1.log" 2>&1 &
  old=$!
  own "$old"
  wait_for 10 port_answers "$port" || { echo "baton-http does not answer on port $port" >&2; cat "$dir/gen1.log" >&2; return 1; }
  # The generation that answers names itself (X-Baton-Pid); it is the one to watch, should the
  # launched process have handed over to a child.
  local answering
  answering=$(baton_pid "$port")
  if [ -n "$answering" ] && [ "$answering" != "$old" ]; then
    echo "== baton-http $old answers as pid $answering; watching $answering"
    old=$answering
    own "$old"
  fi
  restart_under_wrk "baton-http + batonctl restart" "$port" "$name" "$old" "$dir"
  new=$(baton_pid "$port")
  [ -n "$new" ] && own "$new"
}

# wrk against port $2 with `batonctl restart $3` at RESTART_AT, timed until process $4 (the
# running generation) is gone; adds row $1. The new generation's pid is owned (stopped on exit).
restart_under_wrk() {  # label port name old dir
  local label=$1 port=$2 name=$3 old=$4 dir=$5 ctl=$SAMPLES/batonctl t0 t_exit rc=0 note new
  start_wrk "$port" "$dir/wrk.txt"
  sleep $RESTART_AT
  # batonctl runs in the background while we watch the old generation's pid ourselves.
  t0=$(now_ms)
  timeout 30 "$ctl" restart "$name" >"$dir/batonctl.out" 2>&1 &
  local ctl_pid=$!
  if wait_for 30 none_alive "$old"; then
    t_exit=$(now_ms)
    note="$(( t_exit - t0 )) ms"
  else
    note="old generation alive after 30 s"
  fi
  wait "$ctl_pid" || rc=$?
  note="$note (batonctl exit $rc after $(( $(now_ms) - t0 )) ms)"
  BATON_LINE=$(tail -n 1 "$dir/batonctl.out")
  BATON_LINES+=("$label: $BATON_LINE")
  # The new generation's pid, from "pid A -> B", and whoever listens on the port now (in case
  # the line differs); both are stopped on exit with everything else.
  new=$(sed -n 's/.*pid [0-9]* -> \([0-9]*\).*/\1/p' <<<"$BATON_LINE" | head -1)
  [ -n "$new" ] && own "$new"
  new=$(ss -Htlnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
  [ -n "$new" ] && own "$new"
  wait_wrk
  add_row "$label" "$dir/wrk.txt" "$note"
}

# The balancer's front restarted (baton-balancer --name): the dispatcher process is replaced,
# its two workers keep their connections and rejoin the new one.
run_baton_front() {
  local bal=$SAMPLES/baton-balancer ctl=$SAMPLES/batonctl
  if [ ! -x "$bal" ] || [ ! -x "$ctl" ]; then
    ROWS+=("$(printf '| %-38s | %9s | %9s | %-16s | %7s | %-40s |' "baton-balancer front, batonctl restart" "skipped" "-" "-" "-" "binaries not built")")
    return 0
  fi
  local port name dir old w
  port=$(free_port); name="front-bench-$$"; dir=$WORK/baton-front
  mkdir -p "$dir"
  "$bal" --name "$name" --listen "127.0.0.1:$port" --workers 2 >"$dir/front.log" 2>&1 &
  old=$!
  own "$old"
  wait_for 20 port_answers "$port" || { echo "baton-balancer does not answer on port $port" >&2; cat "$dir/front.log" >&2; return 1; }
  for w in $(pgrep -f -- "--dispatcher $name-dispatcher"); do own "$w"; done
  restart_under_wrk "baton-balancer front, batonctl restart" "$port" "$name" "$old" "$dir"
  WORKERS_AFTER=$(pgrep -f -- "--dispatcher $name-dispatcher" | sort | tr '\n' ' ')
  "$ctl" stop "$name" >/dev/null 2>&1 || true
}

echo "== hot restart under load: wrk -t$WRK_THREADS -c$CONNS -d${LOAD_SECS}s --latency, restart at ~${RESTART_AT} s; $($NGINX -v 2>&1)"
echo "== $(nproc) CPUs, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
run_nginx_baseline
run_nginx_upgrade
run_nginx_reload
run_baton
run_baton_front

echo
printf '| %-38s | %9s | %9s | %-16s | %7s | %-40s |\n' "method" "req/s" "p99" "sock err c/r/w/t" "non-2xx" "old process gone after"
dashes() { printf -- '-%.0s' $(seq "$1"); }
printf '|%s|%s|%s|%s|%s|%s|\n' "$(dashes 40)" "$(dashes 11)" "$(dashes 11)" "$(dashes 18)" "$(dashes 9)" "$(dashes 42)"
for r in "${ROWS[@]}"; do echo "$r"; done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ ${#BATON_LINES[@]} -gt 0 ] && echo && for l in "${BATON_LINES[@]}"; do echo "batonctl, $l"; done
[ -n "${WORKERS_AFTER:-}" ] && echo "balancer workers after the front's restart (same pids as before): $WORKERS_AFTER"
exit 0
