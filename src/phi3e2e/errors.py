"""One error type for user mistakes: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Something the user can fix: bad input, missing file, wrong machine."""

    exit_code = 2


def invalid_record(path, validation_error) -> UserError:
    """A JSON record that pydantic refused: one line naming the file and the first field at fault."""
    first = validation_error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return UserError(f"{path}: {field}: {first['msg']}")
