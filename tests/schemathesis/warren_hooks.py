"""Schemathesis hooks for Warren's HTTP ingest: the rules of docs/openapi.yaml that JSON Schema
cannot state, applied to generated bodies so that a "schema-valid" body is one the spec says
the server accepts.

- Lengths are limits in bytes of UTF-8, while `maxLength` counts characters.
- A duration string's value has the bounds of the number form (0 to 268435455 s; a timeout
  more than 0), while a `pattern` can only state its syntax.

In a body generated as schema-valid, a value breaking one of these is replaced by a valid
one before it is sent (a hook that filters bodies does not reach every phase); bodies
generated as invalid are sent as they are: the server must refuse them anyway.
"""

import re
from fractions import Fraction

import schemathesis

MAX_SECONDS = 268435455
BYTE_LIMITS = {"task": 255, "id": 255, "queue": 199}
UNIT_SECONDS = {}
for names, seconds in [
    (("nanos", "nsec", "ns"), Fraction(1, 10**9)),
    (("usec", "us", "µs"), Fraction(1, 10**6)),
    (("millis", "msec", "ms"), Fraction(1, 10**3)),
    (("seconds", "second", "secs", "sec", "s"), Fraction(1)),
    (("minutes", "minute", "mins", "min", "m"), Fraction(60)),
    (("hours", "hour", "hrs", "hr", "h"), Fraction(3600)),
    (("days", "day", "d"), Fraction(86400)),
    (("weeks", "week", "wks", "wk", "w"), Fraction(604800)),
    (("months", "month", "M"), Fraction(2630016)),
    (("years", "year", "yrs", "yr", "y"), Fraction(31557600)),
]:
    for name in names:
        UNIT_SECONDS[name] = seconds
SPAN = re.compile(r"([0-9]+(?:\.[0-9]+)?) *([a-zA-Zµ]+)")


def duration_nanos(text):
    """Whole nanoseconds of a duration string, rounded up as the server does; None if the
    string is not one (the pattern decides that, not this hook)."""
    total = Fraction(0)
    for number, unit in SPAN.findall(text):
        if unit not in UNIT_SECONDS:
            return None
        total += Fraction(number) * UNIT_SECONDS[unit]
    nanos = total * 10**9
    return -(-nanos.numerator // nanos.denominator)


REPLACEMENTS = {"task": "t", "id": "i", "queue": "q", "delay": "1s", "timeout": "1s"}


def breaks_a_rule(field, value):
    """Whether a value that matches its schema still breaks a rule the schema cannot state."""
    if not isinstance(value, str):
        return False
    if field in BYTE_LIMITS:
        return len(value.encode("utf-8", "surrogatepass")) > BYTE_LIMITS[field]
    if field in ("delay", "timeout"):
        nanos = duration_nanos(value)
        if nanos is None:
            return False
        return nanos > MAX_SECONDS * 10**9 or (field == "timeout" and nanos == 0)
    return False


def make_valid(task):
    if isinstance(task, dict):
        for field, replacement in REPLACEMENTS.items():
            if breaks_a_rule(field, task.get(field)):
                task[field] = replacement


@schemathesis.hook
def before_call(ctx, case, kwargs):
    meta = case.meta
    if meta is not None and meta.generation.mode.is_negative:
        return
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("tasks"), list):
        for task in body["tasks"]:
            make_valid(task)
    else:
        make_valid(body)
