"""``GET /vmix/v1/adapters``: every adapter in the folder with its metadata, or the reason it cannot be used.

With ``--api-auth`` the route asks for the same HTTP basic credentials as the host's own API routes (A1111's
``modules/api/api.py: Api.auth`` checks them the same way; extensions' routes are not covered by it on their own).
"""

from __future__ import annotations

from secrets import compare_digest
from typing import Any

from modules import shared

from . import status
from .adapters import library

ROUTE = "/vmix/v1/adapters"


def adapters_listing() -> dict[str, Any]:
    """Every file, good or bad (one bad file never hides the others), and whether it fits the loaded model."""
    return library().scan().as_json(status.loaded_family())


def credentials() -> dict[str, str]:
    """``--api-auth user:password,user2:password2`` as the host parses it; empty when the API is open."""
    configured = getattr(shared.cmd_opts, "api_auth", None) or ""
    pairs = (item.split(":", 1) for item in configured.split(",") if ":" in item)
    return {user: password for user, password in pairs}


def on_app_started(_demo: Any, app: Any) -> None:
    users = credentials()
    if not users:
        app.add_api_route(ROUTE, adapters_listing, methods=["GET"])
        return
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    def authenticated(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:  # noqa: B008 (FastAPI's form)
        expected = users.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(
            status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"}
        )

    app.add_api_route(ROUTE, adapters_listing, methods=["GET"], dependencies=[Depends(authenticated)])
