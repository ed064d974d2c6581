"""Start and stop real servers from the machine's own binaries, on chosen ports with their own data dirs.

One implementation, used by ``tierwatch demo`` and by the tests' fixtures. Every server is a
``ManagedProcess``; ``Stack`` owns a set of them plus a scratch directory and tears all down together.
"""

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

__all__ = ["ManagedProcess", "Stack", "StackError", "free_port", "wait_for"]
