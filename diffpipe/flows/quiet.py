"""Console output of a failing run for people: the CLI's one `error:` line, without Prefect tracebacks or Dask noise.

When a stage raises one of diffpipe's errors (bad data, a bad spec field seen only at run time, a
failure inside a stage), Prefect logs the exception with its traceback at task level and again at flow
level, and Dask workers print their own warnings while a cluster shuts down. The CLI then prints the
one message that matters. These filters drop those records from the terminal only: the Prefect API
handler (the UI) still gets every record, tracebacks included, and `--debug` keeps the terminal as is.
"""

from __future__ import annotations

import logging
import os
import warnings

from diffpipe.errors import DiffpipeError

DASK_QUIET = {"DASK_LOGGING__DISTRIBUTED": "error"}
"""Dask's logging config by environment (inherited by worker processes started after this)."""


class DropDiffpipeFailures(logging.Filter):
    """Drop records that carry a diffpipe error (the CLI reports it in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for records whose exception is a DiffpipeError."""
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DiffpipeError)


def quiet_failures() -> None:
    """Install the filter on every terminal handler of the root and Prefect loggers; quiet Dask's workers."""
    for key, value in DASK_QUIET.items():
        os.environ.setdefault(key, value)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"distributed\.")  # e.g. "Port 8787 is in use"
    names = ["", "prefect", "prefect.flow_runs", "prefect.task_runs"]
    for handler in {h for name in names for h in logging.getLogger(name).handlers}:
        if isinstance(handler, logging.StreamHandler) and not any(isinstance(f, DropDiffpipeFailures)
                                                                  for f in handler.filters):
            handler.addFilter(DropDiffpipeFailures())
