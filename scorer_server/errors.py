"""Errors only the scorer raises; the ones callers share live in `star_contract.errors`."""

from star_contract.errors import InvalidRequest, StarError


class TemplateRenderError(InvalidRequest):
    """The guard's chat template refuses one request's conversation (e.g. roles that do not alternate)."""


class EngineUnavailable(StarError):
    """The remote engine cannot be reached (tries used up); retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
