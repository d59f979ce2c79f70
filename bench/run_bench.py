#!/usr/bin/python3
"""`make bench`: rekey's rotation throughput measured side by side with the reference anchors
(../shared/anchors) on one throwaway PostgreSQL, plus a scaling curve, a size curve and codec
micro-benchmarks. Prints a table and writes bench/results/latest.json. bench/README.md explains
every figure.

usage: bench/run_bench.py [BUILD_DIR]          (BUILD_DIR holds rekey and codec_bench)

Environment (all optional):
  BENCH_ROWS=1000000     fixture size of the side-by-side runs
  BENCH_RUNS=3           side-by-side runs; medians are reported
  BENCH_FULL=1           adds 3,000,000 rows to the size curve (about 10 more minutes)
  BENCH_SIZES="..."      size curve sizes (default "100000 1000000", plus 3000000 if BENCH_FULL)
  BENCH_ANCHORS="..."    anchors run in each run (default "A1 A2 A3 C2"; add B to include it)
  BENCH_WITH_B=1         shorthand for adding B to the anchors
  BENCH_PG_SETTINGS="..." postgres -c settings (default "shared_buffers=1GB max_wal_size=4GB")
  BENCH_JOB_ARGS="..."   extra `rekey job create` flags (default: --stages 100 when supported)
  BENCH_SKIP="..."       parts to skip, any of: anchors scaling sizes micro (for debugging)
  BENCH_OUT=PATH         where the JSON goes (default bench/results/latest.json)
  BENCH_ANCHORS_DIR=PATH the anchors (default: ../shared/anchors beside the repo)
"""
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(os.path.join(REPO, sys.argv[1] if len(sys.argv) > 1 else "build-release"))
REKEY = os.path.join(BUILD, "rekey")
CODEC_BENCH = os.path.join(BUILD, "codec_bench")
ANCHORS = os.path.abspath(os.environ.get("BENCH_ANCHORS_DIR",
                                         os.path.join(REPO, "..", "shared", "anchors")))
ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
FULL = os.environ.get("BENCH_FULL", "0") == "1"
SIZES = [int(s) for s in os.environ.get(
    "BENCH_SIZES", "100000 1000000" + (" 3000000" if FULL else "")).split()]
ANCHOR_NAMES = os.environ.get("BENCH_ANCHORS", "A1 A2 A3 C2").split()
if os.environ.get("BENCH_WITH_B") == "1" and "B" not in ANCHOR_NAMES:
    ANCHOR_NAMES.append("B")
PG_SETTINGS = os.environ.get("BENCH_PG_SETTINGS", "shared_buffers=1GB max_wal_size=4GB").split()
SKIP = set(os.environ.get("BENCH_SKIP", "").split())
OUT = os.path.abspath(os.environ.get("BENCH_OUT", os.path.join(REPO, "bench", "results",
                                                                "latest.json")))
BATCH_SIZE = 1000
FIXTURE_KEYS = {1: bytes(range(32)), 2: bytes(range(32, 64))}  # shared/anchors/README.md
# The rotation configurations: (worker processes, --concurrency of each).
MAIN_CONFIGS = [(2, 1), (1, 2)]
SCALING_PROCS = [1, 2, 4]

PG_DIR = None
WORK = tempfile.mkdtemp(prefix="rekey-bench.")
ENV = dict(os.environ)


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    """Runs cmd (a list) with the bench environment; returns stdout; raises with stderr on error."""
    p = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p.stdout


def psql(sql):
    return run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql]).strip()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- the server ----------------------------------------------------------------------------------

def start_server():
    global PG_DIR
    out = run([os.path.join(REPO, "scripts", "pg-throwaway.sh"), "start", *PG_SETTINGS])
    m = re.search(r"PG_DIR=(\S+);", out)
    PG_DIR = m.group(1)
    for k, v in re.findall(r"(PG[A-Z]+)=(\S+)", out):
        if k != "PG_DIR":
            ENV[k] = v
    ENV["DATABASE_URL"] = (f"host={ENV['PGHOST']} port={ENV['PGPORT']} user={ENV['PGUSER']} "
                           f"dbname={ENV['PGDATABASE']}")
    log(f"PostgreSQL in {PG_DIR}, port {ENV['PGPORT']}, settings {' '.join(PG_SETTINGS)}")


def stop_server(*_):
    global PG_DIR
    if PG_DIR:
        subprocess.run([os.path.join(REPO, "scripts", "pg-throwaway.sh"), "stop", PG_DIR],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PG_DIR = None
    subprocess.run(["rm", "-rf", WORK])


def on_signal(signum, _frame):
    stop_server()
    sys.exit(128 + signum)


def server_cpu_seconds():
    """CPU seconds used by the server so far: its live processes plus every exited backend (the
    postmaster reaps backends, so their CPU accumulates in its cutime/cstime). Waits (up to 5 s)
    until no client backend is left, so a backend whose client just exited is counted."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(os.path.join(PG_DIR, "data", "postmaster.pid")) as f:
        master = int(f.readline())

    def stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    def client_backends():
        n = 0
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and int(stat(pid)[1]) == master:
                    with open(f"/proc/{pid}/cmdline") as f:
                        cmd = f.read()
                    n += "[local]" in cmd or "127.0.0.1" in cmd
            except (OSError, IndexError):
                pass
        return n

    deadline = time.monotonic() + 5
    while client_backends() and time.monotonic() < deadline:
        time.sleep(0.02)

    total = 0
    s = stat(master)
    total += sum(int(x) for x in s[11:15])  # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == master:
            continue
        try:
            s = stat(pid)
            if int(s[1]) == master:  # ppid
                total += int(s[11]) + int(s[12])
        except (OSError, IndexError):
            pass
    return total / tick


# --- fixture, anchors ----------------------------------------------------------------------------

def build_fixture(rows):
    t = time.monotonic()
    run(["/usr/bin/python3", os.path.join(ANCHORS, "fixture.py"), str(rows)])
    log(f"fixture: {rows} rows in {time.monotonic() - t:.1f} s")


def reset_table():
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(ANCHORS, "reset.sql")])


def run_anchors(names):
    out = run([os.path.join(ANCHORS, "run.sh"), " ".join(names)])
    res = {}
    for m in re.finditer(r"anchor (\S+) rows_per_s=(\d+) seconds=([\d.]+)", out):
        res[m.group(1)] = {"rows_per_s": int(m.group(2)), "seconds": float(m.group(3))}
    log("anchors: " + ", ".join(f"{k} {v['rows_per_s']} rows/s" for k, v in res.items()))
    return res


# --- rekey ---------------------------------------------------------------------------------------

def setup_rekey():
    master = os.path.join(WORK, "master.key")
    with open(master, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(master, 0o600)
    ENV["REKEY_MASTER_KEY_FILE"] = master
    run([REKEY, "migrate"])
    for key_id, raw in FIXTURE_KEYS.items():
        path = os.path.join(WORK, f"key{key_id}.bin")
        with open(path, "wb") as f:
            f.write(raw)
        os.chmod(path, 0o600)
        run([REKEY, "keys", "import", "--key-id", str(key_id), "--file", path])
    extra = os.environ.get("BENCH_JOB_ARGS")
    if extra is None:
        # Staged rollouts (canary, gates) are not what is measured here: one stage, all rows.
        help_text = subprocess.run([REKEY, "job", "create", "--help"], env=ENV, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
        extra = "--stages 100" if "--stages" in help_text else ""
    return shlex.split(extra)


def last_json_line(path, key):
    last = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{") and f'"{key}"' in line:
                try:
                    last = json.loads(line)
                except ValueError:
                    pass
    return last


def rotate(procs, concurrency, job_args, label):
    """One rotation of the whole table from key 1 to key 2; returns its measurements."""
    reset_table()
    t = time.monotonic()
    run([REKEY, "job", "create", "--table", "public.payment_methods", "--column", "token",
         "--key-id-column", "key_id", "--map", "1:2", "--batch-size", str(BATCH_SIZE),
         "--name", label, *job_args])
    planning_s = time.monotonic() - t
    job = int(psql("SELECT max(job_id) FROM rekey.jobs"))
    workers = []
    cpu0 = server_cpu_seconds()
    t0 = time.monotonic()
    for i in range(procs):
        base = os.path.join(WORK, f"job{job}-w{i}")
        err = open(base + ".log", "w")
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S %e", "-o", base + ".time", REKEY,
                              "work", "--job", str(job), "--concurrency", str(concurrency)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        workers.append((p, base, err))
    codes = [p.wait() for p, _, _ in workers]
    wall_s = time.monotonic() - t0
    server_cpu = server_cpu_seconds() - cpu0
    per_worker = []
    for (p, base, err), code in zip(workers, codes):
        err.close()
        with open(base + ".time") as f:
            fields = f.read().split()[-4:]
        last = last_json_line(base + ".log", "kms_calls") or {}
        per_worker.append({"exit": code, "peak_rss_kib": int(fields[0]),
                           "user_s": float(fields[1]), "sys_s": float(fields[2]),
                           "kms_calls": last.get("kms_calls"), "batches": last.get("batches"),
                           "rows_reencrypted": last.get("rows_reencrypted")})
    if any(codes):
        tail = open(workers[codes.index(next(c for c in codes if c))][1] + ".log").read()[-1500:]
        raise RuntimeError(f"rekey work exited {codes}: {tail}")
    db = json.loads(psql(f"""
      SELECT json_build_object(
        'rows_done', (SELECT coalesce(sum(rows_done), 0) FROM rekey.batches WHERE job_id = {job}),
        'planned_rows', (SELECT coalesce(sum(planned_rows), 0) FROM rekey.batches WHERE job_id = {job}),
        'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = {job}),
        'batch_ms_sum', (SELECT sum(duration_ms) FROM rekey.batches WHERE job_id = {job}),
        'batch_ms_median', (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)
                              FROM rekey.batches WHERE job_id = {job}),
        'job_state', (SELECT state FROM rekey.jobs WHERE job_id = {job}),
        'job_db_seconds', (SELECT extract(epoch FROM finished_at - started_at) FROM rekey.jobs
                            WHERE job_id = {job}),
        'n_tup_upd', (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'public.payment_methods'::regclass),
        'n_tup_hot_upd', (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'public.payment_methods'::regclass))"""))
    t = time.monotonic()
    verify = json.loads(run([REKEY, "job", "verify", str(job), "--json"]))
    verify_s = time.monotonic() - t
    failures = verify.get("failures")
    n_failures = sum(failures.values()) if isinstance(failures, dict) else (
        len(failures) if isinstance(failures, list) else int(failures or 0))
    under_source = int(verify.get("values_under_source_keys", -1))
    rows = int(db["rows_done"])
    client_cpu = sum(w["user_s"] + w["sys_s"] for w in per_worker)
    res = {
        "label": label, "job": job, "processes": procs, "concurrency": concurrency,
        "rows": rows, "wall_s": round(wall_s, 3), "rows_per_s": round(rows / wall_s, 1),
        "us_per_row": round(wall_s / rows * 1e6, 3) if rows else None,
        "planning_s": round(planning_s, 3),
        "planning_pct_of_rotation": round(100 * planning_s / wall_s, 2),
        "client_cpu_s": round(client_cpu, 2), "server_cpu_s": round(server_cpu, 2),
        "workers": per_worker, "db": db,
        "verify": {"values_under_source_keys": under_source, "failures": n_failures,
                   "values_under_target_keys": verify.get("values_under_target_keys"),
                   "seconds": round(verify_s, 2),
                   "ok": under_source == 0 and n_failures == 0},
    }
    log(f"rekey {label}: {rows} rows in {wall_s:.2f} s = {rows / wall_s:.0f} rows/s, planning "
        f"{planning_s:.2f} s, client CPU {client_cpu:.1f} s, server CPU {server_cpu:.1f} s, "
        f"RSS {max(w['peak_rss_kib'] for w in per_worker) // 1024} MiB, verify "
        f"{'ok' if res['verify']['ok'] else 'FAILED'}")
    if not res["verify"]["ok"] or rows == 0:
        raise RuntimeError(f"rotation {label} did not verify: {res['verify']}, rows {rows}")
    return res


# --- micro-benchmarks ----------------------------------------------------------------------------

def micro():
    out = run([CODEC_BENCH, "--benchmark_format=json", "--benchmark_min_time=0.5",
               "--benchmark_repetitions=3", "--benchmark_report_aggregates_only=true"])
    results = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]
        ns = b["cpu_time"] if b["time_unit"] == "ns" else b["cpu_time"] * 1000
        results[name] = {"ns_per_op": round(ns, 1),
                         "mb_per_s": round(b.get("bytes_per_second", 0) / 1e6, 1)}
    sp = run(["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", "1", "-mr"],
             stdin=subprocess.DEVNULL)
    sizes = [16, 64, 256, 1024, 8192, 16384]
    for line in sp.splitlines():
        if line.startswith("+H:"):
            sizes = [int(x) for x in line.split(":")[1:]]
        if line.startswith("+F:"):
            parts = line.split(":")
            rates = [float(x) for x in parts[3:]]
    openssl = {str(s): {"mb_per_s": round(r / 1e6, 1), "ns_per_op": round(s / r * 1e9, 1)}
               for s, r in zip(sizes, rates)}
    version = run(["openssl", "version"]).strip()
    compare = {}
    for size in (64, 1024):
        o = openssl[str(size)]["ns_per_op"]
        for name in (f"BM_AesGcmSeal/{size}", f"BM_AesGcmOpen/{size}", f"BM_TinkSeal/{size}",
                     f"BM_TinkOpen/{size}"):
            if name in results:
                compare[name] = {"rekey_ns": results[name]["ns_per_op"], "openssl_speed_ns": o,
                                 "ratio": round(results[name]["ns_per_op"] / o, 2)}
    return {"codec_bench": results, "openssl_speed": openssl, "openssl_version": version,
            "rekey_vs_openssl_speed": compare}


# --- report --------------------------------------------------------------------------------------

def machine():
    lscpu = run(["lscpu"])
    model = re.search(r"Model name:\s*(.+)", lscpu)
    pg = psql("SHOW server_version")
    settings = {s: psql(f"SHOW {s}") for s in ("shared_buffers", "max_wal_size")}
    git = lambda *a: subprocess.run(["git", "-C", REPO, *a], text=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL).stdout.rstrip("\n")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu_model": model.group(1).strip() if model else None,
            "postgresql": pg, "pg_settings": settings,
            # What the binary was built from: the checkout, unless BENCH_SOURCE says otherwise
            # (e.g. a `git archive` of a commit built elsewhere).
            "source": os.environ.get("BENCH_SOURCE", "checkout"),
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty_files": [l[3:] for l in git("status", "--porcelain").splitlines()],
            "loadavg_at_start": load, "build_dir": BUILD}


def summarize(runs):
    anchors = sorted({a for r in runs for a in r.get("anchors", {})})
    med = {a: median([r["anchors"].get(a, {}).get("rows_per_s") for r in runs]) for a in anchors}
    configs = {}
    for procs, conc in MAIN_CONFIGS + [(p, 1) for p in SCALING_PROCS]:
        key = f"{procs}x{conc}"
        rs = [r["rekey"][key] for r in runs if key in r.get("rekey", {})]
        if not rs or key in configs:
            continue
        c = {"runs": len(rs), "rows_per_s": median([x["rows_per_s"] for x in rs]),
             "wall_s": median([x["wall_s"] for x in rs]),
             "planning_s": median([x["planning_s"] for x in rs]),
             "planning_pct_of_rotation": median([x["planning_pct_of_rotation"] for x in rs]),
             "client_cpu_s": median([x["client_cpu_s"] for x in rs]),
             "server_cpu_s": median([x["server_cpu_s"] for x in rs]),
             "peak_rss_kib_max": max(w["peak_rss_kib"] for x in rs for w in x["workers"]),
             "kms_calls_per_process_max": max((w["kms_calls"] or 0) for x in rs for w in x["workers"]),
             "verified": all(x["verify"]["ok"] for x in rs)}
        # Ratios side by side: per run, then the median over runs.
        for a in ("A1", "A2", "A3", "C2", "B"):
            ratios = [r["rekey"][key]["rows_per_s"] / r["anchors"][a]["rows_per_s"]
                      for r in runs if key in r.get("rekey", {}) and a in r.get("anchors", {})]
            if ratios:
                c[f"ratio_{a}"] = round(median(ratios), 3)
        configs[key] = c
    return {"anchors_rows_per_s": med, "rekey": configs}


def bars(summary):
    main = {k: summary["rekey"][k] for k in ("2x1", "1x2") if k in summary["rekey"]}
    out = []

    def bar(name, value, ok, target):
        out.append({"bar": name, "value": value, "target": target, "met": ok})

    for k, c in main.items():
        if "ratio_A2" in c:
            bar(f"rekey {k} / A2", c["ratio_A2"], c["ratio_A2"] >= 0.4, ">= 0.4 (aim 0.6)")
        if "ratio_C2" in c:
            bar(f"rekey {k} / C2", c["ratio_C2"], c["ratio_C2"] >= 5, ">= 5")
        bar(f"planning {k} % of rotation", c["planning_pct_of_rotation"],
            c["planning_pct_of_rotation"] <= 5, "<= 5 %")
    rss = max(c["peak_rss_kib_max"] for c in summary["rekey"].values()) / 1024
    bar("peak worker RSS MiB (all runs)", round(rss, 1), rss <= 64, "<= 64 MiB")
    kms = max(c["kms_calls_per_process_max"] for c in summary["rekey"].values())
    bar("KMS calls per key per process (2 keys)", kms / 2, kms / 2 <= 2, "<= 2")
    return out


def print_table(result):
    s = result["summary"]
    print()
    print(f"rekey bench: {ROWS} rows, {RUNS} run(s), medians; {result['machine']['cpu_model']}, "
          f"{result['machine']['nproc']} cores, PostgreSQL {result['machine']['postgresql']}")
    print(f"{'contender':<28}{'rows/s':>10}{'/A2':>8}{'/A3':>8}{'/C2':>8}")
    for a, v in s["anchors_rows_per_s"].items():
        print(f"{'anchor ' + a:<28}{v:>10.0f}")
    for k, c in s["rekey"].items():
        p, n = k.split("x")
        label = f"rekey {p} proc x conc {n}"
        fmt = lambda r: f"{c[r]:>8.2f}" if r in c else f"{'-':>8}"
        print(f"{label:<28}{c['rows_per_s']:>10.0f}{fmt('ratio_A2')}{fmt('ratio_A3')}{fmt('ratio_C2')}")
    if result.get("size_curve"):
        print("\nsize curve (rekey 2 proc x conc 1):")
        for p in result["size_curve"]:
            print(f"  {p['rows']:>9} rows  {p['wall_s']:8.2f} s  {p['rows_per_s']:>9.0f} rows/s  "
                  f"{p['us_per_row']:6.2f} us/row  (A2 {p.get('A2_rows_per_s') or '-'} rows/s)")
    if result.get("micro"):
        print("\ncodec vs openssl speed (ns per value, CPU):")
        for name, c in result["micro"]["rekey_vs_openssl_speed"].items():
            print(f"  {name:<22}{c['rekey_ns']:>9.0f} ns  openssl {c['openssl_speed_ns']:>7.0f} ns"
                  f"  x{c['ratio']}")
    print("\nissue-7 bars:")
    for b in result["bars"]:
        print(f"  {'MET ' if b['met'] else 'NOT '} {b['bar']}: {b['value']} (target {b['target']})")
    print(f"\nJSON: {OUT}")


def main():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for path in (REKEY, os.path.join(ANCHORS, "fixture.py")):
        if not os.path.exists(path):
            sys.exit(f"run_bench: {path} is missing (build first; anchors expected in {ANCHORS})")
    ENV["PYTHONUNBUFFERED"] = "1"
    start_server()
    result = {"settings": {"rows": ROWS, "runs": RUNS, "full": FULL, "sizes": SIZES,
                           "anchors": ANCHOR_NAMES, "batch_size": BATCH_SIZE,
                           "pg_settings": PG_SETTINGS}}
    result["machine"] = machine()
    job_args = setup_rekey()
    result["settings"]["job_create_extra_args"] = job_args
    build_fixture(ROWS)
    runs = []
    for i in range(RUNS):
        log(f"run {i + 1}/{RUNS}")
        r = {"anchors": {} if "anchors" in SKIP else run_anchors(ANCHOR_NAMES), "rekey": {}}
        configs = list(MAIN_CONFIGS)
        if "scaling" not in SKIP:
            configs += [(p, 1) for p in SCALING_PROCS if (p, 1) not in configs]
        for procs, conc in configs:
            r["rekey"][f"{procs}x{conc}"] = rotate(procs, conc, job_args,
                                                   f"bench-run{i + 1}-{procs}x{conc}")
        runs.append(r)
    result["runs"] = runs
    result["summary"] = summarize(runs)
    result["scaling"] = [{"processes": p, "concurrency": 1,
                          "rows_per_s": result["summary"]["rekey"][f"{p}x1"]["rows_per_s"]}
                         for p in SCALING_PROCS if f"{p}x1" in result["summary"]["rekey"]]
    curve = []
    if "sizes" not in SKIP:
        for size in SIZES:
            if size == ROWS:
                c = result["summary"]["rekey"]["2x1"]
                point = {"rows": size, "wall_s": c["wall_s"], "rows_per_s": c["rows_per_s"],
                         "us_per_row": round(c["wall_s"] / size * 1e6, 3),
                         "A2_rows_per_s": result["summary"]["anchors_rows_per_s"].get("A2"),
                         "source": "median of the side-by-side runs"}
            else:
                build_fixture(size)
                a2 = run_anchors(["A2"]).get("A2", {}).get("rows_per_s")
                x = rotate(2, 1, job_args, f"bench-size-{size}")
                point = {"rows": size, "wall_s": x["wall_s"], "rows_per_s": x["rows_per_s"],
                         "us_per_row": x["us_per_row"], "A2_rows_per_s": a2,
                         "planning_s": x["planning_s"],
                         "peak_rss_kib_max": max(w["peak_rss_kib"] for w in x["workers"]),
                         "source": "one run"}
            curve.append(point)
        curve.sort(key=lambda p: p["rows"])
    result["size_curve"] = curve
    if "micro" not in SKIP and os.path.exists(CODEC_BENCH):
        log("codec micro-benchmarks and openssl speed")
        result["micro"] = micro()
    result["bars"] = bars(result["summary"])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(result, f, indent=2, sort_keys=False)
        f.write("\n")
    print_table(result)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_server()
