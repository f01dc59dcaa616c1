"""One small exception tree. Every message says what is wrong, where, and how to fix it.

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "TestbedError",
    "SpecError",
    "BundleError",
    "ContractError",
    "SandboxUnavailable",
    "NotFound",
    "ResourceUnavailable",
]


class TestbedError(Exception):
    """A user-facing error: `where` (file or object), `problem`, and the `fix`."""

    __test__ = False  # not a pytest test class
    exit_code = 2

    def __init__(self, problem: str, *, where: str | None = None, fix: str | None = None):
        self.problem, self.where, self.fix = problem, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        return f"{text}\n  fix: {self.fix}" if self.fix else text


class SpecError(TestbedError):
    """A pilot spec or vendor profile is invalid."""


class BundleError(TestbedError):
    """A submitted `.bento` archive is unsafe, malformed or too large."""


class ContractError(BundleError):
    """A bundle does not expose its pilot's task contract."""


class SandboxUnavailable(TestbedError):
    """Isolation (bubblewrap) is not available, so untrusted code must not run."""


class NotFound(TestbedError):
    """A pilot, submission or scorecard does not exist."""


class ResourceUnavailable(TestbedError):
    """The Ray cluster cannot provide the resources a pilot asks for."""
