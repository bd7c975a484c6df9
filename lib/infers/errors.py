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


def install_bad_json_handler() -> None:
    """Answer a request whose ``params`` form field is not JSON with 422 instead of a 500.

    MONAI Label's endpoints call ``json.loads(params)`` before any app code runs, so the only place to
    catch it is the FastAPI app's exception handlers. Starlette copies handlers into its middleware
    stack when the stack is first built (the lifespan call, before this app exists), hence the reset
    that makes the next request rebuild it. A no-op outside the server (train/scoring subprocesses).
    """
    import json
    import sys

    from fastapi.responses import JSONResponse

    module = sys.modules.get("monailabel.app")
    api = getattr(module, "app", None)
    if api is None or json.JSONDecodeError in api.exception_handlers:
        return

    async def bad_json(request, exc: json.JSONDecodeError):
        return JSONResponse(status_code=422, content={
            "detail": f"params is not valid JSON ({exc}); send a JSON object, e.g. {{\"label\": \"liver\"}}"})

    api.add_exception_handler(json.JSONDecodeError, bad_json)
    api.middleware_stack = None
