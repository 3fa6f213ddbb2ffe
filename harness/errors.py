import threading

class BadInput(Exception):
    """Bad user input: reported as one line, exit code 2."""


class RunsFailed(Exception):
    """Some runs of a sweep failed (the others are kept): reported as one line, exit code 1."""


class EngineFailed(Exception):
    """A real engine failed (did not start, died mid-run): reported as one line, exit code 1; what the run
    measured so far is kept."""


# Set by the CLI's SIGINT/SIGTERM handler. The KeyboardInterrupt it raises can be swallowed when the signal
# lands inside code whose exceptions Python ignores (a finalizer, a logging lock), so runs also check this
# flag at every step (harness.runner.AgentRun) and stop then.
stop_requested = threading.Event()
