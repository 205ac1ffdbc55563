"""Exceptions for errors a user can fix. The CLI prints their message as one line and exits 2."""


class NasoptError(Exception):
    """Base class: the message names the file or field and the fix."""


class ConfigError(NasoptError):
    """A study file or command-line value is invalid."""


class DataError(NasoptError):
    """Input data is absent, malformed or inconsistent."""


class StorageError(NasoptError):
    """The study storage cannot be reached or used."""
