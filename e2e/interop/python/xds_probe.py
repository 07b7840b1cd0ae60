#!/usr/bin/env python3
"""Drive grpcio's built-in xDS client against pilot, for e2e/tests/grpcio_xds.rs.

    GRPC_XDS_BOOTSTRAP=bootstrap.json python3 xds_probe.py [--timeout S] TARGET...

Opens one channel per TARGET (e.g. xds:///reviews.default.svc.cluster.local:9080),
asks each to connect, which makes the xDS resolver fetch LDS, RDS, CDS and EDS
from pilot, then makes one RPC per channel with a deadline. There are no real
backends, so UNAVAILABLE or DEADLINE_EXCEEDED are the expected outcomes; what
the test checks is what the client ACKed, through pilot's /debug/syncz.

Prints one JSON line, {"TARGET": {"state": ..., "code": ..., "details": ...}},
then stays connected to pilot until stdin closes (or --linger seconds pass), so
the test can inspect the ADS stream while it is still open.
"""

import argparse
import json
import os
import sys
import threading
import time

import grpc


def probe(channel, timeout):
    """Connect and make one RPC; return what the channel saw."""
    states = []
    channel.subscribe(lambda s: states.append(s.name), try_to_connect=True)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        pass
    call = channel.unary_unary(
        "/keel.echo.Echo/Echo",
        request_serializer=None,
        response_deserializer=None,
    )
    try:
        call(b"", timeout=timeout)
        code, details = "OK", ""
    except grpc.RpcError as err:
        code, details = err.code().name, err.details()
    return {"states": states, "code": code, "details": details}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", help="xds:///host:port targets")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per step")
    parser.add_argument("--linger", type=float, default=60.0,
                        help="seconds to stay connected after probing, at most")
    args = parser.parse_args()
    if not os.environ.get("GRPC_XDS_BOOTSTRAP"):
        sys.exit("xds_probe.py: set GRPC_XDS_BOOTSTRAP to the xDS bootstrap JSON file")

    channels = {t: grpc.insecure_channel(t) for t in args.targets}
    results = {}

    def run(target):
        results[target] = probe(channels[target], args.timeout)

    threads = [threading.Thread(target=run, args=(t,)) for t in args.targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results), flush=True)

    # Keep the channels, and so the ADS stream, open until the test is done.
    done = threading.Event()

    def wait_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    deadline = time.monotonic() + args.linger
    while not done.is_set() and time.monotonic() < deadline:
        done.wait(0.1)
    for ch in channels.values():
        ch.close()


if __name__ == "__main__":
    main()
