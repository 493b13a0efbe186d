"""Errors that the CLI turns into one clear line (and an exit code) instead of a traceback."""


class DatatoolError(Exception):
    """A problem the user can act on; the message says what to do next."""

    exit_code = 1


class UsageError(DatatoolError):
    exit_code = 2


class WorkspaceNotFound(DatatoolError):
    exit_code = 2


class StoreObjectMissing(DatatoolError, FileNotFoundError):
    """An object the catalogue names is missing from the workspace's store: the workspace is
    damaged (exit 1), not a usage error."""

    exit_code = 1
