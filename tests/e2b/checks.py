"""What the SDK test scripts here share: `check` prints one line per check and
counts it, `report` prints `N passed, M failed` and exits 1 if any failed (the
Rust tests that run the scripts look for that line)."""
import sys
import time

counts = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        counts["passed"] += 1
        print(f"ok   {name}", flush=True)
    else:
        counts["failed"] += 1
        print(f"FAIL {name}: {detail}", flush=True)


def eventually(condition, seconds=15):
    """Whether `condition()` becomes true within `seconds` (for effects that
    land shortly after a call returns, such as a clean-up or a kill)."""
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def raises(call, kind=Exception):
    """The exception of `kind` that `call()` raises, or None."""
    try:
        call()
    except kind as e:
        return e
    return None


def report():
    print(f"{counts['passed']} passed, {counts['failed']} failed")
    sys.exit(1 if counts["failed"] else 0)
