#!/usr/bin/env python3
"""Declare a Warren work queue and the delay cascade from Python with pika, exactly as a Warren
worker declares them (docs/wire-format.md §6 and §7), so that a producer can publish before any
worker has started; or, with --check, only check that they exist.

    pip install -r requirements.txt
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 declare.py --queue default
    python3 declare.py --queue default --check

The defaults match a worker started without --queue-type, --max-priority or
--dead-letter-max-* flags. Give the same values as your workers: a queue's arguments cannot
change once it exists, and the broker refuses a declaration that differs (406
PRECONDITION_FAILED, docs/wire-format.md §6.6), closing the channel.

Replace any older copy of declare_delay_cascade(): earlier versions declared classic level
queues named `warren.delay.NN` and bound them, so that every delayed task they route is
delivered twice beside Warren's quorum levels (§7.3); this one unbinds them. On a broker where
an earlier Warren created `warren.delay.deliver` without its alternate exchange, declaring it
with one is refused (406 PRECONDITION_FAILED - inequivalent arg 'alternate-exchange'): set the
alternate exchange with the policy in docs/operations.md ("Upgrading from the classic delay
cascade") and use --check, which declares passively.

Exit codes: 0 declared (or, with --check, all there); 1 the broker could not be reached;
2 bad arguments; 6 the broker refused a declaration, or with --check something is missing
(the message says what).
"""

import argparse
import os
import sys

import pika
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

from publish import DEFAULT_URL, EXCHANGE, masked

EXIT_UNREACHABLE = 1
EXIT_REFUSED = 6


def declare_work_queue(channel, queue="default", queue_type="quorum", max_priority=None,
                       dead_letter_max_length=100_000,
                       dead_letter_max_age_ms=14 * 24 * 3600 * 1000):
    channel.exchange_declare(EXCHANGE, exchange_type="direct", durable=True)
    # With its alternate exchange, as Warren declares it (§6.1). On a broker where an earlier
    # Warren created it without one this is refused (406): see the module's docstring.
    channel.exchange_declare("warren.delay.deliver", exchange_type="topic", durable=True,
                             arguments={"alternate-exchange": "warren.delay.unroutable"})
    arguments = {
        "x-queue-type": queue_type,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{queue}.dead",
    }
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = 50
    if max_priority is not None:          # 1-9, classic queues only
        arguments["x-max-priority"] = max_priority
    channel.queue_declare(queue, durable=True, arguments=arguments)
    dead_arguments = {"x-queue-type": queue_type}
    if dead_letter_max_length:            # 0: no limit, argument left out
        dead_arguments["x-max-length"] = dead_letter_max_length
    if dead_letter_max_age_ms:            # 0: kept forever, argument left out
        dead_arguments["x-message-ttl"] = dead_letter_max_age_ms
    channel.queue_declare(f"{queue}.dead", durable=True, arguments=dead_arguments)
    channel.queue_bind(queue, EXCHANGE, routing_key=queue)
    channel.queue_bind(queue, "warren.delay.deliver", routing_key="*." * 28 + queue)


def declare_delay_cascade(channel):
    unroutable = "warren.delay.unroutable"
    channel.exchange_declare(unroutable, exchange_type="fanout", durable=True)
    channel.queue_declare(unroutable, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(unroutable, unroutable, routing_key="")
    below = "warren.delay.deliver"
    channel.exchange_declare(below, exchange_type="topic", durable=True,
                             arguments={"alternate-exchange": unroutable})
    for k in range(28):
        channel.exchange_declare(f"warren.delay.{k:02d}", exchange_type="topic", durable=True)
    for k in range(28):
        name = f"warren.delay.{k:02d}"
        queue = f"{name}.quorum"
        channel.queue_declare(queue, durable=True, arguments={
            "x-queue-type": "quorum",
            "x-message-ttl": (1 << k) * 1000,
            "x-dead-letter-exchange": below,
        })
        skip = "*." * (27 - k)
        channel.queue_bind(queue, name, routing_key=skip + "1.#")
        channel.exchange_bind(destination=below, source=name, routing_key=skip + "0.#")
        # The classic level queue of earlier versions must not stay bound (§7.3).
        channel.queue_unbind(name, name, routing_key=skip + "1.#")
        below = name


def check_declared(connection, queue):
    """Names what is missing of `queue`, its dead-letter queue and the cascade's two ends, each
    checked by a passive declare on a channel of its own (a 404 closes it)."""
    missing = []
    checks = [(queue, "queue"), (f"{queue}.dead", "queue"),
              ("warren.delay.deliver", "exchange"), ("warren.delay.27", "exchange")]
    for name, kind in checks:
        channel = connection.channel()
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
            channel.close()
        except ChannelClosedByBroker as error:
            if error.reply_code != 404:
                raise
            missing.append(f"{kind} `{name}`")
    return missing


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Declare a Warren queue and the delay cascade.")
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL),
                        help="broker URL (default: $AMQP_URL, else the local broker)")
    parser.add_argument("--queue", default="default", help="work queue")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--max-priority", type=int, choices=range(1, 10), metavar="1-9",
                        help="declare a priority queue (classic only)")
    parser.add_argument("--dead-letter-max-length", type=int, default=100_000,
                        help="dead letters kept (0: no limit)")
    parser.add_argument("--dead-letter-max-age-ms", type=int, default=14 * 24 * 3600 * 1000,
                        help="how long dead letters are kept, in ms (0: forever)")
    parser.add_argument("--check", action="store_true",
                        help="declare nothing: check passively that everything exists")
    args = parser.parse_args(argv)
    if args.max_priority is not None and args.queue_type != "classic":
        parser.error("--max-priority needs --queue-type classic (quorum queues have none)")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
    except AMQPConnectionError as error:
        print(f"error: cannot connect to {masked(args.url)}: {error!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        if args.check:
            missing = check_declared(connection, args.queue)
            if missing:
                print(f"error: missing: {', '.join(missing)}", file=sys.stderr)
                return EXIT_REFUSED
            print(f"`{args.queue}` and the delay cascade exist")
            return 0
        channel = connection.channel()
        declare_delay_cascade(channel)
        declare_work_queue(channel, args.queue, args.queue_type, args.max_priority,
                           args.dead_letter_max_length, args.dead_letter_max_age_ms)
    except ChannelClosedByBroker as error:
        print(f"error: the broker refused a declaration: {error.reply_code} {error.reply_text}",
              file=sys.stderr)
        return EXIT_REFUSED
    finally:
        if connection.is_open:
            connection.close()
    print(f"declared `{args.queue}`, `{args.queue}.dead` and the delay cascade")
    return 0


if __name__ == "__main__":
    sys.exit(main())
