"""Killing a subprocess at the right moment, for the kill-and-resume tests."""

import signal
import time


def sigkill_when(process, ready, timeout, poll=0.005):
    """Waits until `ready()` holds (or `timeout` s pass, or the process ends), then SIGKILLs
    `process` and reaps it; never leaves it running. The caller checks
    `process.returncode == -signal.SIGKILL` when the kill must have landed."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None and not ready():
            time.sleep(poll)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
