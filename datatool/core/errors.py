"""Errors that the CLI turns into one clear line (and an exit code) instead of a traceback."""


class DatatoolError(Exception):
    """A problem the user can act on; the message says what to do next."""

    exit_code = 1


class UsageError(DatatoolError):
    exit_code = 2


class WorkspaceNotFound(DatatoolError):
    exit_code = 2
