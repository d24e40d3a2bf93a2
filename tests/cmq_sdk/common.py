"""Checks shared by the SDK conformance scripts (queues.py, topics.py)."""

import sys

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
