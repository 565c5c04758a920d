#!/usr/bin/env python3
"""A whole deployment's life, driven from Python (nats-py + msgpack) with
nothing but the contract in docs/bus.md:

  1. put an analyzer module into the tm_blobs object store, with its
     metadata (nats-py has no object-metadata field: the object's info is
     rewritten with a rollup, as docs/bus.md says);
  2. load it on one monitor (tm.v1.mon.<monitor>.load.<requester>);
  3. wait until the monitor's replay of the link has finished (its status);
  4. collect the results; configure new params; status; unload;
  5. read the deployment's events from the TM_EVENTS stream.

Every step prints one JSON line ({"step": ..., ...}); an error reply stops
the client with status 1 and prints the error's code and message.

    pip install nats-py msgpack        (xtask/setup.sh does it)
    python3 examples/client.py --monitor 10-9-0-1 --wasm target/wasm/packet-count.wasm \\
        --deployment py-1 --params '{"label": "first"}' --configure '{"label": "second"}'

Without credentials (a lab), any requester id is accepted; with them, the
requester must be the identity the client connects as (--creds).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import time

import msgpack
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

BLOBS = "tm_blobs"
EVENTS = "TM_EVENTS"


class Refused(Exception):
    """An error reply: {"err": {"code", "message"}}."""


def parse_args():
    ap = argparse.ArgumentParser(description="Put, load, collect, configure, status and unload one analyzer on one monitor.")
    ap.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL (default: %(default)s)")
    ap.add_argument("--creds", help="NATS credentials (nkey seed file from tmctl auth init)")
    ap.add_argument("--monitor", required=True, help="monitor id (its address with '.' and ':' as '-')")
    ap.add_argument("--wasm", required=True, help="the analyzer module (.wasm)")
    ap.add_argument("--name", help="blob name (default: the file name without .wasm)")
    ap.add_argument("--deployment", default="py-client", help="deployment id (default: %(default)s)")
    ap.add_argument("--requester", default="py-client", help="who the commands are sent as: the owner (default: %(default)s)")
    ap.add_argument("--link", type=int, action="append", default=[], help="link id (repeatable; default: every link)")
    ap.add_argument("--params", default="null", help="analyzer params, JSON (default: the analyzer's defaults)")
    ap.add_argument("--configure", help="params to configure after the first collect, JSON")
    ap.add_argument("--timeout-s", type=float, default=60, help="how long to wait for the replay (default: %(default)s)")
    return ap.parse_args()


def say(step, **fields):
    print(json.dumps({"step": step, **fields}, sort_keys=True), flush=True)


def unpack(data):
    # Per-link maps are keyed by integers (docs/bus.md, Encoding).
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


async def command(nc, monitor, verb, requester, body):
    """Sends one monitor command and returns the reply's answer."""
    subject = f"tm.v1.mon.{monitor}.{verb}.{requester}"
    msg = await nc.request(subject, msgpack.packb(body), timeout=30)
    reply = unpack(msg.data)
    if "err" in reply:
        raise Refused(f"{verb}: {reply['err']['code']}: {reply['err']['message']}")
    return reply["ok"]


async def put_blob(js, path, name):
    """Stores the module and writes its tm-* metadata into the object info."""
    data = open(path, "rb").read()
    sha256 = hashlib.sha256(data).hexdigest()
    store = await js.object_store(BLOBS)
    await store.put(name, data)
    # The info is the last message on $O.<bucket>.M.<base64url(name)>, as JSON.
    subject = f"$O.{BLOBS}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    last = await js.get_last_msg(f"OBJ_{BLOBS}", subject)
    info = json.loads(last.data)
    info["metadata"] = {
        "tm-kind": "analyzer",
        "tm-version": "0.1.0",
        "tm-sha256": sha256,
        "tm-abi": "1",
        "tm-description": f"{name}, put by examples/client.py",
    }
    await js.publish(subject, json.dumps(info).encode(), headers={"Nats-Rollup": "sub"})
    return sha256, len(data)


async def events_of(js, monitor, deployment, until_kind="unloaded", wait_s=10.0):
    """Every event of the deployment the stream holds (an ephemeral consumer),
    read until one of kind `until_kind` arrives (a deployment's events are
    published in order, so the earlier ones are there by then) or `wait_s`
    passes: the monitor publishes events asynchronously, after its reply."""
    sub = await js.pull_subscribe(
        f"tm.v1.events.{monitor}.{deployment}",
        stream=EVENTS,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out = []
    deadline = time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except NatsTimeout:
                msgs = []
            for m in msgs:
                out.append(unpack(m.data))
                await m.ack()
            if any(e.get("kind") == until_kind for e in out):
                break
    finally:
        await sub.unsubscribe()
    return out


async def main():
    a = parse_args()
    name = a.name or a.wasm.rsplit("/", 1)[-1].removesuffix(".wasm")
    options = {"user_credentials": a.creds} if a.creds else {}
    nc = await nats.connect(a.nats, **options)
    js = nc.jetstream()
    try:
        sha256, size = await put_blob(js, a.wasm, name)
        say("put", name=name, sha256=sha256, bytes=size)

        load = {
            "deployment": a.deployment,
            "analyzer": {"name": name, "sha256": sha256},
            "params": json.loads(a.params),
            "links": a.link,
            "owner": a.requester,
        }
        loaded = await command(nc, a.monitor, "load", a.requester, load)
        say("load", run=loaded["run"], links=loaded["links"], not_capturing=loaded["not_capturing"])

        # The replay has finished when every link of the deployment is.
        deadline = time.monotonic() + a.timeout_s
        while True:
            st = await command(nc, a.monitor, "status", a.requester, {"deployment": a.deployment})
            links = [l for l in st["links"] if l["link"]["id"] in loaded["links"]]
            failed = [l for l in links if l["state"] == "failed"]
            if failed:
                raise Refused(f"link {failed[0]['link']['id']} failed: {failed[0]['last_error']}")
            if all(l["state"] == "finished" for l in links):
                break
            if time.monotonic() > deadline:
                raise Refused(f"the replay did not finish in {a.timeout_s} s")
            await asyncio.sleep(0.2)
        say("replayed", packets=sum(l["packets"] for l in links))

        window = await command(nc, a.monitor, "collect", a.requester, {"deployment": a.deployment})
        say("collect", seq=window["seq"], run=window["run"], stats=window["stats"], results=window["results"])

        if a.configure is not None:
            configured = await command(
                nc,
                a.monitor,
                "configure",
                a.requester,
                {"deployment": a.deployment, "requester": a.requester, "params": json.loads(a.configure), "force": False},
            )
            say("configure", config_revision=configured["config_revision"])

        st = await command(nc, a.monitor, "status", a.requester, {"deployment": a.deployment})
        d = st["deployments"][0]
        say("status", state=d["state"], config_revision=d["config_revision"], stats=d["stats"], outbox=st["outbox"])

        unloaded = await command(
            nc, a.monitor, "unload", a.requester, {"deployment": a.deployment, "requester": a.requester, "force": False}
        )
        fin = unloaded["final_results"]
        say("unload", seq=fin["seq"], last=fin["last"], stats=fin["stats"], results=fin["results"])

        events = await events_of(js, a.monitor, a.deployment)
        say("events", kinds=[e["kind"] for e in events if e["run"] == loaded["run"]])
    except Refused as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
