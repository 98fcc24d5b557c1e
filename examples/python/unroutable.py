#!/usr/bin/env python3
"""List the tasks in warren.delay.unroutable (delayed tasks whose queue was gone when their delay
ended, docs/operations.md), or with --move put each one whose queue exists again into that
queue, leaving the others.

    pip install -r requirements.txt
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 unroutable.py
    python3 unroutable.py --move

Declare a task's queue first (e.g. by starting its worker) to have it moved. A moved task is
acked only once the broker confirmed it in its queue: a crash in between duplicates it at
worst. The tasks not moved stay, in their order.

Exit codes: 0 done; 1 the broker could not be reached; 2 bad arguments; 6 there is no
warren.delay.unroutable (no Warren of this version declared the delay cascade).
"""

import argparse
import os
import sys

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker, UnroutableError

from publish import DEFAULT_URL, masked

UNROUTABLE = "warren.delay.unroutable"
EXIT_UNREACHABLE = 1
EXIT_NO_QUEUE = 6


def go_through(channel, move):
    """Prints each task and, with `move`, puts it back into its queue if that exists."""
    channel.confirm_delivery()
    # Count first: a task put back is not read twice.
    count = channel.queue_declare(UNROUTABLE, passive=True).method.message_count
    moved = 0
    for _ in range(count):
        method, properties, body = channel.basic_get(UNROUTABLE, auto_ack=False)
        if method is None:
            break
        # The routing key is the 28 delay bits, then the queue the task was delayed for.
        queue = method.routing_key.split(".", 28)[-1]
        print(properties.message_id, properties.type, queue, len(body), "bytes")
        if move:
            try:
                # Straight to the queue (default exchange); returned if it still does not exist.
                channel.basic_publish("", queue, body, properties=properties, mandatory=True)
                channel.basic_ack(method.delivery_tag)
                moved += 1
                continue
            except UnroutableError:
                print(f"  queue {queue!r} does not exist: left in {UNROUTABLE}")
    # Everything not moved goes back, in its order (held until now, so that none is read twice).
    channel.basic_nack(0, multiple=True, requeue=True)
    print(f"{count} in {UNROUTABLE}" + (f", {moved} moved" if move else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=f"List or move the tasks in {UNROUTABLE}.")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL),
                        help="broker URL (default: $AMQP_URL, else the local broker)")
    parser.add_argument("--move", action="store_true",
                        help="put each task whose queue exists again into that queue")
    args = parser.parse_args(argv)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
    except AMQPConnectionError as error:
        print(f"error: cannot connect to {masked(args.url)}: {error!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        go_through(connection.channel(), args.move)
    except ChannelClosedByBroker as error:
        print(f"error: {error.reply_code} {error.reply_text}", file=sys.stderr)
        return EXIT_NO_QUEUE
    finally:
        if connection.is_open:
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
