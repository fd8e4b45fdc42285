"""`star-gateway`: serve the moderating OpenAI-compatible gateway (uvicorn)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from star_contract.logs import log_json_to_stderr
from star_gateway.config import from_argv

log = logging.getLogger("star.gateway")


def setup_logging(level: str) -> None:
    """JSON lines on stderr, as the scorer writes them (uvicorn's access log included)."""
    log_json_to_stderr(level)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = from_argv(argv)
    except ValueError as exc:
        print(f"star-gateway: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from star_gateway.app import build_app

    setup_logging(config.log_level)
    log.info(
        "serving",
        extra={
            "host": config.host,
            "port": config.port,
            "upstream": config.upstream,
            "scorer": config.scorer,
        },
    )
    uvicorn.run(
        build_app(config), host=config.host, port=config.port, log_config=None, timeout_graceful_shutdown=10
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
