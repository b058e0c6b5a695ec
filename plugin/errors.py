"""Errors the CLI maps to exit codes: usage and configuration problems exit 2, the rest 1."""


class UsageError(Exception):
    """A bad flag, path, config key or schema: the user must change the invocation (exit 2)."""


class SchemaError(UsageError):
    """A normalization schema file is invalid; the message names the file and the key."""

    def __init__(self, path: object, key: str, problem: str) -> None:
        super().__init__(f"schema {path}: key {key!r}: {problem}")
        self.path = path
        self.key = key


class Unavailable(Exception):
    """Something the command needs is held or out of reach for now (the database file open in
    another process): nothing was changed, and the same command works once it is free (exit 1,
    a runtime failure, with the message alone: no traceback helps)."""
