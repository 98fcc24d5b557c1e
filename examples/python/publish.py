#!/usr/bin/env python3
"""Publish one Warren task from Python with pika, over plain AMQP 0-9-1.

Follows docs/wire-format.md: a persistent JSON message on the direct exchange `warren`, routing
key = the work queue, `type` = the task name, `message_id` = the task id, the Warren headers,
`mandatory` set and publisher confirms on. Prints the task id once the broker has confirmed it.

    pip install -r requirements.txt
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
        python3 publish.py --queue default --task demo.echo --payload '{"text": "hi"}'

The queue must exist: declared by a worker consuming it, by `warren-producer publish`, or by
declare.py. Otherwise the broker returns the task (exit code 3) and it is stored nowhere.

With --delay SECONDS the task runs no earlier than that (rounded up to whole seconds, at most
2^28 - 1): it goes through the delay cascade (docs/wire-format.md §7), to the exchange
`warren.delay.27` with the routing key of delay_routing_key(), and carries
`x-warren-not-before-ms`. The broker confirms a delayed task once it is in the cascade, whether
or not its queue exists, and one whose queue is gone when the delay ends waits in the queue
`warren.delay.unroutable` for a person: so the queue is checked first (a passive declare). The
cascade must exist (every Warren worker declares it, as does declare.py), or the task is
returned (exit code 3).

Exit codes: 0 queued; 1 the broker could not be reached (nothing sent); 2 bad arguments;
3 unroutable (no queue bound: start a worker or declare the queue, then publish again);
4 refused by the broker (nack: publish again later); 5 outcome unknown (the connection failed
after sending: publish again with the same --id).
"""

import argparse
import json
import math
import os
import sys
import time
import urllib.parse
import uuid

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker, NackError, UnroutableError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
EXCHANGE = "warren"
DELAY_ENTRY = "warren.delay.27"
MAX_DELAY_S = (1 << 28) - 1
MAX_SHORT_STRING = 255

EXIT_UNREACHABLE = 1
EXIT_UNROUTABLE = 3
EXIT_NACKED = 4
EXIT_UNKNOWN = 5


def masked(url):
    """The URL with its password replaced by ***, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=userinfo + "@" + netloc[1]))


def new_task_id():
    # Any unique string of at most 255 bytes; UUIDv7 (Python 3.14+) sorts by time like Warren's.
    return str(uuid.uuid7() if hasattr(uuid, "uuid7") else uuid.uuid4())


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Publish one Warren task with pika.")
    parser.add_argument(
        "--url",
        default=os.environ.get("AMQP_URL", DEFAULT_URL),
        help="broker URL (default: $AMQP_URL, else the local broker)",
    )
    parser.add_argument("--queue", default="default", help="work queue (the routing key)")
    parser.add_argument("--task", required=True, help="task name: selects the worker's handler")
    parser.add_argument("--payload", default="null", help="payload as JSON (default: null)")
    parser.add_argument("--id", help="task id (default: a new UUID)")
    parser.add_argument("--delay", type=float, default=0, metavar="SECONDS",
                        help="run no earlier than this many seconds from now (default: 0)")
    args = parser.parse_args(argv)
    try:
        args.payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        parser.error(f"--payload is not valid JSON: {error}")
    if not 0 <= args.delay <= MAX_DELAY_S:
        parser.error(f"--delay must be between 0 and {MAX_DELAY_S} seconds")
    args.id = args.id or new_task_id()
    for flag, value in (("--task", args.task), ("--id", args.id), ("--queue", args.queue)):
        if not value or len(value.encode("utf-8")) > MAX_SHORT_STRING:
            parser.error(f"{flag} must be 1 to {MAX_SHORT_STRING} bytes of UTF-8")
    return args


def delay_routing_key(seconds: float, queue: str) -> str:
    secs = min(math.ceil(seconds), (1 << 28) - 1)
    return "".join(f"{(secs >> k) & 1}." for k in range(27, -1, -1)) + queue


def task_message(task, payload, task_id, delay_s=0):
    """The body and properties of a task, as docs/wire-format.md sections 2 and 3 describe."""
    now_ms = int(time.time() * 1000)
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        type=task,  # selects the handler
        message_id=task_id,  # the task id
        timestamp=now_ms // 1000,  # seconds; informational only
        headers={
            "x-warren-attempt": 1,
            "x-warren-schema": 1,
            "x-warren-created-ms": now_ms,  # an int over 2**31: pika sends it as int64
        },
    )
    if delay_s > 0:
        # When the task becomes due: its latency is measured from then, not from its creation.
        properties.headers["x-warren-not-before-ms"] = now_ms + int(delay_s * 1000)
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return body, properties


class Unreachable(Exception):
    """The broker could not be reached: nothing was sent."""


class NoQueue(Exception):
    """The work queue of a delayed task does not exist: nothing was sent."""


def queue_exists(connection, queue):
    """Whether `queue` exists: a passive declare, on a channel of its own (a 404 closes it)."""
    channel = connection.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def publish(url, queue, task, payload, task_id, delay_s=0):
    """Publishes the task and returns once the broker confirmed it; raises pika's errors."""
    delayed = math.ceil(delay_s) > 0  # a delay that rounds to 0 goes straight to the queue
    body, properties = task_message(task, payload, task_id, delay_s if delayed else 0)
    exchange, routing_key = EXCHANGE, queue
    if delayed:
        exchange, routing_key = DELAY_ENTRY, delay_routing_key(delay_s, queue)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except AMQPError as error:
        raise Unreachable(describe(error)) from error
    try:
        if delayed and not queue_exists(connection, queue):
            raise NoQueue()
        channel = connection.channel()
        channel.confirm_delivery()  # publisher confirms: basic_publish waits for the ack
        channel.basic_publish(exchange, routing_key, body, properties=properties, mandatory=True)
    finally:
        if connection.is_open:
            connection.close()


def describe(error):
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)


def main(argv=None):
    args = parse_args(argv)
    try:
        publish(args.url, args.queue, args.task, args.payload, args.id, args.delay)
    except Unreachable as error:
        print(
            f"error: cannot connect to {masked(args.url)} ({error}); task {args.id} was not sent.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except NoQueue:
        print(
            f"error: task {args.id} is unroutable: there is no queue `{args.queue}`. Start a "
            "worker on that queue (or declare it), then publish again. Nothing was sent.",
            file=sys.stderr,
        )
        return EXIT_UNROUTABLE
    except UnroutableError:
        if args.delay > 0:
            why = (f"the delay cascade is not declared (`{DELAY_ENTRY}` leads nowhere). Start a "
                   "Warren worker or run declare.py, then publish again.")
        else:
            why = (f"no queue `{args.queue}` is bound to exchange `{EXCHANGE}`. Start a worker on "
                   "that queue (or declare it), then publish again.")
        print(
            f"error: task {args.id} was returned unroutable: {why} Nothing was stored.",
            file=sys.stderr,
        )
        return EXIT_UNROUTABLE
    except NackError:
        print(
            f"error: the broker refused task {args.id} (basic.nack). Nothing was stored; "
            "publish again later.",
            file=sys.stderr,
        )
        return EXIT_NACKED
    except AMQPError as error:
        print(
            f"error: publishing task {args.id} to {masked(args.url)} failed "
            f"({describe(error)}); it may or may not be queued. Publish again "
            "with the same --id: handlers deduplicate on it.",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    print(args.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
