"""The bench's ten-million-row part (issue 21 item 3), run by `BENCH_FULL=1` beside the rest.

One rotation (2 processes x 1) per size of BENCH_FULL_SIZES (default 1,000,000 and 10,000,000),
each beside A2 on the same fixture, and what must not grow with the table or with the batches
done:
  - time per row of the largest size over the smallest (bar: within 10 %);
  - peak worker RSS (/usr/bin/time %M, as the other parts; bar: <= 32 MiB);
  - planning time and the planner's peak RSS (`rekey job create`, its VmHWM polled from /proc),
    per row (bar: linear or better: the largest size's per-row figure no more than the
    smallest's);
  - the claim's cost sampled through the run: `rekey.claim_batch` run whole under
    `EXPLAIN (ANALYZE, BUFFERS)` in a transaction that is rolled back (its buffers and time,
    early, middle and late), and the control-plane tables' sizes per batch done.

The fixture: the anchors' fixture.py makes the first min(rows, 1,000,000) rows (Python, about
25 s per million on the 2-core VM); the rest are copies of them made by the server
(generate_series), with the ids, tenant, last4 and metadata the anchors' fixture would give them
and the token bytes of row id mod 1,000,000 (valid Tink AES-256-GCM under key 1 with empty
associated data, so each still decrypts). The 9 million copies of a ten-million-row fixture take
about a minute instead of four of Python."""
import json
import os
import subprocess
import threading
import time

import gentleness

SIZES = [int(s) for s in os.environ.get("BENCH_FULL_SIZES", "1000000 10000000").split()]
PROBE_SECONDS = float(os.environ.get("BENCH_FULL_PROBE_SECONDS", "3"))
SEED_CHUNK = 1_000_000  # rows fixture.py makes; the rest are copies made in the server
CONTROL_TABLES = ("rekey.batches", "rekey.audit", "rekey.workers", "rekey.jobs",
                  "rekey.job_stages", "rekey.gates")


def build_fixture(rb, rows):
    """payment_methods_seed of `rows` rows, as ../shared/anchors/fixture.py makes it."""
    if rb.FIXTURE_ROWS == rows:
        return
    rb.build_fixture(min(rows, SEED_CHUNK))
    if rows > SEED_CHUNK:
        t = time.monotonic()
        copies = (rows - 1) // SEED_CHUNK
        rb.psql(f"""
          INSERT INTO payment_methods_seed
                 (id, tenant_id, key_id, token, brand, last4, metadata)
          SELECT n, n % 500, 1, s.token, s.brand, lpad((n % 10000)::text, 4, '0'),
                 jsonb_build_object('src', 'anchor', 'n', n)
            FROM payment_methods_seed s, generate_series(1, {copies}) k,
                 LATERAL (SELECT s.id + k::bigint * {SEED_CHUNK} AS n) x
           WHERE s.id <= {SEED_CHUNK} AND x.n <= {rows}""")
        rb.psql("VACUUM ANALYZE payment_methods_seed")
        rb.FIXTURE_ROWS = rows
        rb.log(f"fixture: {rows} rows ({rows - SEED_CHUNK} copied in the server) in "
               f"{time.monotonic() - t:.1f} s")


def claim_probe(rb, job):
    """One claim, run whole and rolled back: its time and buffers. Measured on the session's
    second claim, as a worker's claims are: the first one of a session also reads the catalogs
    and compiles the PL/pgSQL. The probe's session-level advisory lock on the batch it found goes
    when psql exits, a moment later."""
    claim = f"""
      BEGIN;
      EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
        SELECT * FROM rekey.claim_batch('bench-claim-probe', {job});
      ROLLBACK;"""
    out = rb.run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"], input=claim + claim)
    decoder, at, plans = json.JSONDecoder(), out.index("["), []
    while at < len(out):
        plan, at = decoder.raw_decode(out, at)
        plans.append(plan)
        while at < len(out) and out[at].isspace():
            at += 1
    plan = plans[-1][0]
    top = plan["Plan"]
    return {"ms": round(plan["Execution Time"], 3),
            "shared_hit": top.get("Shared Hit Blocks", 0),
            "shared_read": top.get("Shared Read Blocks", 0),
            "found": top.get("Actual Rows", 0)}


def sample(rb, job):
    sizes = ", ".join(f"'{t}', pg_total_relation_size('{t}')" for t in CONTROL_TABLES)
    s = json.loads(rb.psql(f"""
      SELECT json_build_object(
        'done', (SELECT count(*) FROM rekey.batches WHERE job_id = {job} AND state = 'done'),
        'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = {job}),
        'state', (SELECT state FROM rekey.jobs WHERE job_id = {job}),
        'bytes', json_build_object({sizes}))"""))
    s["at_s"] = round(time.monotonic(), 2)
    return s


class Sampler(threading.Thread):
    """While job `label` runs: the planner's peak RSS (polled from /proc while `rekey job create`
    plans it), then every PROBE_SECONDS the batches done, a claim probe and the control-plane
    tables' sizes."""

    def __init__(self, rb, label):
        super().__init__(daemon=True)
        self.rb, self.label = rb, label
        self.stop = threading.Event()
        self.planner_hwm_kib = 0
        self.samples = []
        self.error = None

    def planner_pids(self):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"create" in argv and self.label.encode() in argv and argv[0].endswith(b"rekey"):
                yield pid

    def run(self):
        try:
            job = None
            while job is None and not self.stop.is_set():
                for pid in self.planner_pids():
                    try:
                        with open(f"/proc/{pid}/status") as f:
                            for line in f:
                                if line.startswith("VmHWM:"):
                                    self.planner_hwm_kib = max(self.planner_hwm_kib,
                                                               int(line.split()[1]))
                    except OSError:
                        pass
                j = self.rb.psql(f"SELECT job_id FROM rekey.jobs WHERE name = '{self.label}' AND "
                                 "state = 'active'")
                job = int(j) if j else None
                if job is None:
                    time.sleep(0.02)
            while not self.stop.wait(PROBE_SECONDS):
                s = sample(self.rb, job)
                if s["state"] != "active":
                    break
                s["claim"] = claim_probe(self.rb, job)
                self.samples.append(s)
        except Exception as e:  # reported, not fatal: the rotation's own figures stand
            self.error = str(e)


def thirds(samples):
    """The probes of the first, middle and last third of the batches, by batches done."""
    out = {}
    total = samples[-1]["batches"] if samples else 0
    for name, lo, hi in (("early", 0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("late", 2 / 3, 1.01)):
        xs = [s for s in samples if total and lo <= s["done"] / total < hi and s["claim"]["found"]]
        if xs:
            out[name] = {"probes": len(xs),
                         "claim_ms": round(sorted(x["claim"]["ms"] for x in xs)[len(xs) // 2], 3),
                         "claim_buffers": sorted(x["claim"]["shared_hit"] + x["claim"]["shared_read"]
                                                 for x in xs)[len(xs) // 2]}
    return out


def ten_million(rb, job_args):
    """The part's result (JSON) and its bars."""
    points = []
    gentleness.cancel_unfinished(rb)
    for rows in SIZES:
        build_fixture(rb, rows)
        a2 = rb.run_anchors(["A2"]).get("A2", {}).get("rows_per_s")
        label = f"bench-full-{rows}"
        sampler = Sampler(rb, label)
        sampler.start()
        try:
            x = rb.rotate(2, 1, job_args, label)
        finally:
            sampler.stop.set()
            sampler.join()
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        batches = x["db"]["batches"]
        end = sample(rb, x["job"])
        point = {"rows": rows, "wall_s": x["wall_s"], "rows_per_s": x["rows_per_s"],
                 "us_per_row": x["us_per_row"], "A2_rows_per_s": a2,
                 "ratio_A2": round(x["rows_per_s"] / a2, 3) if a2 else None,
                 "planning_s": x["planning_s"],
                 "planning_us_per_row": round(x["planning_s"] / rows * 1e6, 3),
                 "planner_peak_rss_kib": sampler.planner_hwm_kib,
                 "worker_peak_rss_kib": max(w["peak_rss_kib"] for w in x["workers"]),
                 "server_cpu_s": x["server_cpu_s"], "client_cpu_s": x["client_cpu_s"],
                 "batches": batches, "control_plane_bytes": end["bytes"],
                 "control_plane_bytes_per_batch": {t: round(b / batches, 1)
                                                   for t, b in end["bytes"].items()},
                 "claim_by_third": thirds(sampler.samples), "probes": sampler.samples,
                 "probe_error": sampler.error, "loadavg_after": load, "rotation": x}
        rb.log(f"full {rows}: {point['us_per_row']} us/row, /A2 {point['ratio_A2']}, planning "
               f"{x['planning_s']} s, planner RSS {sampler.planner_hwm_kib // 1024} MiB, worker "
               f"RSS {point['worker_peak_rss_kib'] // 1024} MiB, claim {point['claim_by_third']}")
        points.append(point)
    return {"points": points, "bars": bars(points)}


def bars(points):
    out = []
    if not points:
        return out
    small, big = points[0], points[-1]

    def bar(name, value, ok, target):
        out.append({"bar": name, "value": value, "target": target, "met": ok})

    r = round(big["us_per_row"] / small["us_per_row"], 3)
    bar(f"us per row at {big['rows']} / at {small['rows']} rows", r, r <= 1.1, "<= 1.1")
    rss = max(p["worker_peak_rss_kib"] for p in points) / 1024
    bar(f"peak worker RSS MiB up to {big['rows']} rows", round(rss, 1), rss <= 32, "<= 32 MiB")
    r = round(big["planning_us_per_row"] / small["planning_us_per_row"], 3)
    bar(f"planning time per row, {big['rows']} / {small['rows']} rows", r, r <= 1.1,
        "<= 1.1 (linear or better)")
    if small["planner_peak_rss_kib"]:
        r = round(big["planner_peak_rss_kib"] / small["planner_peak_rss_kib"], 3)
        bar(f"planner peak RSS, {big['rows']} / {small['rows']} rows (x{big['rows'] // small['rows']}"
            " rows)", r, r <= big["rows"] / small["rows"] * 1.1, "linear or better")
    third = big["claim_by_third"]
    if "early" in third and "late" in third:
        r = round(third["late"]["claim_buffers"] / max(1, third["early"]["claim_buffers"]), 3)
        bar(f"claim buffers late / early in the {big['rows']}-row run", r, r <= 1.2, "<= 1.2 (flat)")
    per = big["control_plane_bytes_per_batch"]
    per_small = small["control_plane_bytes_per_batch"]
    r = round(sum(per.values()) / max(1, sum(per_small.values())), 3)
    bar(f"control-plane bytes per batch, {big['rows']} / {small['rows']} rows", r, r <= 1.2,
        "<= 1.2 (flat)")
    return out


def print_part(part):
    print("\nten million rows (rekey 2 proc x conc 1, BENCH_FULL):")
    for p in part["points"]:
        th = p["claim_by_third"]
        claim = ", ".join(f"{k} {v['claim_ms']} ms / {v['claim_buffers']} buffers"
                          for k, v in th.items())
        print(f"  {p['rows']:>9} rows  {p['wall_s']:8.2f} s  {p['us_per_row']:6.2f} us/row  /A2 "
              f"{p['ratio_A2']}  planning {p['planning_s']:.2f} s (planner RSS "
              f"{p['planner_peak_rss_kib'] // 1024} MiB)  worker RSS "
              f"{p['worker_peak_rss_kib'] // 1024} MiB  claim: {claim}  control plane "
              f"{sum(p['control_plane_bytes_per_batch'].values()):.0f} B/batch")
    for b in part["bars"]:
        print(f"  {'MET ' if b['met'] else 'NOT '} {b['bar']}: {b['value']} (target {b['target']})")
