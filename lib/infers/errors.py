"""Map inner-ring exceptions to HTTP errors a client can act on (never a 500 for bad input)."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from fastapi import HTTPException

from lib.tools.base import MissingCheckpointError

logger = logging.getLogger(__name__)


@contextmanager
def client_errors(context: str = ""):
    """Re-raise bad-input exceptions as ``HTTPException`` 4xx with the original message."""
    prefix = f"{context}: " if context else ""
    try:
        yield
    except HTTPException:
        raise
    except MissingCheckpointError as e:
        raise HTTPException(status_code=409, detail=f"{prefix}{e}") from e
    except FileNotFoundError as e:
        raise HTTPException(status_code=404, detail=f"{prefix}{e}") from e
    except (ValueError, IndexError, KeyError, TypeError) as e:
        logger.info("bad request (%s): %s", context, e)
        raise HTTPException(status_code=422, detail=f"{prefix}{e}") from e
