"""Driver, run inside a loopback-only namespace: two Lattica peers meet through a bootstrap.

    python two_lattica_peers.py --transport quic-v1|tcp

Peer A listens on QUIC and TCP; peer B is built with A's ``--transport``
address as its only bootstrap. The driver waits (with deadlines, never a
sleep) until each lists the other in ``get_all_peers`` with identify done,
asks each for ``peer_info`` about the other, and prints one JSON line:

    {"a": {peer_id, listen_addrs}, "b": {...}, "b_found_a": {...}, "a_found_b": {...},
     "info_b_about_a": {...}, "info_a_about_b": {...}, "rtt_ms_b_to_a": ...}

The pytest side asserts on it; this script only gathers facts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lattica_nb.testing.foreign_peers import PeerProcess  # noqa: E402

LATTICA_PEER = HERE.parent / "peers" / "lattica_peer.py"
START_TIMEOUT_S = 30.0
MEET_TIMEOUT_S = 15.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("quic-v1", "tcp"), default="quic-v1")
    args = parser.parse_args()

    peer = [sys.executable, str(LATTICA_PEER)]
    with PeerProcess(peer, name="lattica-a") as a:
        ready_a = a.start(timeout_s=START_TIMEOUT_S)
        bootstrap = ready_a.addr(args.transport)
        with PeerProcess([*peer, "--bootstrap", bootstrap], name="lattica-b") as b:
            ready_b = b.start(timeout_s=START_TIMEOUT_S)
            wait = {"cmd": "wait_peer", "timeout": MEET_TIMEOUT_S, "identified": True}
            b_found_a = b.request({**wait, "peer": ready_a.peer_id}, MEET_TIMEOUT_S + 5)
            a_found_b = a.request({**wait, "peer": ready_b.peer_id}, MEET_TIMEOUT_S + 5)
            info_b_about_a = b.request({"cmd": "peer_info", "peer": ready_a.peer_id})["info"]
            info_a_about_b = a.request({"cmd": "peer_info", "peer": ready_b.peer_id})["info"]
            rtt = b.request({"cmd": "rtt", "peer": ready_a.peer_id})["rtt_ms"]
    facts = {
        "transport": args.transport,
        "bootstrap": bootstrap,
        "a": {"peer_id": ready_a.peer_id, "listen_addrs": list(ready_a.listen_addrs)},
        "b": {"peer_id": ready_b.peer_id, "listen_addrs": list(ready_b.listen_addrs)},
        "b_found_a": b_found_a,
        "a_found_b": a_found_b,
        "info_b_about_a": info_b_about_a,
        "info_a_about_b": info_a_about_b,
        "rtt_ms_b_to_a": rtt,
    }
    print(json.dumps(facts), flush=True)


if __name__ == "__main__":
    main()
