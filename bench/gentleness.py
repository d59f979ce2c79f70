"""The bench's gentleness figures for the brakes (issue 19 item 4), beside run_bench.py's
application p99 at a row rate:

walcap   the WAL-rate cap: one flat-out rotation measures the unthrottled WAL rate, then the same
         rotation with `rekey work --max-wal-rate X` (X = BENCH_WALCAP_FRACTION of it, 0.2 by
         default); pg_current_wal_lsn() is sampled every second, the per-second series saved,
         and the capped run's average WAL bytes/s while the job is active reported against X
         (bar: within 10 %).
lockwait an application that updates the rows being rotated (pgbench, point UPDATEs of random
         rows at a fixed rate) while rekey rotates flat out, with `--max-lock-wait 50` and
         without it, in alternating runs on the same table: the p99 of the application's UPDATE
         latency in each (and of the statement alone, without pgbench's schedule lag), rekey's
         rows/s, and its yields. Batches of BENCH_LOCK_BATCH_SIZE (10000) rows: two workers then
         hold 2 % of a million rows at any moment, so more than 1 % of the updates meet a locked
         row and the p99 is a lock wait, which is what the brake bounds.
"""
import os
import re
import signal
import subprocess
import threading
import time

WALCAP_FRACTION = float(os.environ.get("BENCH_WALCAP_FRACTION", "0.2"))
LOCK_LIMIT_MS = int(os.environ.get("BENCH_LOCK_LIMIT_MS", "50"))
LOCK_BATCH_SIZE = int(os.environ.get("BENCH_LOCK_BATCH_SIZE", "10000"))
LOCK_SECONDS = float(os.environ.get("BENCH_LOCK_SECONDS", "20"))
LOCK_RUNS = int(os.environ.get("BENCH_LOCK_RUNS", "2"))
LOCK_TPS = int(os.environ.get("BENCH_LOCK_TPS", "200"))


def cancel_unfinished(rb):
    """Cancels the jobs an earlier part left unfinished (the gentle part stops its workers
    mid-job): a column has one unfinished job at a time."""
    for job in rb.psql("SELECT job_id FROM rekey.jobs WHERE state NOT IN ('completed', 'failed', "
                       "'cancelled', 'rolled_back')").split():
        rb.run([rb.REKEY, "job", "cancel", job])


class WalSampler(threading.Thread):
    """Every second: the server's WAL position and whether job `label` is active."""

    def __init__(self, rb, label):
        super().__init__(daemon=True)
        self.rb, self.label = rb, label
        self.stop = threading.Event()
        self.samples = []  # (monotonic s, WAL bytes, job active?)

    def run(self):
        while True:
            out = self.rb.psql("SELECT pg_current_wal_lsn() - '0/0', EXISTS (SELECT FROM "
                               f"rekey.jobs WHERE name = '{self.label}' AND state = 'active')")
            lsn, active = out.split("|")
            self.samples.append((time.monotonic(), int(float(lsn)), active == "t"))
            if self.stop.wait(1.0):
                return


def wal_rotation(rb, job_args, label, work_args):
    """A whole rotation (run_bench's rotate) with the WAL sampled each second; returns the
    rotation, the average WAL rate while the job was active and the per-second series."""
    sampler = WalSampler(rb, label)
    sampler.start()
    try:
        x = rb.rotate(2, 1, job_args, label, work_args=list(rb.WORK_ARGS) + work_args)
    finally:
        sampler.stop.set()
        sampler.join()
    # From the first sample with the job active to the first after it with the job done.
    first = next((i for i, s in enumerate(sampler.samples) if s[2]), len(sampler.samples))
    last = next((i for i in range(first, len(sampler.samples)) if not sampler.samples[i][2]),
                len(sampler.samples) - 1)
    active = sampler.samples[first:last + 1]
    rate = None
    if len(active) > 1:
        rate = (active[-1][1] - active[0][1]) / (active[-1][0] - active[0][0])
    series = [round((b[1] - a[1]) / (b[0] - a[0])) for a, b in zip(active, active[1:])]
    return x, rate, series


def walcap(rb, job_args):
    rb.build_fixture(rb.ROWS)
    free, free_rate, free_series = wal_rotation(rb, job_args, "bench-walcap-free", [])
    cap = int(free_rate * WALCAP_FRACTION)
    capped, rate, series = wal_rotation(rb, job_args, "bench-walcap-capped",
                                        ["--max-wal-rate", f"{cap}B"])
    res = {"rows": capped["rows"], "unthrottled_wal_bytes_per_s": round(free_rate),
           "unthrottled_wall_s": free["wall_s"], "unthrottled_series": free_series,
           "cap_bytes_per_s": cap, "cap_fraction": WALCAP_FRACTION,
           "capped_wal_bytes_per_s": round(rate) if rate else None,
           "ratio_to_cap": round(rate / cap, 3) if rate else None,
           "capped_wall_s": capped["wall_s"], "capped_rows_per_s": capped["rows_per_s"],
           "series_bytes_per_s": series,
           "seconds_over_cap": sum(1 for v in series if v > cap),
           "wal_bytes_per_row": round((free_rate * free["wall_s"]) / free["rows"], 1)}
    rb.log(f"walcap: unthrottled {free_rate / 1e6:.1f} MB/s, cap {cap / 1e6:.2f} MB/s, capped "
           f"run {res['capped_wal_bytes_per_s']} B/s = x{res['ratio_to_cap']} the cap over "
           f"{capped['wall_s']} s")
    return res


def pgbench_log_latencies(directory, windows):
    """(latency ms, statement ms) of the logged transactions scheduled inside one of `windows`
    ((start, end) epoch seconds). pgbench --rate counts latency from the scheduled start; the
    statement alone is that less the schedule lag."""
    out = []
    for name in os.listdir(directory):
        if not name.startswith("txn."):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                parts = line.split()
                # client_id transaction_no time_us script_no epoch epoch_us schedule_lag_us
                if len(parts) < 7 or not parts[2].isdigit():
                    continue
                latency_us, lag_us = int(parts[2]), int(parts[6])
                scheduled = int(parts[4]) + int(parts[5]) / 1e6 - latency_us / 1e6
                if any(a <= scheduled < b for a, b in windows):
                    out.append((latency_us / 1000.0, (latency_us - lag_us) / 1000.0))
    return out


def lock_run(rb, job_args, label, work_args):
    """pgbench's point UPDATEs at LOCK_TPS for LOCK_SECONDS, and two flat-out `rekey work`
    processes from its 2nd second to 2 s before its end (or until the job is done)."""
    cancel_unfinished(rb)
    rb.reset_table()
    rb.run([rb.REKEY, "job", "create", *rb.ANCHOR_TARGET, "--batch-size", str(LOCK_BATCH_SIZE),
            "--name", label, *job_args])
    job = int(rb.psql("SELECT max(job_id) FROM rekey.jobs"))
    d = os.path.join(rb.WORK, f"pgbench-{label}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "update.sql"), "w") as f:
        f.write(rb.PGBENCH_UPDATE)
    app = subprocess.Popen(
        [rb.PGBENCH, "-n", "-c", "4", "-j", "2", "-T", str(int(LOCK_SECONDS)), "-R", str(LOCK_TPS),
         "-D", f"rows={rb.FIXTURE_ROWS}", "-f", os.path.join(d, "update.sql"), "--log",
         "--log-prefix=" + os.path.join(d, "txn")],
        env=rb.ENV, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    workers = []
    for i in range(2):
        err = open(os.path.join(rb.WORK, f"{label}-w{i}.log"), "w")
        workers.append((subprocess.Popen([rb.REKEY, "work", "--job", str(job), *work_args],
                                         env=rb.ENV, stdout=subprocess.DEVNULL, stderr=err), err))
    start = time.time()
    deadline = time.monotonic() + LOCK_SECONDS - 4
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in workers):
        time.sleep(0.1)
    end = time.time()
    for p, err in workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait()
        err.close()
    app.communicate()
    codes = [p.returncode for p, _ in workers]
    if any(codes) or app.returncode != 0:
        raise RuntimeError(f"lockwait {label}: rekey work exited {codes}, pgbench {app.returncode}")
    yields = 0
    for i in range(2):
        with open(os.path.join(rb.WORK, f"{label}-w{i}.log")) as f:
            yields += len(re.findall(r'"action":"brake\.lock_wait\.yield"', f.read()))
    rows = int(rb.psql(f"SELECT coalesce(sum(rows_done), 0) FROM rekey.batches WHERE job_id = {job}"))
    # Steady state: from a second after the workers started to when they were stopped.
    lat = pgbench_log_latencies(d, [(start + 1, end)])
    res = {"label": label, "work_args": work_args, "rekey_seconds": round(end - start, 2),
           "rekey_rows": rows, "rekey_rows_per_s": round(rows / (end - start), 1),
           "yields": yields, "latency": rb.latency_stats([a for a, _ in lat]),
           "statement": rb.latency_stats([b for _, b in lat]),
           "max_statement_ms": round(max((b for _, b in lat), default=0), 3)}
    rb.log(f"lockwait {label}: app UPDATE p99 {res['latency']['p99_ms']} ms (statement "
           f"{res['statement']['p99_ms']} ms, max {res['max_statement_ms']} ms), rekey "
           f"{res['rekey_rows_per_s']} rows/s, {yields} yields")
    return res


def lockwait(rb, job_args):
    rb.build_fixture(rb.ROWS)
    conditions = (("without", []), ("with", ["--max-lock-wait", str(LOCK_LIMIT_MS)]))
    runs = {name: [] for name, _ in conditions}
    for i in range(LOCK_RUNS):
        for name, args in conditions:
            runs[name].append(lock_run(rb, job_args, f"bench-lockwait-{name}-{i + 1}",
                                       list(rb.WORK_ARGS) + args))
    med = lambda name, part: round(rb.median([r[part]["p99_ms"] for r in runs[name]]), 3)
    return {"limit_ms": LOCK_LIMIT_MS, "batch_size": LOCK_BATCH_SIZE, "app_tps": LOCK_TPS,
            "seconds": LOCK_SECONDS,
            "p99_ms_without": med("without", "latency"), "p99_ms_with": med("with", "latency"),
            "statement_p99_ms_without": med("without", "statement"),
            "statement_p99_ms_with": med("with", "statement"),
            "rekey_rows_per_s_without": round(rb.median([r["rekey_rows_per_s"] for r in runs["without"]])),
            "rekey_rows_per_s_with": round(rb.median([r["rekey_rows_per_s"] for r in runs["with"]])),
            "runs": runs}


def brakes_part(rb, job_args):
    """Both figures (each skipped by BENCH_SKIP=walcap / lockwait) and their bars."""
    out = {"bars": []}
    cancel_unfinished(rb)
    if "walcap" not in rb.SKIP:
        w = out["walcap"] = walcap(rb, job_args)
        if w["ratio_to_cap"] is not None:
            out["bars"].append({"bar": "WAL bytes/s with --max-wal-rate / the cap",
                                "value": w["ratio_to_cap"], "target": "within 10 % (0.9-1.1)",
                                "met": abs(w["ratio_to_cap"] - 1) <= 0.1})
    if "lockwait" not in rb.SKIP:
        lw = out["lockwait"] = lockwait(rb, job_args)
        out["bars"].append({"bar": f"app UPDATE statement p99 with --max-lock-wait {LOCK_LIMIT_MS}"
                                   " (ms)", "value": lw["statement_p99_ms_with"],
                            "target": f"<= {LOCK_LIMIT_MS} ms",
                            "met": (lw["statement_p99_ms_with"] or 0) <= LOCK_LIMIT_MS})
        cancel_unfinished(rb)
    return out


def print_part(part):
    w = part.get("walcap")
    if w:
        print(f"\nWAL-rate cap: unthrottled {w['unthrottled_wal_bytes_per_s'] / 1e6:.1f} MB/s; "
              f"--max-wal-rate {w['cap_bytes_per_s']}B: {w['capped_wal_bytes_per_s']} B/s over "
              f"{w['capped_wall_s']} s = x{w['ratio_to_cap']} the cap ({w['seconds_over_cap']} of "
              f"{len(w['series_bytes_per_s'])} seconds above it)")
        print("  per second (MB/s): " + " ".join(f"{v / 1e6:.1f}" for v in w["series_bytes_per_s"]))
    lw = part.get("lockwait")
    if lw:
        print(f"\napplication UPDATEs of the rows being rotated ({lw['app_tps']} tps, rekey flat "
              f"out, batches of {lw['batch_size']}; medians of {len(lw['runs']['with'])} runs):")
        for name in ("without", "with"):
            print(f"  {name + ' --max-lock-wait ' + str(lw['limit_ms']):<26} p99 "
                  f"{lw['p99_ms_' + name]} ms (statement {lw['statement_p99_ms_' + name]} ms), "
                  f"rekey {lw['rekey_rows_per_s_' + name]} rows/s")
