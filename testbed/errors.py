"""One small exception tree. Every message says what is wrong, where, and how to fix it.

    TestbedError                 where + problem + fix; the CLI prints it without a traceback, exit 2
    ├── SpecError                a pilot spec or vendor profile is invalid
    ├── BundleError              a `.bento` archive is unsafe, malformed or too large
    │   └── ContractError        ...or does not declare its pilot's task contract
    ├── ContractViolation        a response of the running service breaks the contract (scored, not raised
    │                            to the user: it makes the verdict `contract_violation`)
    ├── SandboxUnavailable       isolation (bubblewrap) is missing: untrusted code must not run
    ├── NotFound                 a pilot, submission, scorecard or registered name does not exist
    ├── RegistryError            a plugin registers a name twice (a programming error in a plugin)
    ├── ResourceUnavailable      the Ray cluster or tracking server cannot be reached, or Ray cannot give
    │                            what a pilot asks for
    ├── Refused                  a review, promotion, rollback or serve is not allowed (the reason says why)
    └── AuditError               an audit trail is unreadable or was edited (its hash chain is broken)

Anything else reaching the CLI is a bug.
"""

from __future__ import annotations

__all__ = [
    "TestbedError",
    "SpecError",
    "BundleError",
    "ContractError",
    "ContractViolation",
    "SandboxUnavailable",
    "NotFound",
    "RegistryError",
    "ResourceUnavailable",
    "Refused",
    "AuditError",
    "InfrastructureFailure",
    "sigterm_as_ctrl_c",
    "from_tracking_store",
]


class TestbedError(Exception):
    """A user-facing error: `where` (file or object), `problem`, and the `fix`."""

    __test__ = False  # not a pytest test class
    exit_code = 2

    def __init__(self, problem: str, *, where: str | None = None, fix: str | None = None):
        self.problem, self.where, self.fix = _capped(problem), _capped(where), _capped(fix)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        return f"{text}\n  fix: {self.fix}" if self.fix else text


MAX_PART_CHARS = 4000
"""Most characters of a message's problem, place or fix: they quote the input (a vendor's bundle may declare a
route name or a requirement line of megabytes), and one error is read, not scrolled."""


def _capped(text: str | None) -> str | None:
    """`text`, or its first and last `MAX_PART_CHARS // 2` characters around a note of what was left out (what
    a message says of its quote often follows it)."""
    if text is None or len(text) <= MAX_PART_CHARS:
        return text
    half = MAX_PART_CHARS // 2
    return f"{text[:half]} … ({len(text) - 2 * half:,} more characters left out) … {text[-half:]}"


class SpecError(TestbedError):
    """A pilot spec or vendor profile is invalid."""


class BundleError(TestbedError):
    """A submitted `.bento` archive is unsafe, malformed or too large."""


class ContractError(BundleError):
    """A bundle does not expose its pilot's task contract."""


class ContractViolation(TestbedError):
    """A response of the sandboxed service does not follow the contract (raised while decoding responses)."""


class SandboxUnavailable(TestbedError):
    """Isolation (bubblewrap) is not available, so untrusted code must not run."""


class NotFound(TestbedError):
    """A pilot, submission or scorecard does not exist."""


class RegistryError(TestbedError):
    """A plugin (task family, metric, scenario) is registered twice under one name."""


class ResourceUnavailable(TestbedError):
    """The Ray cluster or the tracking server cannot be reached, or Ray cannot provide the resources a pilot
    asks for (or no sandbox uid is free)."""


class Refused(TestbedError):
    """A submission, review, promotion, rollback or serve is refused; the message gives the reason and what would
    allow it."""


class AuditError(TestbedError):
    """An append-only audit trail is unreadable, or an entry was edited, removed or reordered."""


class InfrastructureFailure(TestbedError):
    """The machinery under an evaluation failed (a Ray worker or node died, an object was lost), not the bundle:
    a campaign retries it a bounded number of times."""


def sigterm_as_ctrl_c(signum, frame) -> None:
    """A SIGTERM handler that takes the signal as Ctrl-C: the command unwinds (its sandboxes stopped, a local Ray
    shut down, nothing half-recorded) and says so, exit 130. Python's default for SIGTERM ends the process on the
    spot, and so do Ray's driver handler and uvicorn's (after its own shutdown), leaving sandboxes behind."""
    raise KeyboardInterrupt


def from_tracking_store(exc: BaseException) -> bool:
    """Whether `exc` came from the tracking store's client (MLflow, or SQLAlchemy under it): the store failed, a
    commonplace outage to say plainly (and, where something is recorded already, to survive), not a bug."""
    return type(exc).__module__.startswith(("mlflow", "sqlalchemy"))
