"""One error type for user mistakes: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Something the user can fix: bad input, missing file, wrong machine."""

    exit_code = 2
