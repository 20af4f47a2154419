"""Error hierarchy of the control plane.

Every error a user can cause is a DocklineError whose message names the offending object or value
in one line. The CLI prints the message and exits with ``exit_code``; the agent sends
``{"error": {"kind": ..., "message": ...}}`` so the client can rebuild the same exception.
"""


class DocklineError(Exception):
    """A failure the user can act on. The message is one line and names the problem."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message}


class InvalidArgument(DocklineError):
    """Malformed input: a bad CIDR, port spec, MTU, name. Nothing was changed."""

    exit_code = 2
    kind = "invalid"


class NotSupported(InvalidArgument):
    """The request needs an ability this agent's datapath (or a network's driver) does not have;
    the message names what is needed. Nothing was changed."""

    kind = "not_supported"


class NotFound(DocklineError):
    """A named network or endpoint does not exist."""

    exit_code = 3
    kind = "not_found"


class Conflict(DocklineError):
    """The request collides with existing state: duplicate name, overlapping subnet, port in use,
    address leased, network still in use."""

    exit_code = 4
    kind = "conflict"


class Exhausted(Conflict):
    """An address pool or port range has nothing left."""

    kind = "exhausted"


class DatapathError(DocklineError):
    """The kernel refused an operation; the message names the object and the errno."""

    exit_code = 5
    kind = "datapath"


class AgentUnavailable(DocklineError):
    """The CLI could not reach the agent's socket."""

    exit_code = 6
    kind = "unavailable"


_KINDS = {cls.kind: cls for cls in (DocklineError, InvalidArgument, NotSupported, NotFound, Conflict, Exhausted,
                                    DatapathError, AgentUnavailable)}


def error_from_dict(d: dict) -> DocklineError:
    """Rebuild the exception that the agent serialised with ``to_dict``."""
    return _KINDS.get(d.get("kind"), DocklineError)(d.get("message", "unknown error"))
