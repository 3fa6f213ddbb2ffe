class BadInput(Exception):
    """Bad user input: reported as one line, exit code 2."""


class EngineFailed(Exception):
    """A real engine failed (did not start, died mid-run): reported as one line, exit code 1; what the run
    measured so far is kept."""
