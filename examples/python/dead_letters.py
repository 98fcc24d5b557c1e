#!/usr/bin/env python3
"""Read the dead letters of a Warren queue from Python with pika, and tell who dead-lettered
each: a worker, which wrote its record in the x-warren-dead-* headers (docs/wire-format.md
§8.4), or the broker, which left only its x-death history (§8.5).

    pip install -r requirements.txt
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 dead_letters.py --queue default

Prints one JSON object per dead letter, with the keys of `warren-producer dead-letters list
--json`: id, task, kind (`broker:<reason>` for the broker's), reason, attempts. The dead
letters are taken without being acked and all given back at the end (basic.nack with requeue),
so the queue keeps every one of them; a quorum queue counts the return in their
x-delivery-count, and the order may change. `warren-producer dead-letters list` keeps it
(§8.6).

Exit codes: 0 done; 1 the broker could not be reached; 2 bad arguments; 6 no such queue.
"""

import argparse
import json
import os
import sys

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

from publish import DEFAULT_URL, masked

EXIT_UNREACHABLE = 1
EXIT_NO_QUEUE = 6


def text(value):
    """A header string: pika gives long strings as str, or as bytes when not UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_dead_letter(properties):
    """The record of a dead letter, read as docs/wire-format.md §8.4 and §8.5 describe."""
    h = properties.headers or {}
    if "x-warren-dead-kind" in h:  # dead-lettered by a worker
        kind = text(h["x-warren-dead-kind"])
        reason = text(h.get("x-warren-dead-reason", ""))
        attempts = h.get("x-warren-dead-attempts", 1)
    else:  # dead-lettered by the broker: the newest x-death entry comes first
        deaths = h.get("x-death") or [{}]
        why = text(deaths[0].get("reason") or h.get("x-first-death-reason") or "unknown")
        kind = f"broker:{why}"
        reason = f"dead-lettered by the broker ({why})"
        attempts = h.get("x-warren-attempt", 1)
    return {
        "id": properties.message_id,
        "task": properties.type,
        "kind": kind,
        "reason": reason,
        "attempts": int(text(attempts)),
    }


def list_dead_letters(channel, queue, limit):
    """Up to `limit` dead letters of `queue`, each taken unacked, then all given back."""
    found, last_tag = [], None
    while len(found) < limit:
        method, properties, _body = channel.basic_get(f"{queue}.dead", auto_ack=False)
        if method is None:  # none left
            break
        found.append(read_dead_letter(properties))
        last_tag = method.delivery_tag
    if last_tag is not None:  # give them all back; basic_ack instead would delete them
        channel.basic_nack(last_tag, multiple=True, requeue=True)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description="List a Warren queue's dead letters.")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL),
                        help="broker URL (default: $AMQP_URL, else the local broker)")
    parser.add_argument("--queue", default="default", help="the work queue (not `.dead`)")
    parser.add_argument("--limit", type=int, default=100, help="most dead letters shown")
    args = parser.parse_args(argv)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
    except AMQPConnectionError as error:
        print(f"error: cannot connect to {masked(args.url)}: {error!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        for dead in list_dead_letters(connection.channel(), args.queue, args.limit):
            print(json.dumps(dead, ensure_ascii=False))
    except ChannelClosedByBroker as error:
        print(f"error: {error.reply_code} {error.reply_text}", file=sys.stderr)
        return EXIT_NO_QUEUE
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
