"""Errors only the scorer raises; the ones callers share live in `star_contract.errors`."""

from star_contract.errors import InvalidRequest


class TemplateRenderError(InvalidRequest):
    """The guard's chat template refuses one request's conversation (e.g. roles that do not alternate)."""
