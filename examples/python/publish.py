#!/usr/bin/env python3
"""Publish one Warren task from Python with pika, over plain AMQP 0-9-1.

Follows docs/wire-format.md: a persistent JSON message on the direct exchange `warren`, routing
key = the work queue, `type` = the task name, `message_id` = the task id, the Warren headers,
`mandatory` set and publisher confirms on. Prints the task id once the broker has confirmed it.

    pip install -r requirements.txt
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
        python3 publish.py --queue default --task demo.echo --payload '{"text": "hi"}'

Exit codes: 0 queued; 1 the broker could not be reached (nothing sent); 2 bad arguments;
3 unroutable (no queue bound: start a worker or declare the queue, then publish again);
4 refused by the broker (nack: publish again later); 5 outcome unknown (the connection failed
after sending: publish again with the same --id).
"""

import argparse
import json
import os
import sys
import time
import urllib.parse
import uuid

import pika
from pika.exceptions import AMQPError, NackError, UnroutableError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
EXCHANGE = "warren"
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
    args = parser.parse_args(argv)
    try:
        args.payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        parser.error(f"--payload is not valid JSON: {error}")
    args.id = args.id or new_task_id()
    for flag, value in (("--task", args.task), ("--id", args.id), ("--queue", args.queue)):
        if not value or len(value.encode("utf-8")) > MAX_SHORT_STRING:
            parser.error(f"{flag} must be 1 to {MAX_SHORT_STRING} bytes of UTF-8")
    return args


def task_message(task, payload, task_id):
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
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return body, properties


class Unreachable(Exception):
    """The broker could not be reached: nothing was sent."""


def publish(url, queue, task, payload, task_id):
    """Publishes the task and returns once the broker confirmed it; raises pika's errors."""
    body, properties = task_message(task, payload, task_id)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except AMQPError as error:
        raise Unreachable(describe(error)) from error
    try:
        channel = connection.channel()
        channel.confirm_delivery()  # publisher confirms: basic_publish waits for the ack
        channel.basic_publish(EXCHANGE, queue, body, properties=properties, mandatory=True)
    finally:
        if connection.is_open:
            connection.close()


def describe(error):
    return f"{type(error).__name__}: {error}" if str(error) else repr(error)


def main(argv=None):
    args = parse_args(argv)
    try:
        publish(args.url, args.queue, args.task, args.payload, args.id)
    except Unreachable as error:
        print(
            f"error: cannot connect to {masked(args.url)} ({error}); task {args.id} was not sent.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except UnroutableError:
        print(
            f"error: task {args.id} was returned unroutable: no queue `{args.queue}` is bound to "
            f"exchange `{EXCHANGE}`. Start a worker on that queue (or declare it), then publish "
            "again. Nothing was stored.",
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
