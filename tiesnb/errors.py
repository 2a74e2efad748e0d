"""The one exception type users see: a one-line message naming the bad input."""


class TiesnbError(ValueError):
    """Bad input (a file, a key, a parameter) with a message that names it and, where possible,
    says how to fix it. The CLI prints it as one line, without a traceback."""
