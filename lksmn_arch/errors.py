"""The error classes that several parts of the package raise, kept apart so that none imports another for them."""


class TrainingError(RuntimeError):
    """A fault that stops training; ``lksmn-train`` reports it as one line (exit status 1)."""
