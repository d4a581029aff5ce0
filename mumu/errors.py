"""User-facing errors: bad input or config ends in one clear line and exit code 2, not a traceback."""


class UserError(Exception):
    """An error the user can fix (bad flag, bad profile, unreadable input). The CLI prints it as one line."""

    exit_code = 2
