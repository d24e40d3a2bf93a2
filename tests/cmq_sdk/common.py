"""Checks shared by the SDK conformance scripts (queues.py, topics.py)."""

import sys
import time

from cmq.cmq_exception import CMQServerException


def check(name, cond, detail=""):
    if not cond:
        print("FAIL", name, detail, flush=True)
        sys.exit(1)
    print("ok", name, flush=True)


def error_of(fn, *args):
    """The CMQServerException fn raises (fails the run if it raises none)."""
    try:
        fn(*args)
    except CMQServerException as e:
        return e
    print("FAIL expected a CMQ error from", fn.__name__, flush=True)
    sys.exit(1)


# How long a check waits out the per-address backoff that failed
# signatures leave (docs/SECURITY.md), and how often it retries.
BACKOFF_DEADLINE_S = 12
RETRY_EVERY_S = 0.05


def held_off(e):
    """Whether e is the backoff's refusal (4100, unchecked), not a checked answer."""
    return e.code == 4100 and "too many failed attempts" in e.message


def settled_error_of(fn, *args):
    """Like error_of, retrying while the address is held off by the backoff."""
    deadline = time.monotonic() + BACKOFF_DEADLINE_S
    while True:
        e = error_of(fn, *args)
        if not held_off(e) or time.monotonic() >= deadline:
            return e
        time.sleep(RETRY_EVERY_S)
