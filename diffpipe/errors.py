"""Errors meant for people: each names where the problem is, what was expected and what was found."""

from __future__ import annotations


class DiffpipeError(Exception):
    """Base class of every error diffpipe reports to a user."""

    exit_code = 1


class InputError(DiffpipeError):
    """Bad input (spec, data, arguments): exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, where: str, problem: str, expected: str | None = None, found: str | None = None):
        self.where, self.problem, self.expected, self.found = where, problem, expected, found
        parts = [f"{where}: {problem}"]
        if expected is not None:
            parts.append(f"expected {expected}")
        if found is not None:
            parts.append(f"found {found}")
        super().__init__("; ".join(parts))


class SpecError(InputError):
    """A pipeline spec that does not validate (field path in `where`)."""


class DataError(InputError):
    """Data that cannot be used (file, variable or molecule in `where`)."""


class StageError(DiffpipeError):
    """A failure inside a stage: exit code 1."""


class CorruptArtifact(DiffpipeError):
    """An artifact whose files do not match the checksums in its manifest."""


class Interrupted(DiffpipeError):
    """The run was asked to stop (SIGTERM / SIGINT); what could be checkpointed was: exit code 130."""

    exit_code = 130
