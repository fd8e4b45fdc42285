"""Errors only the scorer raises; the ones callers share live in `star_contract.errors`."""

from star_contract.errors import InvalidRequest, Overloaded, StarError


class TemplateRenderError(InvalidRequest):
    """The guard's chat template refuses one request's conversation (e.g. roles that do not alternate)."""


class EngineUnavailable(StarError):
    """The remote engine cannot be reached (tries used up); retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LimitReached(Overloaded):
    """A server or tenant limit refused new work (RESOURCE_EXHAUSTED); `limit` names its flag without
    the dashes (`max_queue`, `tenant_max_sessions`, ...), the `limit` label of star_limit_rejections."""

    def __init__(self, message: str, retry_after_s: float, limit: str) -> None:
        super().__init__(message, retry_after_s)
        self.limit = limit
