"""The exception for input a user can fix (a file, a setting, a prompt). The CLI prints it as one
line; any other exception is a bug in unitok and keeps its traceback."""


class UnitokError(ValueError):
    """A wrong input, file or setting, with a one-line reason. A ValueError, for callers that catch those."""
