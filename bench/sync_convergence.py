"""Room convergence under random partitions, heals and forgeries: the issue's figures.

    python bench/sync_convergence.py [--runs 1000] [--first-seed 0] [--show-failures 5]

Runs the seeded scenarios of ``tests/unit/test_sync_convergence.py``
(:func:`run_scenario`; its module docs say what one run does and checks):
3-5 honest peers and one adversary on the in-memory RoomNetwork, random
concurrent edits, links, cuts and partial deliveries, forged envelopes and
rule-breaking writes, then a heal. Prints one Markdown table:

* runs, peers (total over runs), closed-room runs, edits (local transactions),
  partitions (cuts of a live link), envelopes (in the owner's final log);
* forgeries injected and rule-breaking writes the adversary made;
* lost updates (honest envelopes missing from some log, rows or characters
  missing from the documents), forged accepted (forged envelopes in a log or
  their effect in a document), refused writes applied;
* failed runs (any broken property, including documents that differ), and
  the elapsed wall-clock seconds.

Replay one run with ``LNB_CONVERGENCE_SEED=<seed> python -m pytest
tests/unit/test_sync_convergence.py -k random_partitions``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / "tests" / "unit"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from test_sync_convergence import RunReport, run_scenario  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--show-failures", type=int, default=5)
    args = parser.parse_args(argv)
    logging.getLogger("lattica_nb.sync").setLevel(logging.ERROR)  # a WARNING per forgery
    print("python bench/sync_convergence.py " + " ".join(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    reports: list[RunReport] = [
        run_scenario(seed) for seed in range(args.first_seed, args.first_seed + args.runs)
    ]
    elapsed = time.perf_counter() - start
    failed = [r for r in reports if r.problems]
    rows = [
        ("runs", len(reports)),
        ("peers (honest, total)", sum(r.peers for r in reports)),
        ("closed-room runs", sum(r.closed for r in reports)),
        ("runs with a member listed mid-run", sum(r.late_member for r in reports)),
        ("edits (local transactions)", sum(r.edits for r in reports)),
        ("partitions (live links cut)", sum(r.partitions for r in reports)),
        ("partial deliveries", sum(r.partial_pumps for r in reports)),
        ("envelopes (final logs)", sum(r.envelopes for r in reports)),
        ("forgeries injected", sum(r.forgeries for r in reports)),
        ("rule-breaking writes", sum(r.breaches for r in reports)),
        ("lost updates", sum(r.lost_updates for r in reports)),
        ("forged accepted", sum(r.forged_accepted for r in reports)),
        ("refused writes applied", sum(r.breaches_applied for r in reports)),
        ("failed runs", len(failed)),
        ("elapsed s", f"{elapsed:.1f}"),
    ]
    print()
    print("| figure | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for report in failed[: args.show_failures]:
        print(f"\nseed {report.seed}: " + "; ".join(report.problems[:5]))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
