#!/usr/bin/python3
"""`make bench`: rekey's rotation throughput measured side by side with the reference anchors
(../shared/anchors) on one throwaway PostgreSQL, plus a scaling curve, a size curve and codec
micro-benchmarks. Prints a table and writes bench/results/latest.json. bench/README.md explains
every figure.

usage: bench/run_bench.py [BUILD_DIR]          (BUILD_DIR holds rekey and codec_bench)

Environment (all optional):
  BENCH_ROWS=1000000     fixture size of the side-by-side runs
  BENCH_RUNS=3           side-by-side runs; medians are reported
  BENCH_FULL=1           adds 3,000,000 rows to the size curve (about 10 more minutes) and the
                         ten-million-row part (bench/full.py; BENCH_FULL_SIZES="1000000 10000000")
  BENCH_SIZES="..."      size curve sizes (default "100000 1000000", plus 3000000 if BENCH_FULL)
  BENCH_SIZE_RUNS=3      rotations per size of the curve other than BENCH_ROWS (median reported;
                         default BENCH_RUNS)
  BENCH_ANCHORS="..."    anchors run in each run (default "A1 A2 A3 C2"; add B to include it)
  BENCH_WITH_B=1         shorthand for adding B to the anchors
  BENCH_PG_SETTINGS="..." postgres -c settings (default "shared_buffers=1GB max_wal_size=4GB")
  BENCH_JOB_ARGS="..."   extra `rekey job create` flags (default: --stages 100 when supported)
  BENCH_BATCH_SIZE=1000  batch size (`rekey job create --batch-size`) of every rotation
  BENCH_CONFIGS="2x1 1x2" the main rotation configurations: PROCESSESxCONCURRENCY each
  BENCH_WORK_ARGS="..."  extra `rekey work` flags for every rotation (e.g. "--target-batch-ms 200")
  BENCH_SWEEP_BATCH_SIZES="500 1000 2000 5000"  with BENCH_SWEEP_CONFIGS: a sweep, one rotation
  BENCH_SWEEP_CONFIGS="1x1 2x1 1x2 2x2 4x1"     per combination, reporting the best (off unless set)
  BENCH_STAGES="1,25,50,75,100"  the staged job timed against the single-stage one (auto-advance,
                         --observe 0s)
  BENCH_APP_SECONDS=60   seconds of application workload with rekey, and as many without
                         (gentleness; interleaved in phases of BENCH_GENTLE_PHASE_SECONDS=10;
                         BENCH_GENTLE_RUNS=3 such runs, the median ratio reported)
  BENCH_APP_TPS=400      the application's offered load (pgbench --rate), transactions/s
  BENCH_APP_CLIENTS=4    pgbench clients
  BENCH_GENTLE_ARGS="--max-rows-per-second 5000"  the `rekey work` flags of the gentle run
  BENCH_SKIP="..."       parts to skip, any of: main anchors scaling staged gentle sizes codecs
                         micro partitioned full walcap lockwait (main: the side-by-side
                         rotations of the anchors' table; partitioned: the same table in 8 range
                         partitions, beside it; walcap, lockwait: bench/gentleness.py)
  BENCH_CODECS="tink raw fernet rails lockbox cloak"  the codecs part: one rotation per codec of
  BENCH_CODEC_ROWS=100000  its own table (1000000 with BENCH_FULL), BENCH_CODEC_RUNS=3 runs,
  BENCH_CODEC_RUNS=3       rows/s as a ratio to tink's of the same run (median); add aws-kms for
                         one KMS ReEncrypt per value against tests/kms/aws_kms_server.py
                         (bench/aws_kms_bench.py; BENCH_AWS_KMS_CALLS_PER_SECOND=1000000 is
                         rekey's REKEY_KMS_CALLS_PER_SECOND there)
  BENCH_OUT=PATH         where the JSON goes (default bench/results/latest.json)
  BENCH_ANCHORS_DIR=PATH the anchors (default: ../shared/anchors beside the repo)
"""
import datetime
import hashlib
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aws_kms_bench  # noqa: E402 (bench/aws_kms_bench.py: the aws-kms codec's KMS)
import codec_fixture  # noqa: E402 (bench/codec_fixture.py)
import full  # noqa: E402 (bench/full.py: the ten-million-row part)
import gentleness  # noqa: E402 (bench/gentleness.py: the WAL-rate cap, the lock-wait brake)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(os.path.join(REPO, sys.argv[1] if len(sys.argv) > 1 else "build-release"))
REKEY = os.path.join(BUILD, "rekey")
CODEC_BENCH = os.path.join(BUILD, "codec_bench")
ANCHORS = os.path.abspath(os.environ.get("BENCH_ANCHORS_DIR",
                                         os.path.join(REPO, "..", "shared", "anchors")))
ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SIZE_RUNS = int(os.environ.get("BENCH_SIZE_RUNS", str(RUNS)))
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
BATCH_SIZE = int(os.environ.get("BENCH_BATCH_SIZE", "1000"))
FIXTURE_KEYS = {1: bytes(range(32)), 2: bytes(range(32, 64))}  # shared/anchors/README.md
# The rotation configurations: (worker processes, --concurrency of each).
def parse_configs(text):
    out = []
    for c in text.split():
        p, n = c.lower().split("x")
        out.append((int(p), int(n)))
    return out


MAIN_CONFIGS = parse_configs(os.environ.get("BENCH_CONFIGS", "2x1 1x2"))
SCALING_PROCS = [1, 2, 4]
WORK_ARGS = shlex.split(os.environ.get("BENCH_WORK_ARGS", ""))
SWEEP_BATCH_SIZES = [int(x) for x in os.environ.get("BENCH_SWEEP_BATCH_SIZES", "").split()]
SWEEP_CONFIGS = parse_configs(os.environ.get("BENCH_SWEEP_CONFIGS", ""))
STAGES = os.environ.get("BENCH_STAGES", "1,25,50,75,100")
APP_SECONDS = int(os.environ.get("BENCH_APP_SECONDS", "60"))
GENTLE_PHASE_SECONDS = float(os.environ.get("BENCH_GENTLE_PHASE_SECONDS", "10"))
GENTLE_RUNS = int(os.environ.get("BENCH_GENTLE_RUNS", "3"))
APP_TPS = int(os.environ.get("BENCH_APP_TPS", "400"))
APP_CLIENTS = int(os.environ.get("BENCH_APP_CLIENTS", "4"))
GENTLE_ARGS = shlex.split(os.environ.get("BENCH_GENTLE_ARGS", "--max-rows-per-second 5000"))
PGBENCH = next((p for p in ("/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench")
                if os.path.exists(p)), "pgbench")

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
    if AWS_KMS:
        AWS_KMS.stop()  # the codecs part's KMS test server, if a failure left it running
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
        # An exited backend the postmaster has not reaped yet (a zombie: state Z, no cmdline)
        # counts too: reaped between the postmaster's stat and the walk below, its CPU would be in
        # neither, and a 2-worker rotation's server CPU came out halved in about a third of runs.
        n = 0
        for pid in os.listdir("/proc"):
            try:
                s = stat(pid) if pid.isdigit() else None
                if s and int(s[1]) == master:
                    with open(f"/proc/{pid}/cmdline") as f:
                        cmd = f.read()
                    n += s[0] == "Z" or "[local]" in cmd or "127.0.0.1" in cmd
            except (OSError, IndexError):
                pass
        return n

    deadline = time.monotonic() + 5
    while client_backends() and time.monotonic() < deadline:
        time.sleep(0.02)

    def total():
        ticks = sum(int(x) for x in stat(master)[11:15])  # utime stime cutime cstime
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == master:
                continue
            try:
                s = stat(pid)
                if int(s[1]) == master:  # ppid
                    ticks += int(s[11]) + int(s[12])
            except (OSError, IndexError):
                pass
        return ticks

    # A backend reaped between the postmaster's stat and the walk is in neither sum: read until
    # two sums 50 ms apart agree (the server is idle by now, so they differ only by such a race).
    last = total()
    for _ in range(20):
        time.sleep(0.05)
        now = total()
        if abs(now - last) <= 1:
            return now / tick
        last = now
    return last / tick


# --- fixture, anchors ----------------------------------------------------------------------------

FIXTURE_ROWS = None


def build_fixture(rows):
    global FIXTURE_ROWS
    if FIXTURE_ROWS == rows:
        return
    FIXTURE_ROWS = rows
    t = time.monotonic()
    run(["/usr/bin/python3", os.path.join(ANCHORS, "fixture.py"), str(rows)])
    log(f"fixture: {rows} rows in {time.monotonic() - t:.1f} s")


def reset_table():
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(ANCHORS, "reset.sql")])


def transactions():
    """Transactions the server ended in the bench's database so far (pg_stat_database, which
    every backend updates at the latest when it exits; the rotation's workers have exited when
    it is read after them). Across a rotation, less the few of the psql calls around it: the
    control plane's transactions per batch."""
    return int(psql("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                    "WHERE datname = current_database()"))


def wal_lsn():
    return psql("SELECT pg_current_wal_lsn()")


def wal_bytes_since(lsn):
    return int(psql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')"))


def run_a2():
    """A2 as ../shared/anchors/run.sh runs it (anchor_rewrite in two sessions, one per half of the
    ids), timed the same way, plus the server CPU and the WAL of the rewrite alone: the table is
    reset and checkpointed first, as before each of rekey's rotations (rotate), so both start
    with the same full-page-image debt."""
    reset_table()
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(ANCHORS, "anchor_a.sql")])
    n = int(psql("SELECT count(*) FROM payment_methods_seed"))
    top = int(psql("SELECT max(id) FROM payment_methods_seed")) + 1
    mid = top // 2
    psql("CHECKPOINT")
    cpu0 = server_cpu_seconds()
    lsn = wal_lsn()
    t = time.monotonic()
    sessions = [subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                                  f"CALL anchor_rewrite(1000, {lo}, {hi})"],
                                 env=ENV, stdout=subprocess.DEVNULL)
                for lo, hi in ((1, mid), (mid, top))]
    if any(p.wait() for p in sessions):
        raise RuntimeError("anchor A2 failed")
    seconds = time.monotonic() - t
    server_cpu = server_cpu_seconds() - cpu0
    wal = wal_bytes_since(lsn)
    return {"rows_per_s": int(n / seconds), "seconds": round(seconds, 3),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_us_per_row": round(server_cpu / n * 1e6, 3),
            "wal_bytes": wal, "wal_bytes_per_row": round(wal / n, 1)}


def run_anchors(names):
    """rows/s of each anchor in `names`; A2 also with its server CPU and WAL per row (run_a2)."""
    others = [a for a in names if a != "A2"]
    res = {}
    if others:
        out = run([os.path.join(ANCHORS, "run.sh"), " ".join(others)])
        for m in re.finditer(r"anchor (\S+) rows_per_s=(\d+) seconds=([\d.]+)", out):
            res[m.group(1)] = {"rows_per_s": int(m.group(2)), "seconds": float(m.group(3))}
    if "A2" in names:
        res["A2"] = run_a2()
    log("anchors: " + ", ".join(f"{k} {v['rows_per_s']} rows/s" for k, v in res.items()) +
        ("; A2 server CPU {server_cpu_us_per_row} us/row, WAL {wal_bytes_per_row} B/row".format(
            **res["A2"]) if "A2" in res else ""))
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
        # The anchors' table has two plain-text columns beside token; key_id does not govern
        # them, and job create refuses to guess (docs/safety.md, invariant 2).
        if "--not-governed" in help_text:
            extra += " --not-governed brand,last4"
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


ANCHOR_TARGET = ["--table", "public.payment_methods", "--column", "token", "--key-id-column",
                 "key_id", "--map", "1:2"]


def rotate(procs, concurrency, job_args, label, batch_size=None, work_args=None,
           target=ANCHOR_TARGET, reset=None):
    """One rotation of the whole table from key 1 to key 2; returns its measurements. target: the
    `job create` flags naming the table, column, codec and key map (default: the anchors' table);
    reset: restores that table from its seed (default: the anchors' reset.sql)."""
    batch_size = batch_size or BATCH_SIZE
    work_args = WORK_ARGS if work_args is None else work_args
    (reset or reset_table)()
    table = target[target.index("--table") + 1]
    t = time.monotonic()
    run([REKEY, "job", "create", *target, "--batch-size", str(batch_size), "--name", label,
         *job_args])
    planning_s = time.monotonic() - t
    job = int(psql("SELECT max(job_id) FROM rekey.jobs"))
    workers = []
    # The same start as A2's (run_a2): no full-page-image debt from the reset's rewrite.
    psql("CHECKPOINT")
    cpu0 = server_cpu_seconds()
    xacts0 = transactions()
    lsn = wal_lsn()
    t0 = time.monotonic()
    for i in range(procs):
        base = os.path.join(WORK, f"job{job}-w{i}")
        err = open(base + ".log", "w")
        p = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S %e", "-o", base + ".time", REKEY,
                              "work", "--job", str(job), "--concurrency", str(concurrency),
                              *work_args],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        workers.append((p, base, err))
    codes = [p.wait() for p, _, _ in workers]
    wall_s = time.monotonic() - t0
    server_cpu = server_cpu_seconds() - cpu0
    xacts = transactions() - xacts0
    wal = wal_bytes_since(lsn)
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
        'n_tup_upd', (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = '{table}'::regclass),
        'n_tup_hot_upd', (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = '{table}'::regclass))"""))
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
        "batch_size": batch_size, "work_args": work_args,
        "rows": rows, "wall_s": round(wall_s, 3), "rows_per_s": round(rows / wall_s, 1),
        "us_per_row": round(wall_s / rows * 1e6, 3) if rows else None,
        "planning_s": round(planning_s, 3),
        "planning_pct_of_rotation": round(100 * planning_s / wall_s, 2),
        "client_cpu_s": round(client_cpu, 2), "server_cpu_s": round(server_cpu, 2),
        "server_cpu_us_per_row": round(server_cpu / rows * 1e6, 3) if rows else None,
        "wal_bytes": wal, "wal_bytes_per_row": round(wal / rows, 1) if rows else None,
        "transactions": xacts,
        "transactions_per_batch": round(xacts / int(db["batches"]), 2) if db["batches"] else None,
        "workers": per_worker, "db": db,
        "verify": {"values_under_source_keys": under_source, "failures": n_failures,
                   "values_under_target_keys": verify.get("values_under_target_keys"),
                   "seconds": round(verify_s, 2),
                   "ok": under_source == 0 and n_failures == 0},
    }
    log(f"rekey {label}: {rows} rows in {wall_s:.2f} s = {rows / wall_s:.0f} rows/s, planning "
        f"{planning_s:.2f} s, client CPU {client_cpu:.1f} s, server CPU {server_cpu:.1f} s, "
        f"WAL {wal / max(rows, 1):.0f} B/row, "
        f"RSS {max(w['peak_rss_kib'] for w in per_worker) // 1024} MiB, verify "
        f"{'ok' if res['verify']['ok'] else 'FAILED'}")
    if not res["verify"]["ok"] or rows == 0:
        raise RuntimeError(f"rotation {label} did not verify: {res['verify']}, rows {rows}")
    return res


# --- staged rollout ------------------------------------------------------------------------------

def rotate_staged(label):
    """The staged job of issue 7: stages BENCH_STAGES, every gate, automatic advance with no
    observation wait (--observe 0s), the sweep; 2 processes x 1 (the single-stage main config)."""
    return rotate(2, 1, ["--stages", STAGES, "--observe", "0s"], label)


# --- gentleness: an application workload beside rekey -------------------------------------------

PGBENCH_READ = """\\set id random(1, :rows)
SELECT id, key_id, token, brand, last4 FROM payment_methods WHERE id = :id;
"""
PGBENCH_UPDATE = """\\set id random(1, :rows)
UPDATE payment_methods SET last4 = last4, created_at = created_at WHERE id = :id;
"""


def percentile(sorted_xs, q):
    if not sorted_xs:
        return None
    k = (len(sorted_xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def latency_stats(xs):
    xs = sorted(xs)
    return {"p50_ms": round(percentile(xs, 0.5), 3) if xs else None,
            "p99_ms": round(percentile(xs, 0.99), 3) if xs else None, "n": len(xs)}


def gentle(rows, label, job_args):
    """The application's latency with and without a gentle rekey beside it (issue 7 item 5).

    One pgbench run (a fixed offered rate, --rate, so the load is the same throughout; latency
    counts from each transaction's scheduled start, what a client feels) lasts 2 x APP_SECONDS,
    and rekey runs during every other phase of GENTLE_PHASE_SECONDS: started at the phase's
    start, stopped with SIGTERM at its end (the next one resumes the job). Transactions are
    classed by the phase they were scheduled in. Interleaving puts both conditions under the
    same background load: two consecutive 60-s windows on this shared machine differ by up to
    x1.7 in p99 with nothing of rekey running (bench/README.md)."""
    reset_table()
    run([REKEY, "job", "create", "--table", "public.payment_methods", "--column", "token",
         "--key-id-column", "key_id", "--map", "1:2", "--batch-size", str(BATCH_SIZE),
         "--name", label, *job_args])  # setup_rekey's: one stage, the plain columns named
    job = int(psql("SELECT max(job_id) FROM rekey.jobs"))
    d = os.path.join(WORK, f"pgbench-{label}")
    os.makedirs(d, exist_ok=True)
    for name, text in (("read.sql", PGBENCH_READ), ("update.sql", PGBENCH_UPDATE)):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    total = 2 * APP_SECONDS
    app = subprocess.Popen(
        [PGBENCH, "-n", "-c", str(APP_CLIENTS), "-j", "2", "-T", str(total), "-R", str(APP_TPS),
         "-D", f"rows={rows}", "-f", os.path.join(d, "read.sql") + "@8",
         "-f", os.path.join(d, "update.sql") + "@2", "--log", "--log-prefix=" + os.path.join(d, "txn")],
        env=ENV, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    phases = []  # (start, end, rekey on?)
    codes = []
    done = 0
    on = False
    t = start
    while t < start + total:
        end = min(t + GENTLE_PHASE_SECONDS, start + total)
        worker = None
        if on:
            err_path = os.path.join(WORK, f"{label}-worker-{len(phases)}.log")
            err = open(err_path, "w")
            worker = subprocess.Popen([REKEY, "work", "--job", str(job), *GENTLE_ARGS], env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=err)
        time.sleep(max(0.0, end - time.time()))
        if worker:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            codes.append(worker.wait())
            err.close()
            last = last_json_line(err_path, "rows_reencrypted") or {}
            done += int(last.get("rows_reencrypted") or 0)
        phases.append((t, time.time(), on))
        t = time.time()
        on = not on
    out, _ = app.communicate()
    # The rotation is cut short by design; a column has one unfinished job at a time, so the next
    # gentle run could not create its own while this one stays active.
    if psql(f"SELECT state FROM rekey.jobs WHERE job_id = {job}") not in ("completed", "cancelled"):
        run([REKEY, "job", "cancel", str(job)])
    lat = {True: [], False: []}
    lat_by_script = {(True, 0): [], (True, 1): [], (False, 0): [], (False, 1): []}
    timeline = []  # (rekey on?, seconds into the phase, latency ms)
    for name in os.listdir(d):
        if not name.startswith("txn."):
            continue
        with open(os.path.join(d, name)) as f:
            for line in f:
                parts = line.split()
                # client_id transaction_no time_us script_no epoch epoch_us [schedule_lag]
                if len(parts) < 6 or not parts[2].isdigit():
                    continue
                latency_us = int(parts[2])
                scheduled = int(parts[4]) + int(parts[5]) / 1e6 - latency_us / 1e6
                phase = next((p for p in phases if p[0] <= scheduled < p[1]), None)
                if phase is None:
                    continue
                timeline.append((phase[2], scheduled - phase[0], latency_us / 1000.0))
                # Steady state only: the first second after each switch (a worker starting,
                # connecting, unwrapping its keys) and what follows the phase's nominal end (a
                # worker stopping) are left out, in both conditions alike; a rotation pays them
                # once, the interleaving every GENTLE_PHASE_SECONDS.
                if not (phase[0] + 1.0 <= scheduled < phase[0] + GENTLE_PHASE_SECONDS):
                    continue
                lat[phase[2]].append(latency_us / 1000.0)
                lat_by_script[(phase[2], int(parts[3]))].append(latency_us / 1000.0)
    without, with_rekey = lat[False], lat[True]
    on_seconds = sum(p[1] - p[0] for p in phases if p[2])
    tps = re.search(r"tps = ([\d.]+)", out)
    res = {"gentle_args": GENTLE_ARGS, "app_seconds": APP_SECONDS,
           "phase_seconds": GENTLE_PHASE_SECONDS, "app_tps_offered": APP_TPS,
           "app_clients": APP_CLIENTS, "app_tps": float(tps.group(1)) if tps else None,
           "without_rekey": {"all": latency_stats(without),
                             "reads": latency_stats(lat_by_script[(False, 0)]),
                             "updates": latency_stats(lat_by_script[(False, 1)])},
           "with_rekey": {"all": latency_stats(with_rekey),
                          "reads": latency_stats(lat_by_script[(True, 0)]),
                          "updates": latency_stats(lat_by_script[(True, 1)])},
           "rekey_exits": codes, "rekey_rows": done, "rekey_seconds": round(on_seconds, 2),
           "rekey_rows_per_s": round(done / on_seconds, 1) if on_seconds else None}
    for k in ("p50_ms", "p99_ms"):
        a, b = res["without_rekey"]["all"][k], res["with_rekey"]["all"][k]
        res[k.replace("_ms", "_ratio")] = round(b / a, 3) if a and b else None
    # Where the slow transactions fall: per second into the phase, the share of transactions
    # slower than the p99 without rekey (1% everywhere if rekey made no difference).
    p99 = res["without_rekey"]["all"]["p99_ms"]
    if p99:
        for cond, key in ((True, "slow_share_by_second_with"), (False, "slow_share_by_second_without")):
            buckets = {}
            for on_, at, ms in timeline:
                if on_ == cond:
                    counts = buckets.setdefault(int(at), [0, 0])  # [transactions, slow]
                    counts[0] += 1
                    counts[1] += ms > p99
            res[key] = [round(buckets[k][1] / buckets[k][0], 4) for k in sorted(buckets)]
    log(f"app without rekey: p50 {res['without_rekey']['all']['p50_ms']} ms, p99 "
        f"{res['without_rekey']['all']['p99_ms']} ms; with rekey ({' '.join(GENTLE_ARGS)}, "
        f"{res['rekey_rows_per_s']} rows/s): p50 {res['with_rekey']['all']['p50_ms']} ms, p99 "
        f"{res['with_rekey']['all']['p99_ms']} ms, p99 ratio {res['p99_ratio']}")
    if any(c != 0 for c in codes) or app.returncode != 0:
        raise RuntimeError(f"gentle: rekey work exited {codes}, pgbench {app.returncode}")
    return res


# --- sweep ---------------------------------------------------------------------------------------

def sweep(job_args):
    """One rotation per (batch size, PROCESSESxCONCURRENCY), with an A2 run for the ratio."""
    if not SWEEP_BATCH_SIZES and not SWEEP_CONFIGS:
        return None
    sizes = SWEEP_BATCH_SIZES or [BATCH_SIZE]
    configs = SWEEP_CONFIGS or MAIN_CONFIGS
    a2 = None if "anchors" in SKIP else run_anchors(["A2"]).get("A2", {}).get("rows_per_s")
    points = []
    for size in sizes:
        for procs, conc in configs:
            x = rotate(procs, conc, job_args, f"bench-sweep-b{size}-{procs}x{conc}", batch_size=size)
            points.append({"batch_size": size, "processes": procs, "concurrency": conc,
                           "rows_per_s": x["rows_per_s"], "client_cpu_s": x["client_cpu_s"],
                           "server_cpu_s": x["server_cpu_s"],
                           "peak_rss_kib_max": max(w["peak_rss_kib"] for w in x["workers"]),
                           "ratio_A2": round(x["rows_per_s"] / a2, 3) if a2 else None})
    best = max(points, key=lambda p: p["rows_per_s"])
    return {"A2_rows_per_s": a2, "points": points, "best": best}


# --- partitioned fixture -------------------------------------------------------------------------

PARTITIONS = 8


def partitioned(job_args, plain):
    """The anchors' table copied into a parent partitioned by RANGE (id) into PARTITIONS equal
    leaves, rotated with the main 2x1 configuration (planned per leaf, each batch's statements
    on its leaf: docs/operations.md "Table shapes"); rows/s beside `plain`, the plain table's run
    of the same configuration, and their ratio."""
    table = "payment_methods_partitioned"
    n = int(psql("SELECT count(*) FROM payment_methods_seed"))
    width = -(-n // PARTITIONS)
    leaves = "".join(f"CREATE TABLE {table}_{i} PARTITION OF {table} FOR VALUES FROM "
                     f"({i * width + 1}) TO ({(i + 1) * width + 1});\n" for i in range(PARTITIONS))
    sql = (f"DROP TABLE IF EXISTS {table};\n"
           f"CREATE TABLE {table} (LIKE payment_methods_seed INCLUDING DEFAULTS INCLUDING "
           f"CONSTRAINTS, PRIMARY KEY (id)) PARTITION BY RANGE (id);\n{leaves}"
           f"INSERT INTO {table} SELECT * FROM payment_methods_seed;\n"
           f"VACUUM ANALYZE {table};\nCHECKPOINT;\n")
    reset = lambda: run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=sql)
    target = ["--table", f"public.{table}"] + ANCHOR_TARGET[2:]
    x = rotate(2, 1, job_args, "bench-partitioned-2x1", target=target, reset=reset)
    ratio = round(x["rows_per_s"] / plain["rows_per_s"], 3) if plain else None
    log(f"partitioned ({PARTITIONS} leaves): {x['rows_per_s']:.0f} rows/s, plain "
        f"{plain['rows_per_s'] if plain else '-'} rows/s, ratio {ratio}")
    return {"partitions": PARTITIONS, "rows": x["rows"], "rows_per_s": x["rows_per_s"],
            "plain_rows_per_s": plain["rows_per_s"] if plain else None,
            "ratio_to_plain": ratio,
            "run": x}


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


# --- codecs: the same rotation under each codec (issue 18) ---------------------------------------

CODEC_NAMES = os.environ.get("BENCH_CODECS", "tink raw fernet rails lockbox cloak").split()
CODEC_ROWS = int(os.environ.get("BENCH_CODEC_ROWS", "1000000" if FULL else "100000"))
CODEC_RUNS = int(os.environ.get("BENCH_CODEC_RUNS", "3"))
CODEC_CONFIG = MAIN_CONFIGS[0]  # the same worker configuration for every codec


def codec_key_ids(name):
    """The codec's key 1 and key 2 in rekey's keyring: Tink's are the fixture's 1 and 2 (its values
    name key 1 in their prefix); every other codec has its own pair, imported in its own form into
    its own scope."""
    if name == "tink":
        return 1, 2
    base = 10 * (1 + sorted(codec_fixture.CODECS).index(name))
    return base + 1, base + 2


def codec_key(name, index):
    if name == "tink":
        return FIXTURE_KEYS[index]
    return hashlib.sha256(f"rekey-bench-{name}-key-{index}".encode()).digest()


def codec_table(name):
    return f"bench_codec_{name.replace('-', '_')}"


def build_codec_fixture(name, rows):
    """The codec's seed table of `rows` values under its key 1, and its two keys imported."""
    codec = codec_fixture.CODECS[name]
    table = codec_table(name)
    for index, key_id in zip((1, 2), codec_key_ids(name)):
        if name == "tink":
            continue  # keys 1 and 2 are imported by setup_rekey
        text, fmt = codec.key_file(codec_key(name, index), index)
        path = os.path.join(WORK, f"{name}-key{index}")
        with open(path, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        # A scope per codec: a completed job promotes its target key to its scope's primary and
        # makes the previous primary decrypt_only, which must not be another codec's target.
        run([REKEY, "keys", "import", "--key-id", str(key_id), *(["--format", fmt] if fmt else []),
             "--scope", f"bench-{name}", "--file", path])
    key_id_column = "key_id int NOT NULL, " if codec.key_id_column else ""
    psql(f"DROP TABLE IF EXISTS {table}_seed; CREATE TABLE {table}_seed (id bigint PRIMARY KEY, "
         f"{key_id_column}secret {codec.column_type} NOT NULL)")
    t = time.monotonic()
    copy = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                             f"COPY {table}_seed FROM STDIN"],
                            env=ENV, stdin=subprocess.PIPE, text=True)
    for chunk in codec_fixture.copy_rows(codec, codec_key(name, 1), codec_key_ids(name)[0], table,
                                         "secret", rows):
        copy.stdin.write(chunk)
    copy.stdin.close()
    if copy.wait() != 0:
        raise RuntimeError(f"COPY into {table}_seed failed")
    log(f"codec fixture {name}: {rows} rows in {time.monotonic() - t:.1f} s")


AWS_KMS = None  # the aws-kms codec's test server (aws_kms_bench.KmsServer), while the part runs


def build_aws_kms_fixture(rows):
    """The aws-kms seed table: `rows` KMS blobs (bytea, the codec's default form) of the same
    plaintexts, each made by the test server's Encrypt under its key 1."""
    global AWS_KMS
    AWS_KMS = aws_kms_bench.KmsServer(WORK)
    table = codec_table("aws-kms")
    psql(f"DROP TABLE IF EXISTS {table}_seed; CREATE TABLE {table}_seed (id bigint PRIMARY KEY, "
         f"secret bytea NOT NULL)")
    t = time.monotonic()
    cpu0 = AWS_KMS.cpu_seconds()
    copy = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                             f"COPY {table}_seed FROM STDIN"],
                            env=ENV, stdin=subprocess.PIPE, text=True)
    for chunk in aws_kms_bench.copy_rows(AWS_KMS, rows):
        copy.stdin.write(chunk)
    copy.stdin.close()
    if copy.wait() != 0:
        raise RuntimeError(f"COPY into {table}_seed failed")
    seconds = time.monotonic() - t
    AWS_KMS.fixture = {"rows": rows, "seconds": round(seconds, 1),
                       "encrypt_per_s": round(rows / seconds, 1),
                       "processes": aws_kms_bench.ENCRYPT_PROCESSES,
                       "kms_server_cpu_us_per_row": round(
                           (AWS_KMS.cpu_seconds() - cpu0) / rows * 1e6, 1)}
    AWS_KMS.key_ids = {k: aws_kms_bench.key_id(AWS_KMS, k)
                       for k in (aws_kms_bench.SOURCE_KEY, aws_kms_bench.TARGET_KEY)}
    log(f"codec fixture aws-kms: {rows} rows in {seconds:.1f} s by the test server's Encrypt "
        f"({aws_kms_bench.ENCRYPT_PROCESSES} callers, {rows / seconds:.0f} values/s)")


def rotate_aws_kms(procs, conc, job_args, label):
    """rotate() of the aws-kms table with the test server's environment, plus what the server
    spent (CPU, calls) and the bench's own count of blobs per key: `rekey job verify` does not
    call KMS and cannot say which key a blob is under (docs/kms.md, "Verify and gates")."""
    k = aws_kms_bench
    table = codec_table("aws-kms")
    target = ["--table", f"public.{table}", "--column", "secret", "--codec", "aws-kms",
              "--source-kms-key", k.SOURCE_KEY, "--kms-key", k.TARGET_KEY,
              "--encryption-context", json.dumps(k.CONTEXT)]
    # Only the aws-kms rotation sees the AWS variables: the other codecs run as before.
    saved = {name: ENV.get(name) for name in AWS_KMS.env()}
    ENV.update(AWS_KMS.env())
    try:
        calls0, cpu0 = AWS_KMS.stats()["calls"], AWS_KMS.cpu_seconds()
        res = rotate(procs, conc, job_args, label, target=target, reset=reset_codec_table("aws-kms"))
        cpu, calls = AWS_KMS.cpu_seconds() - cpu0, AWS_KMS.stats()
    finally:
        for name, value in saved.items():
            if value is None:
                ENV.pop(name, None)
            else:
                ENV[name] = value
    reencrypts = calls["calls"].get("ReEncrypt", 0) - calls0.get("ReEncrypt", 0)
    counts = json.loads(psql(k.count_under_keys_sql(
        table, "secret", AWS_KMS.key_ids[k.SOURCE_KEY], AWS_KMS.key_ids[k.TARGET_KEY])))
    rows = res["rows"]
    # The job's stages as the batches saw them: the rollout's batches, shared by the workers, and
    # the sweep after it, which sends every value to ReEncrypt again (SQL cannot tell a moved
    # blob from one still to move; docs/kms.md) in batches of its own.
    res["stages"] = json.loads(psql(f"""
      SELECT json_agg(s ORDER BY stage_no) FROM (
        SELECT stage_no, count(*) AS batches, count(DISTINCT worker_id) AS workers,
               sum(rows_done) AS rows_done, sum(rows_skipped) AS rows_skipped,
               -- A batch's claimed_at is set again when it commits; its start is its finish
               -- less its duration.
               round(extract(epoch FROM max(finished_at) - min(finished_at - duration_ms
                                                              * interval '1 ms'))::numeric, 3)
                 AS seconds
          FROM rekey.batches WHERE job_id = {res['job']} GROUP BY stage_no) s"""))
    res["kms"] = {"server_cpu_s": round(cpu, 2),
                  # Job create's two DescribeKey calls and each worker's check of both keys are
                  # in it too: a handful of calls beside one ReEncrypt per value.
                  "server_cpu_us_per_row": round(cpu / rows * 1e6, 3),
                  "reencrypt_calls": reencrypts, "errors": calls["errors"],
                  "calls_per_second_limit": int(k.CALLS_PER_SECOND),
                  "values_under_source_key": counts["source"],
                  "values_under_target_key": counts["target"]}
    log(f"aws-kms {label}: stages " + ", ".join(
        f"{st['stage_no']}: {st['batches']} batches by {st['workers']} worker(s), "
        f"{st['rows_done']} written + {st['rows_skipped']} left in {st['seconds']} s"
        for st in res["stages"]))
    log(f"aws-kms {label}: KMS server CPU {cpu:.1f} s = {cpu / rows * 1e6:.0f} us/row, "
        f"{reencrypts} ReEncrypt, errors {calls['errors']}, blobs under key 1 {counts['source']}, "
        f"under key 2 {counts['target']} of {counts['values']}")
    if counts["source"] != 0 or counts["target"] != counts["values"] or reencrypts < rows:
        raise RuntimeError(f"aws-kms rotation {label} left blobs behind: {counts}, "
                           f"{reencrypts} ReEncrypt for {rows} rows")
    return res


def reset_codec_table(name):
    """As the anchors' reset.sql does for theirs: a fresh copy of the seed, vacuumed, checkpointed."""
    table = codec_table(name)
    sql = (f"DROP TABLE IF EXISTS {table};\n"
           f"CREATE TABLE {table} (LIKE {table}_seed INCLUDING ALL);\n"
           f"INSERT INTO {table} SELECT * FROM {table}_seed;\n"
           f"VACUUM ANALYZE {table};\nCHECKPOINT;\n")
    return lambda: run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"], input=sql)


def codecs(job_args):
    """rows/s of a whole `rekey work` rotation per codec, side by side in each of CODEC_RUNS runs,
    as a ratio to Tink's of the same run (the median over runs). Each rotation is `rotate`'s:
    timed from starting the workers to the last one exiting, then `rekey job verify`, which must
    count no value left under the codec's key 1."""
    codec_fixture.cloak_self_check()
    # The anchors' table has plain columns that --not-governed names; these tables have none.
    args = list(job_args)
    if "--not-governed" in args:
        i = args.index("--not-governed")
        del args[i:i + 2]
    for name in CODEC_NAMES:
        if name == "aws-kms":
            build_aws_kms_fixture(CODEC_ROWS)
        else:
            build_codec_fixture(name, CODEC_ROWS)
    procs, conc = CODEC_CONFIG
    runs = []
    refused = {}  # codec -> why `rekey job create` refused its job (it is then not measured)
    for i in range(CODEC_RUNS):
        log(f"codecs run {i + 1}/{CODEC_RUNS}")
        r = {}
        for name in (n for n in CODEC_NAMES if n not in refused):
            label = f"bench-codec-{name}-{i + 1}"
            if name != "aws-kms":
                src, dst = codec_key_ids(name)
                target = ["--table", f"public.{codec_table(name)}", "--column", "secret",
                          "--codec", name, "--map", f"{src}:{dst}"]
                if codec_fixture.CODECS[name].key_id_column:
                    target += ["--key-id-column", "key_id"]
            try:
                if name == "aws-kms":
                    r[name] = rotate_aws_kms(procs, conc, args, label)
                else:
                    r[name] = rotate(procs, conc, args, label, target=target,
                                     reset=reset_codec_table(name))
            except RuntimeError as e:
                # A refused job is reported and the other codecs go on; a rotation that fails
                # or does not verify still aborts the bench.
                if f"{REKEY} job create " not in str(e):
                    raise
                refused[name] = str(e).split(": ", 1)[-1]
                log(f"codec {name} not measured: {refused[name]}")
        runs.append(r)
    summary = {name: {"not_measured": why} for name, why in refused.items()}
    for name in (n for n in CODEC_NAMES if n not in refused):
        rs = [r[name] for r in runs]
        c = {"rows_per_s": median([x["rows_per_s"] for x in rs]),
             "wall_s": median([x["wall_s"] for x in rs]),
             "server_cpu_us_per_row": median([x["server_cpu_s"] / x["rows"] * 1e6 for x in rs]),
             "client_cpu_us_per_row": median([x["client_cpu_s"] / x["rows"] * 1e6 for x in rs]),
             "verified": all(x["verify"]["ok"] for x in rs),
             "values_under_source_keys": max(x["verify"]["values_under_source_keys"] for x in rs)}
        if "tink" in CODEC_NAMES and "tink" not in refused:
            c["ratio_tink"] = round(median([r[name]["rows_per_s"] / r["tink"]["rows_per_s"]
                                            for r in runs]), 3)
        for k in ("rows_per_s", "wall_s", "server_cpu_us_per_row", "client_cpu_us_per_row"):
            c[k] = round(c[k], 2)
        if name == "aws-kms":
            # Where its time goes: the KMS test server's own CPU per value, beside rekey's and
            # PostgreSQL's; the fixture's Encrypt rate for comparison.
            c["kms_server_cpu_us_per_row"] = round(median(
                [x["kms"]["server_cpu_us_per_row"] for x in rs]), 2)
            c["kms_reencrypt_calls_per_row"] = round(median(
                [x["kms"]["reencrypt_calls"] / x["rows"] for x in rs]), 3)
            c["kms_calls_per_second_limit"] = rs[0]["kms"]["calls_per_second_limit"]
            c["stage_seconds"] = [median([float(x["stages"][j]["seconds"]) for x in rs])
                                  for j in range(len(rs[0]["stages"]))]
            c["values_under_source_keys"] = max(x["kms"]["values_under_source_key"] for x in rs)
            c["fixture"] = AWS_KMS.fixture
        summary[name] = c
    if AWS_KMS:
        AWS_KMS.stop()
    return {"rows": CODEC_ROWS, "runs": CODEC_RUNS, "config": f"{procs}x{conc}",
            "plaintext_bytes": codec_fixture.PLAINTEXT_BYTES,
            "summary": {name: summary[name] for name in CODEC_NAMES},
            "per_run": runs}


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
             "server_cpu_us_per_row": median([x.get("server_cpu_us_per_row") for x in rs]),
             "wal_bytes_per_row": median([x.get("wal_bytes_per_row") for x in rs]),
             "peak_rss_kib_max": max(w["peak_rss_kib"] for x in rs for w in x["workers"]),
             "kms_calls_per_process_max": max((w["kms_calls"] or 0) for x in rs for w in x["workers"]),
             "verified": all(x["verify"]["ok"] for x in rs)}
        # Ratios side by side: per run, then the median over runs.
        for a in ("A1", "A2", "A3", "C2", "B"):
            ratios = [r["rekey"][key]["rows_per_s"] / r["anchors"][a]["rows_per_s"]
                      for r in runs if key in r.get("rekey", {}) and a in r.get("anchors", {})]
            if ratios:
                c[f"ratio_{a}"] = round(median(ratios), 3)
        # Server CPU and WAL per row over A2's, per run, then the median: steadier than rows/s.
        for fig in ("server_cpu_us_per_row", "wal_bytes_per_row"):
            ratios = [r["rekey"][key][fig] / r["anchors"]["A2"][fig] for r in runs
                      if key in r.get("rekey", {}) and r["rekey"][key].get(fig)
                      and r.get("anchors", {}).get("A2", {}).get(fig)]
            if ratios:
                c[f"{fig}_ratio_A2"] = round(median(ratios), 3)
        configs[key] = c
    staged = [r["staged"] for r in runs if "staged" in r]
    out = {"anchors_rows_per_s": med, "rekey": configs}
    for fig in ("server_cpu_us_per_row", "wal_bytes_per_row"):
        out[f"A2_{fig}"] = median([r["anchors"].get("A2", {}).get(fig) for r in runs
                                   if "anchors" in r])
    if staged:
        out["staged"] = {"stages": STAGES, "runs": len(staged),
                         "wall_s": median([x["wall_s"] for x in staged]),
                         "planning_s": median([x["planning_s"] for x in staged]),
                         "ratio_to_single_stage": median([x.get("ratio_to_single_stage")
                                                          for x in staged]),
                         "ratio_to_single_stage_without_planning": median(
                             [x.get("ratio_to_single_stage_without_planning") for x in staged])}
    return out


def bars(summary, gentle_result=None, size_curve=None):
    main = {k: summary["rekey"][k] for k in ("2x1", "1x2") if k in summary["rekey"]}
    out = []

    def bar(name, value, ok, target):
        out.append({"bar": name, "value": value, "target": target, "met": ok})

    for k, c in main.items():
        if "ratio_A2" in c:
            bar(f"rekey {k} / A2", c["ratio_A2"], c["ratio_A2"] >= 0.8, ">= 0.8 (issue 21)")
        if "server_cpu_us_per_row_ratio_A2" in c:
            v = c["server_cpu_us_per_row_ratio_A2"]
            bar(f"rekey {k} server CPU per row / A2's", v, v <= 1.25, "<= 1.25")
        if "wal_bytes_per_row_ratio_A2" in c:
            v = c["wal_bytes_per_row_ratio_A2"]
            bar(f"rekey {k} WAL bytes per row / A2's", v, v <= 1.1, "<= 1.1")
        if "ratio_C2" in c:
            bar(f"rekey {k} / C2", c["ratio_C2"], c["ratio_C2"] >= 5, ">= 5")
        bar(f"planning {k} % of rotation", c["planning_pct_of_rotation"],
            c["planning_pct_of_rotation"] <= 5, "<= 5 %")
    if summary["rekey"]:  # none with BENCH_SKIP=main
        rss = max(c["peak_rss_kib_max"] for c in summary["rekey"].values()) / 1024
        bar("peak worker RSS MiB (all runs)", round(rss, 1), rss <= 64, "<= 64 MiB")
        kms = max(c["kms_calls_per_process_max"] for c in summary["rekey"].values())
        bar("KMS calls per key per process (2 keys)", kms / 2, kms / 2 <= 2, "<= 2")
    st = summary.get("staged", {}).get("ratio_to_single_stage")
    if st is not None:
        bar(f"staged ({STAGES}) / single-stage time", st, st <= 1.3, "<= 1.3")
    if size_curve and len(size_curve) > 1:
        # Time per row stays flat as the table grows: the largest rise of the time per row from a
        # smaller table to a larger one. The strict reading, the slowest size over the fastest,
        # is printed too: a rotation's fixed cost (start-up, the stage's gate, the sweep, exit)
        # weighs most on the smallest table, which makes it slower per row, not the larger ones.
        us = [p["us_per_row"] for p in size_curve]
        sizes = " / ".join(f"{p['rows']}" for p in size_curve)
        growth = round(max(us[j] / us[i] for i in range(len(us)) for j in range(i + 1, len(us))), 3)
        bar(f"time per row as the table grows, largest rise ({sizes} rows)", growth, growth <= 1.2,
            "<= 1.2")
        spread = round(max(us) / min(us), 3)
        bar(f"time per row, slowest / fastest size ({sizes} rows)", spread, spread <= 1.2,
            "<= 1.2 (strict reading)")
    if gentle_result and gentle_result.get("p99_ratio") is not None:
        r = gentle_result["p99_ratio"]
        bar(f"app p99 with rekey {' '.join(GENTLE_ARGS)} / without", r, r <= 1.15, "<= 1.15")
    return out


def print_table(result):
    s = result["summary"]
    print()
    print(f"rekey bench: {ROWS} rows, {RUNS} run(s), medians; {result['machine']['cpu_model']}, "
          f"{result['machine']['nproc']} cores, PostgreSQL {result['machine']['postgresql']}")
    print(f"{'contender':<28}{'rows/s':>10}{'/A2':>8}{'/A3':>8}{'/C2':>8}{'CPU us/row':>12}"
          f"{'/A2':>7}{'WAL B/row':>11}{'/A2':>7}")
    num = lambda v, w, d=2: f"{v:>{w}.{d}f}" if v is not None else f"{'-':>{w}}"
    for a, v in s["anchors_rows_per_s"].items():
        extra = (num(s.get("A2_server_cpu_us_per_row"), 36) + num(None, 7) +
                 num(s.get("A2_wal_bytes_per_row"), 11, 0)) if a == "A2" else ""
        print(f"{'anchor ' + a:<28}{v:>10.0f}{extra}")
    for k, c in s["rekey"].items():
        p, n = k.split("x")
        label = f"rekey {p} proc x conc {n}"
        fmt = lambda r: f"{c[r]:>8.2f}" if r in c else f"{'-':>8}"
        print(f"{label:<28}{c['rows_per_s']:>10.0f}{fmt('ratio_A2')}{fmt('ratio_A3')}{fmt('ratio_C2')}"
              f"{num(c.get('server_cpu_us_per_row'), 12)}"
              f"{num(c.get('server_cpu_us_per_row_ratio_A2'), 7)}"
              f"{num(c.get('wal_bytes_per_row'), 11, 0)}{num(c.get('wal_bytes_per_row_ratio_A2'), 7)}")
    if result.get("size_curve"):
        print("\nsize curve (rekey 2 proc x conc 1):")
        for p in result["size_curve"]:
            print(f"  {p['rows']:>9} rows  {p['wall_s']:8.2f} s  {p['rows_per_s']:>9.0f} rows/s  "
                  f"{p['us_per_row']:6.2f} us/row  (A2 {p.get('A2_rows_per_s') or '-'} rows/s)")
    if result.get("size_fit"):
        f = result["size_fit"]
        print(f"  fit: {f['fixed_s']:.2f} s whatever the size + {f['marginal_us_per_row']:.2f} us "
              f"per row")
    if result.get("codecs"):
        cs = result["codecs"]
        print(f"\ncodecs ({cs['rows']} rows of {cs['plaintext_bytes']}-byte plaintexts, rekey "
              f"{cs['config']}, medians of {cs['runs']} runs):")
        kms = any("kms_server_cpu_us_per_row" in c for c in cs["summary"].values())
        print(f"  {'codec':<10}{'rows/s':>10}{'/tink':>8}{'server us/row':>15}{'client us/row':>15}"
              + (f"{'KMS us/row':>12}" if kms else ""))
        for name, c in cs["summary"].items():
            if "not_measured" in c:
                print(f"  {name:<10}not measured: {c['not_measured']}")
                continue
            ratio = f"{c['ratio_tink']:>8.2f}" if "ratio_tink" in c else f"{'-':>8}"
            print(f"  {name:<10}{c['rows_per_s']:>10.0f}{ratio}{c['server_cpu_us_per_row']:>15.2f}"
                  f"{c['client_cpu_us_per_row']:>15.2f}"
                  + (f"{num(c.get('kms_server_cpu_us_per_row'), 12)}" if kms else ""))
    if result.get("micro"):
        print("\ncodec vs openssl speed (ns per value, CPU):")
        for name, c in result["micro"]["rekey_vs_openssl_speed"].items():
            print(f"  {name:<22}{c['rekey_ns']:>9.0f} ns  openssl {c['openssl_speed_ns']:>7.0f} ns"
                  f"  x{c['ratio']}")
    if s.get("staged"):
        st = s["staged"]
        print(f"\nstaged {st['stages']} (auto-advance, gates, sweep): planning "
              f"{st['planning_s']:.2f} s + rotation {st['wall_s']:.2f} s, "
              f"x{st['ratio_to_single_stage']} the single-stage job's time, planning included "
              f"(x{st['ratio_to_single_stage_without_planning']} without)")
    for k, c in s["rekey"].items():
        print(f"rekey {k}: planning {c['planning_pct_of_rotation']} % of rotation, peak RSS "
              f"{c['peak_rss_kib_max'] // 1024} MiB per worker, KMS calls per process "
              f"{c['kms_calls_per_process_max']} (2 keys)")
    g = result.get("gentle")
    if g:
        print(f"\napplication (pgbench {g['app_tps_offered']} tps offered, {g['app_clients']} "
              f"clients, {g['app_seconds']} s with rekey and {g['app_seconds']} s without, in "
              f"alternating phases of {g['phase_seconds']:g} s; 80% point reads, 20% point "
              f"updates):")
        for name in ("without_rekey", "with_rekey"):
            a = g[name]["all"]
            print(f"  {name:<14} p50 {a['p50_ms']:>8} ms  p99 {a['p99_ms']:>8} ms  "
                  f"({a['n']} transactions)")
        runs_g = g.get("runs", [g])
        print(f"  ratio          p50 x{g['p50_ratio']}  p99 x{g['p99_ratio']}  (medians of "
              f"{len(runs_g)} runs, p99 ratios "
              f"{', '.join(str(x['p99_ratio']) for x in runs_g)}; rekey "
              f"{' '.join(g['gentle_args'])}: {g['rekey_rows_per_s']} rows/s measured)")
    sw = result.get("sweep")
    if sw:
        print("\nsweep (one rotation each):")
        for p in sw["points"]:
            print(f"  batch {p['batch_size']:>6}  {p['processes']}x{p['concurrency']}  "
                  f"{p['rows_per_s']:>9.0f} rows/s  /A2 {p['ratio_A2']}")
        b = sw["best"]
        print(f"  best: batch {b['batch_size']}, {b['processes']} proc x conc "
              f"{b['concurrency']}: {b['rows_per_s']:.0f} rows/s")
    if result.get("ten_million"):
        full.print_part(result["ten_million"])
    if result.get("gentle_brakes"):
        gentleness.print_part(result["gentle_brakes"])
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
                           "pg_settings": PG_SETTINGS, "configs": MAIN_CONFIGS,
                           "work_args": WORK_ARGS, "stages": STAGES}}
    result["machine"] = machine()
    job_args = setup_rekey()
    result["settings"]["job_create_extra_args"] = job_args
    runs = []
    if "main" not in SKIP:
        build_fixture(ROWS)
    for i in range(0 if "main" in SKIP else RUNS):
        log(f"run {i + 1}/{RUNS}")
        r = {"anchors": {} if "anchors" in SKIP else run_anchors(ANCHOR_NAMES), "rekey": {}}
        configs = list(MAIN_CONFIGS)
        if "scaling" not in SKIP:
            configs += [(p, 1) for p in SCALING_PROCS if (p, 1) not in configs]
        for procs, conc in configs:
            r["rekey"][f"{procs}x{conc}"] = rotate(procs, conc, job_args,
                                                   f"bench-run{i + 1}-{procs}x{conc}")
        if "staged" not in SKIP:
            st = rotate_staged(f"bench-run{i + 1}-staged")
            single = r["rekey"].get("2x1")
            # The job's whole time, planning included: a staged job plans more (every stage's
            # rows), and that is part of what it costs.
            st["ratio_to_single_stage"] = (
                round((st["planning_s"] + st["wall_s"]) / (single["planning_s"] + single["wall_s"]),
                      3) if single else None)
            st["ratio_to_single_stage_without_planning"] = (
                round(st["wall_s"] / single["wall_s"], 3) if single else None)
            r["staged"] = st
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
                # The median of SIZE_RUNS rotations, as for the main size: one rotation of 3M
                # rows moved by half between two runs on this shared machine.
                xs = sorted((rotate(2, 1, job_args, f"bench-size-{size}-{i + 1}")
                             for i in range(SIZE_RUNS)), key=lambda x: x["wall_s"])
                x = xs[len(xs) // 2]
                point = {"rows": size, "wall_s": x["wall_s"], "rows_per_s": x["rows_per_s"],
                         "us_per_row": x["us_per_row"], "A2_rows_per_s": a2,
                         "planning_s": x["planning_s"],
                         "peak_rss_kib_max": max(w["peak_rss_kib"] for y in xs
                                                 for w in y["workers"]),
                         "wall_s_runs": [y["wall_s"] for y in xs],
                         "source": f"median of {len(xs)} runs"}
            curve.append(point)
        curve.sort(key=lambda p: p["rows"])
    result["size_curve"] = curve
    if len(curve) > 1:
        # wall = fixed + per_row * rows, least squares: what a rotation costs whatever its size,
        # and what each row adds.
        n = len(curve)
        mx = sum(p["rows"] for p in curve) / n
        my = sum(p["wall_s"] for p in curve) / n
        sxx = sum((p["rows"] - mx) ** 2 for p in curve)
        slope = sum((p["rows"] - mx) * (p["wall_s"] - my) for p in curve) / sxx
        result["size_fit"] = {"fixed_s": round(my - slope * mx, 3),
                              "marginal_us_per_row": round(slope * 1e6, 3)}
    if "gentle" not in SKIP:
        build_fixture(ROWS)
        # The p99 of a minute of transactions moves by a third between identical runs on a
        # shared 2-core machine: the figure is the median of GENTLE_RUNS runs' ratios.
        runs_g = [gentle(ROWS, f"bench-gentle-{i + 1}", job_args) for i in range(GENTLE_RUNS)]
        result["gentle"] = dict(runs_g[len(runs_g) // 2])
        result["gentle"]["runs"] = runs_g
        for k in ("p50_ratio", "p99_ratio"):
            result["gentle"][k] = median([g[k] for g in runs_g])
    if "partitioned" not in SKIP and "main" not in SKIP:
        build_fixture(ROWS)
        result["partitioned"] = partitioned(job_args, runs[-1]["rekey"].get("2x1") if runs else None)
    if FULL and "full" not in SKIP:
        result["ten_million"] = full.ten_million(sys.modules[__name__], job_args)
    if not {"walcap", "lockwait"} <= SKIP:
        result["gentle_brakes"] = gentleness.brakes_part(sys.modules[__name__], job_args)
    result["sweep"] = sweep(job_args)
    if "codecs" not in SKIP:
        result["codecs"] = codecs(job_args)
    if "micro" not in SKIP and os.path.exists(CODEC_BENCH):
        log("codec micro-benchmarks and openssl speed")
        result["micro"] = micro()
    result["bars"] = bars(result["summary"], result.get("gentle"), result.get("size_curve"))
    for part in ("ten_million", "gentle_brakes"):
        result["bars"] += (result.get(part) or {}).get("bars", [])
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
