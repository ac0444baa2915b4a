"""Kademlia at scale in simulation: the real DHT cores over a discrete-event network.

    python bench/dht_sim.py --nodes 1000 10000 --lookups 1000 --churn 0 0.1
                            [--records 100] [--loss 0] [--timeout-s 1] [--latency-ms 5 50]
                            [--alpha 3] [--k 20] [--seed 1] [--jobs N]

Each (nodes, churn) pair is one run of :func:`lattica_nb.testing.kadsim.simulate`:
nodes join one by one (each bootstraps with a lookup of its own id through one
random node already in), ``--records`` values and provider records are
published, then ``--lookups`` FIND_NODE (of random live peers), GET_VALUE and
GET_PROVIDERS (of published keys) start from random live nodes, 20 ms apart.
With churn, that fraction of the nodes leaves during the first half of the query
phase without telling anyone. Runs go to ``--jobs`` worker processes (one per
core by default); each row says how long its own run took.

Hops: those of the peer whose answer delivered the result (seeds are 1 hop; a
peer already in the requester's table is 0). Requests/lookup: requests the
query sent (each gets at most one answer). To departed: requests sent to nodes
that had left. Timeouts: requests that timed out while the query still ran (a
query that succeeds sooner abandons the rest). Latency: simulated seconds from
start to result. Table: median routing-table size of the live nodes at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from lattica_nb.testing.kadsim import SimConfig, SimReport, simulate


def _run(config: SimConfig) -> tuple[SimReport, float]:
    started = time.perf_counter()
    report = simulate(config)
    return report, time.perf_counter() - started


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000])
    parser.add_argument("--churn", type=float, nargs="+", default=[0.0])
    parser.add_argument("--lookups", type=int, default=1000, help="of each kind")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, nargs=2, default=[5.0, 50.0])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--refresh-on-join", action="store_true",
                        help="joining nodes also refresh every bucket, as Dht.bootstrap does")
    args = parser.parse_args(argv)

    configs = [
        SimConfig(nodes=n, churn=c, lookups=args.lookups, records=args.records, loss=args.loss,
                  request_timeout_s=args.timeout_s, min_latency_s=args.latency_ms[0] / 1000,
                  max_latency_s=args.latency_ms[1] / 1000, k=args.k, alpha=args.alpha,
                  refresh_on_join=args.refresh_on_join, seed=args.seed)
        for n in args.nodes for c in args.churn
    ]
    print(f"k={args.k} alpha={args.alpha} request timeout {args.timeout_s:g} s, one-way latency "
          f"{args.latency_ms[0]:g}–{args.latency_ms[1]:g} ms, loss {args.loss:g}, "
          f"{args.records} records + {args.records} provider records, "
          f"{args.lookups} lookups of each kind, seed {args.seed}; joins: sequential bootstrap "
          f"lookups of the own id{' + bucket refresh' if args.refresh_on_join else ''} "
          "(no global knowledge)\n")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(configs)))) as pool:
        results = list(pool.map(_run, configs))
    print("| nodes | churn | kind | lookups | success | hops p50 | hops p99 | requests/lookup "
          "| to departed/lookup | timeouts/lookup | latency p50 (s) | latency p99 (s) "
          "| table p50 | join requests/node | run (s) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for report, elapsed in results:
        cfg = report.config
        for row in report.rows:
            print(f"| {cfg.nodes} | {cfg.churn:.0%} | {row.kind} | {row.lookups} "
                  f"| {row.success_rate:.2%} | {_fmt(row.hops_median, 0)} "
                  f"| {_fmt(row.hops_p99)} | {row.requests_per_lookup:.1f} "
                  f"| {row.departed_per_lookup:.2f} | {row.timeouts_per_lookup:.2f} "
                  f"| {_fmt(row.latency_median_s, 3)} | {_fmt(row.latency_p99_s, 3)} "
                  f"| {report.table_size_median:.0f} | {report.join_requests_per_node:.1f} "
                  f"| {elapsed:.1f} |")
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s "
          f"({min(args.jobs, len(configs))} worker processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
