"""The one exception a user can cause: the CLI prints its message on one line and exits 2."""


class TfkitError(Exception):
    """Bad input or a failed check, with a one-line message naming what is wrong and what to do."""
