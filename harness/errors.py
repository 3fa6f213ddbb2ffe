class BadInput(Exception):
    """Bad user input: reported as one line, exit code 2."""
