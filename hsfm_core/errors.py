"""The one exception type for bad user input.

Everything a user can get wrong (a file, a column, a value, a flag) raises `InputError` with a
message that names the file, row, column and what was expected. The CLI prints that message on
one line and exits non-zero; the app shows it. Programming errors stay ordinary exceptions.
"""


class InputError(ValueError):
    """Bad user input: the message says what, where, and what was expected."""
