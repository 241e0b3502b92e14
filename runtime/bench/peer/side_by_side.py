#!/usr/bin/env python3
"""Tessera and Restate side by side on one machine, under the same generator.

The workload is the inventory case's stock: `restock` once per key, then
`purchase {"qty": 1}` on random keys of KEYS (64 and 256 connections) and on
one hot key (64 connections), driven by `wrk -t1` with the same Lua script
(only the URL differs). Each system runs alone on the machine; what each
run costs in CPU (server processes and generator) is reported beside its
figures. Called by `restate.sh`, which installs and builds what it needs.

Durability, as each system ships:
- Tessera: `inventory serve` on its embedded journal, which fsyncs every
  group commit before any reply (the default, `journal.durability = sync`).
- Restate 1.7: `restate-server` with its defaults: the replicated loglet on
  the node's log-server, RocksDB WAL on and fsynced per write batch
  (`rocksdb-disable-wal = false`, `rocksdb-disable-wal-fsync = false`, from
  `restate-server --dump-config`, stored beside the results); the service
  runs in its own process behind Restate's ingress (HTTP/2 to the SDK).
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SCRIPT = r'''
local keys = tonumber(os.getenv("KEYS") or "10000")
local prefix = os.getenv("PREFIX")
wrk.method = "POST"
wrk.body = '{"qty":1}'
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, prefix .. math.random(0, keys - 1) .. "/purchase")
end
''' + open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "wrk", "report.lua")).read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    """User + system CPU seconds of a process (its threads, not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(rest[11]) + int(rest[12])) / ticks


def wait_http(url, secs=60, ok=(200,)):
    end = time.time() + secs
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {secs} s")


def post_all(host, port, paths, body, threads=8):
    """POSTs body to every path over `threads` keep-alive connections; returns failures."""
    failures = []
    chunks = [paths[i::threads] for i in range(threads)]

    def run(chunk):
        c = http.client.HTTPConnection(host, port, timeout=30)
        for p in chunk:
            c.request("POST", p, body=body, headers={"content-type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append((p, r.status))
        c.close()

    ts = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures


def load(port, prefix, keys, connections, secs, script, pids):
    """One wrk run; returns its figures and the CPU seconds of the servers and of wrk."""
    before = sum(cpu_secs(p) for p in pids)
    env = dict(os.environ, KEYS=str(keys), PREFIX=prefix)
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    wrk_cpu = 0.0
    while wrk.poll() is None:
        wrk_cpu = max(wrk_cpu, cpu_secs(wrk.pid))
        time.sleep(0.1)
    out = wrk.stdout.read()
    server = sum(cpu_secs(p) for p in pids) - before
    line = next((l for l in out.splitlines() if l.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    w = json.loads(line[len("WRK_JSON "):])
    run_secs = w["duration_us"] / 1e6
    w["requests_per_sec"] = round(w["requests"] / run_secs)
    cores = os.cpu_count() or 1
    return {
        "connections": connections, "keys": keys, "seconds": secs, "wrk": w,
        "cpu": {
            "server_secs": round(server, 1), "generator_secs": round(wrk_cpu, 1),
            "server_share_of_machine": round(server / (run_secs * cores), 3),
            "generator_share_of_machine": round(wrk_cpu / (run_secs * cores), 3),
            "server_cpu_us_per_request": round(server * 1e6 / max(w["requests"], 1), 1),
        },
    }


def runs(port, prefix, keys, secs, script, pids):
    out = {}
    for name, k, c in (("random_c64", keys, 64), ("random_c256", keys, 256), ("hot_c64", 1, 64)):
        out[name] = load(port, prefix, k, c, secs, script, pids)
        w = out[name]["wrk"]
        print(f"  {name}: {w['requests_per_sec']} req/s, p50 {w['p50_us']/1000:.1f} ms, p99 {w['p99_us']/1000:.1f} ms, "
              f"non-2xx {w['non_2xx']}", flush=True)
    return out


def stop(p):
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tessera(args, scratch, script):
    port = free_port()
    log = open(os.path.join(scratch, "tessera.log"), "w")
    node = subprocess.Popen([args.inventory, "serve", "--data-dir", os.path.join(scratch, "tessera"),
                             "--http", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", ok=(200,))
        paths = [f"/v1/entities/stock/s1:k{i}/restock" for i in range(args.keys)]
        bad = post_all("127.0.0.1", port, paths, json.dumps({"qty": args.restock}))
        if bad:
            raise SystemExit(f"tessera restock failed: {bad[:3]}")
        print("tessera: restocked", args.keys, "keys", flush=True)
        return runs(port, "/v1/entities/stock/s1:k", args.keys, args.secs, script, [node.pid])
    finally:
        stop(node)


def restate(args, scratch, script):
    base = os.path.join(scratch, "restate")
    ingress, admin, node_port = free_port(), free_port(), free_port()
    env = dict(os.environ,
               RESTATE_BASE_DIR=base,
               RESTATE_INGRESS__BIND_ADDRESS=f"127.0.0.1:{ingress}",
               RESTATE_ADMIN__BIND_ADDRESS=f"127.0.0.1:{admin}",
               RESTATE_BIND_ADDRESS=f"127.0.0.1:{node_port}",
               RESTATE_ADVERTISED_ADDRESS=f"http://127.0.0.1:{node_port}",
               RESTATE_LISTEN_MODE="tcp")
    dump = subprocess.run([args.restate_server, "--dump-config"], env=env, capture_output=True, text=True)
    with open(os.path.join(args.out, "restate-config.toml"), "w") as f:
        f.write(dump.stdout)
    svc_port = free_port()
    svc = subprocess.Popen([args.stock_service], env=dict(os.environ, STOCK_LISTEN=f"127.0.0.1:{svc_port}"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(os.path.join(scratch, "restate.log"), "w")
    server = subprocess.Popen([args.restate_server, "--no-logo"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{admin}/health")
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/deployments", method="POST",
                                     data=json.dumps({"uri": f"http://127.0.0.1:{svc_port}"}).encode(),
                                     headers={"content-type": "application/json"})
        end = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                break
            except Exception as e:
                if time.time() > end:
                    raise SystemExit(f"cannot register the stock service with Restate: {e}")
                time.sleep(0.5)
        wait_http(f"http://127.0.0.1:{ingress}/restate/health")
        # The ingress learns of the new deployment a moment after the admin
        # API registered it.
        end = time.time() + 60
        while post_all("127.0.0.1", ingress, ["/stock/s1:k0/restock"], json.dumps({"qty": args.restock}), threads=1):
            if time.time() > end:
                raise SystemExit("Restate's ingress does not know the stock service")
            time.sleep(0.5)
        paths = [f"/stock/s1:k{i}/restock" for i in range(1, args.keys)]
        bad = post_all("127.0.0.1", ingress, paths, json.dumps({"qty": args.restock}))
        if bad:
            raise SystemExit(f"restate restock failed: {bad[:3]}")
        print("restate: restocked", args.keys, "keys", flush=True)
        return runs(ingress, "/stock/s1:k", args.keys, args.secs, script, [server.pid, svc.pid])
    finally:
        stop(server)
        stop(svc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inventory", required=True, help="the inventory binary (release)")
    ap.add_argument("--restate-server", required=True)
    ap.add_argument("--stock-service", required=True, help="the Restate stock service binary")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--restock", type=int, default=1_000_000_000)
    ap.add_argument("--quick", action="store_true", help="3 s runs over 500 keys: checks that it all works")
    args = ap.parse_args()
    if args.quick:
        args.secs, args.keys = 3, 500
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="tessera-peer-")
    script = os.path.join(scratch, "purchase.lua")
    with open(script, "w") as f:
        f.write(SCRIPT)
    try:
        print("tessera …", flush=True)
        t = tessera(args, scratch, script)
        print("restate …", flush=True)
        r = restate(args, scratch, script)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    version = subprocess.run([args.restate_server, "--version"], capture_output=True, text=True).stdout.strip()
    rps = lambda v: v["wrk"]["requests_per_sec"]
    result = {
        "bench": "peer-restate",
        "description": "inventory stock: restock once per key, then purchase {qty:1} on random keys (64, 256 connections) "
                       "and on one hot key (64), wrk -t1, the same Lua script; each system alone on the machine",
        "machine": {"cpus": os.cpu_count(), "os": platform.system().lower(), "quick": args.quick},
        "durability": {
            "tessera": "embedded journal (fjall), fsync per group commit before any reply",
            "restate": "restate-server defaults: replicated loglet on the local log-server, RocksDB WAL fsynced per "
                       "write batch (rocksdb-disable-wal=false, rocksdb-disable-wal-fsync=false; restate-config.toml)",
        },
        "restate_version": version,
        "tessera": t,
        "restate": r,
        "ratio_tessera_to_restate": {k: round(rps(t[k]) / max(rps(r[k]), 1), 2) for k in t},
    }
    path = os.path.join(args.out, "peer-restate.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["ratio_tessera_to_restate"]), "->", path)


if __name__ == "__main__":
    sys.exit(main())
