"""A process that outlives `diffpipe run` only to end whatever the run started, however the run ended.

Every process a run starts (Prefect's temporary API server, Dask workers, torchrun workers) inherits
`DIFFPIPE_RUN_ID` in its environment. The watchdog polls for its parent's death (`kill -9` included) and
then sends SIGTERM, and after a few seconds SIGKILL, to every process carrying the run's id. It runs
Python without site packages, so it starts in milliseconds and holds no resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

RUN_ID_ENV = "DIFFPIPE_RUN_ID"

_WATCHDOG = r"""
import os, signal, sys, time
parent, marker = int(sys.argv[1]), ("%s=" % sys.argv[2] + sys.argv[3]).encode()
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while os.getppid() == parent:
    time.sleep(0.2)
def tagged():
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open("/proc/%s/environ" % name, "rb") as f:
                    if marker in f.read().split(b"\0"):
                        yield int(name)
            except OSError:
                pass
for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
    pids = list(tagged())
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = list(tagged())
"""


def start_watchdog() -> str | None:
    """Tag this process's future children with a run id and start their watchdog; returns the id (None off Linux)."""
    if not os.path.isdir("/proc"):
        return None
    run_id = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_ENV}
    subprocess.Popen([sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), RUN_ID_ENV, run_id], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    os.environ[RUN_ID_ENV] = run_id
    return run_id
