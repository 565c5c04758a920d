#!/usr/bin/env python3
"""An outside subscriber to the monitors' result windows, in nats-py.

Reads the TM_RESULTS stream (subjects tm.v1.results.<monitor>.<deployment>)
through a durable pull consumer with explicit acks, decodes each window
(MessagePack with field names, see docs/bus.md) and prints one JSON line per
window:

    {"stream_seq": 12, "monitor": "10-9-0-1", "deployment": "pc", "seq": 4,
     "last": false, "packets_in": 5120, "results": {...}}

A window is acknowledged only after it is printed. A durable consumer
resumes where it stopped, so a subscriber restarted with the same
--durable name neither skips nor repeats a window; a redelivered message
(an ack lost in flight) is recognised by its stream sequence and skipped.

    pip install nats-py msgpack        (xtask/setup.sh does it)
    python3 examples/subscriber.py --nats nats://127.0.0.1:4222
    python3 examples/subscriber.py --deployment pc --until-last 3 --idle-s 30
"""

import argparse
import asyncio
import json
import sys

import msgpack
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

STREAM = "TM_RESULTS"


def parse_args():
    ap = argparse.ArgumentParser(
        description="Print every result window of TM_RESULTS once, in stream order, as JSON lines."
    )
    ap.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL (default: %(default)s)")
    ap.add_argument("--deployment", default="*", help="only this deployment's windows (default: all)")
    ap.add_argument("--monitor", default="*", help="only this monitor's windows (default: all)")
    ap.add_argument(
        "--durable",
        default="tm-example-subscriber",
        help="durable consumer name; a restart with the same name resumes (default: %(default)s)",
    )
    ap.add_argument(
        "--until-last",
        type=int,
        default=0,
        metavar="N",
        help="exit after N windows with last=true (one per monitor at unload); 0: never",
    )
    ap.add_argument(
        "--idle-s", type=float, default=0, help="exit with status 3 after this long without a window (0: never)"
    )
    ap.add_argument("--no-results", action="store_true", help="leave the analyzer's results out of each line")
    return ap.parse_args()


async def run(args):
    nc = await nats.connect(args.nats, name="tm-example-subscriber")
    js = nc.jetstream()
    subject = f"tm.v1.results.{args.monitor}.{args.deployment}"
    sub = await js.pull_subscribe(
        subject,
        durable=args.durable,
        stream=STREAM,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
        ),
    )
    print(f"subscribed to {subject} in {STREAM}", file=sys.stderr, flush=True)
    last_stream_seq = 0
    lasts = 0
    idle = 0.0
    status = 0
    while args.until_last == 0 or lasts < args.until_last:
        try:
            msgs = await sub.fetch(batch=100, timeout=1)
        except NatsTimeout:
            idle += 1
            if args.idle_s and idle >= args.idle_s:
                print(f"no window for {args.idle_s} s; stopping", file=sys.stderr, flush=True)
                status = 3
                break
            continue
        idle = 0.0
        for m in msgs:
            stream_seq = m.metadata.sequence.stream
            if stream_seq <= last_stream_seq:
                # Redelivered after a lost ack: already printed.
                await m.ack()
                continue
            w = msgpack.unpackb(m.data, raw=False, strict_map_key=False)
            line = {
                "stream_seq": stream_seq,
                "monitor": w["monitor"],
                "deployment": w["deployment"],
                "seq": w["seq"],
                "last": w["last"],
                "packets_in": w["stats"]["packets_in"],
            }
            if not args.no_results:
                line["results"] = w["results"]
            print(json.dumps(line, default=repr), flush=True)
            await m.ack()
            last_stream_seq = stream_seq
            if w["last"]:
                lasts += 1
    await nc.close()
    return status


def main():
    args = parse_args()
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
