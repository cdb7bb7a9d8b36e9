#!/usr/bin/env python3
"""Hot restart with many idle keep-alive connections: for each size N, opens N connections to a
fresh baton-http (one request each), runs `batonctl restart` K times, then checks that every
connection still answers, from the last generation. Prints one JSON line per restart (hand-over
time, microseconds per connection, moved, not moved, batonctl's exit status) and one per size.

    bench/peers/idle_restart.py [--connections 1000,5000,10000,15000] [--restarts 3]
                                [--samples build/linux/samples]

Raises its own soft RLIMIT_NOFILE (baton-http inherits it): N client sockets here, N connections
in the server, and the moves in flight held by both generations.
"""
import argparse, json, re, resource, socket, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--connections", default="1000", help="comma-separated sizes")
ap.add_argument("--restarts", type=int, default=3)
ap.add_argument("--samples", default="build/linux/samples")
a = ap.parse_args()
sizes = [int(x) for x in a.connections.split(",")]

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = max(sizes) + 1024
if soft < want:
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit("need %d descriptors, the hard limit is %d: use smaller sizes" % (want, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

def get(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    d = b""
    while b"\r\n\r\nok\n" not in d:
        c = s.recv(4096)
        if not c:
            return None
        d += c
    return d

ctl = a.samples + "/batonctl"
failed = 0
for n in sizes:
    name = "idle-bench-%d" % time.time_ns()
    srv = subprocess.Popen([a.samples + "/baton-http", "--name", name, "--listen", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, text=True)
    port = int(re.search(r":(\d+)$", srv.stdout.readline().strip()).group(1))
    conns = []
    try:
        for _ in range(n):
            conns.append(socket.create_connection(("127.0.0.1", port)))
        assert all(get(s) for s in conns)
        for k in range(a.restarts):
            out = subprocess.run([ctl, "restart", name], capture_output=True, text=True, timeout=180)
            line = out.stdout.strip()
            m = re.search(r"(\d+) connections moved, hand-over ([0-9.]+) ms", line)
            nm = re.search(r"(\d+) connections were NOT moved", line)
            moved = int(m.group(1)) if m else 0
            ms = float(m.group(2)) if m else None
            print(json.dumps({"connections": n, "restart": k + 1, "exit": out.returncode, "moved": moved,
                              "not_moved": int(nm.group(1)) if nm else 0, "handover_ms": ms,
                              "us_per_connection": round(ms * 1000 / n, 2) if ms and n else None}),
                  flush=True)
            if out.returncode != 0:
                print("  batonctl: " + (line or out.stderr.strip()), flush=True)
        gens, bad = {}, 0
        for s in conns:
            d = get(s)
            if not d or b"200 OK" not in d:
                bad += 1
                continue
            g = int(re.search(rb"X-Baton-Generation: (\d+)", d).group(1))
            gens[g] = gens.get(g, 0) + 1
        print(json.dumps({"connections": n, "failed_after": bad, "generations": gens}), flush=True)
        failed += bad
    finally:
        for s in conns:
            s.close()
        st = subprocess.run([ctl, "status", name], capture_output=True, text=True).stdout
        m = re.search(r"^pid (\d+)", st, re.M)
        if m:
            subprocess.run(["kill", m.group(1)])
        srv.kill()
        srv.wait()
sys.exit(1 if failed else 0)
