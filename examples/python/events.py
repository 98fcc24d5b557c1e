#!/usr/bin/env python3
"""Follow Warren's events stream from Python with pika, reading only what
docs/wire-format.md §11 documents: what happened to each task, and the workers' heartbeats.

    pip install -r requirements.txt
    python3 events.py warren.events --idle 2 --url amqp://guest:guest@127.0.0.1:5672/%2f

Prints one JSON object per line: each event with its `source` and `seq` added from its batch
(§11.2, §11.3), and each heartbeat or farewell (§11.7) with a `record` key saying which.
Reads from the stream's start unless --offset says otherwise; stops after --idle seconds
without a message (or runs until interrupted).

Exit codes: 0 done; 1 the broker could not be reached; 2 bad arguments; 6 no such stream.
"""

import argparse
import json
import os
import sys

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

from publish import DEFAULT_URL, masked

EXIT_UNREACHABLE = 1
EXIT_NO_STREAM = 6


def text(value):
    """A header string: pika gives long strings as str, or as bytes when not UTF-8."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_message(properties, body):
    """The records of one message of the stream: a batch's events, or one heartbeat."""
    headers = properties.headers or {}
    source = text(headers.get("x-warren-source"))
    record = headers.get("x-warren-record")
    if record is not None:  # a heartbeat or a farewell (§11.7)
        return [{"record": text(record), **json.loads(body)}]
    first = int(headers["x-warren-first-seq"])  # a batch (§11.2)
    events = []
    for n, line in enumerate(body.splitlines()):
        event = json.loads(line)
        event["source"] = source
        event["seq"] = first + n
        events.append(event)
    return events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", help="the events stream, e.g. warren.events")
    parser.add_argument(
        "--offset",
        default="first",
        help="where to start: first, next, last, or an offset from an earlier delivery",
    )
    parser.add_argument(
        "--idle", type=float, help="stop after this many seconds without a message"
    )
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL),
                        help="broker URL (default: $AMQP_URL, else the local broker)")
    args = parser.parse_args()
    offset = int(args.offset) if args.offset.isdigit() else args.offset
    url = args.url
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except AMQPConnectionError as error:
        print(f"error: cannot reach {masked(url)}: {error!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    channel = connection.channel()
    # A stream refuses a consumer without a prefetch limit, or one that does not ack.
    channel.basic_qos(prefetch_count=100)
    try:
        messages = channel.consume(
            args.stream,
            arguments={"x-stream-offset": offset},
            inactivity_timeout=args.idle,
        )
        for method, properties, body in messages:
            if method is None:  # --idle passed without a message
                break
            for record in read_message(properties, body):
                print(json.dumps(record), flush=True)
            channel.basic_ack(method.delivery_tag)
    except ChannelClosedByBroker as error:
        if error.reply_code == 404:
            print(f"error: no stream `{args.stream}`", file=sys.stderr)
            return EXIT_NO_STREAM
        raise
    except KeyboardInterrupt:
        pass
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
