#!/usr/bin/env python3
"""Hot restart with many idle keep-alive connections: opens N connections to a running
baton-http (one request each), runs `batonctl restart` K times, then checks that every connection
still answers, from the last generation.

    bench/peers/idle_restart.py [--connections 1000] [--restarts 3] [--samples build/linux/samples]
"""
import argparse, re, socket, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--connections", type=int, default=1000)
ap.add_argument("--restarts", type=int, default=3)
ap.add_argument("--samples", default="build/linux/samples")
a = ap.parse_args()

def get(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    d = b""
    while b"\r\n\r\nok\n" not in d:
        c = s.recv(4096)
        if not c:
            return None
        d += c
    return d

name = "idle-bench-%d" % time.time_ns()
srv = subprocess.Popen([a.samples + "/baton-http", "--name", name, "--listen", "127.0.0.1:0"],
                       stdout=subprocess.PIPE, text=True)
port = int(re.search(r":(\d+)$", srv.stdout.readline().strip()).group(1))
ctl = a.samples + "/batonctl"
try:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(a.connections)]
    assert all(get(s) for s in conns)
    print("%d idle keep-alive connections open" % len(conns))
    for _ in range(a.restarts):
        out = subprocess.run([ctl, "restart", name], capture_output=True, text=True, timeout=120)
        print(out.stdout.strip())
    gens, bad = {}, 0
    for s in conns:
        d = get(s)
        if not d or b"200 OK" not in d:
            bad += 1
            continue
        g = int(re.search(rb"X-Baton-Generation: (\d+)", d).group(1))
        gens[g] = gens.get(g, 0) + 1
    print("after the restarts: %d failed, answered by generation(s) %s" % (bad, gens))
    sys.exit(1 if bad else 0)
finally:
    st = subprocess.run([ctl, "status", name], capture_output=True, text=True).stdout
    m = re.search(r"^pid (\d+)", st, re.M)
    if m:
        subprocess.run(["kill", m.group(1)])
    srv.kill()
