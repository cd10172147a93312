"""What the Kafka client checks share: fail with a reason on stderr and a
non-zero exit, so the Rust test that runs the script shows why."""
import sys


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)
