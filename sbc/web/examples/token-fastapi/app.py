"""The one backend endpoint the operator SDK needs, in Python/FastAPI.

It asks the SBC for a short-lived session token with the API key, which stays here (an
environment variable), and hands the browser only ``{"token", "expiresAt"}``::

    SBC_URL=https://sbc.example.com SBC_API_KEY=... uvicorn --factory app:create_app

The request body is the operator SDK playbook's: ``{operatorRef, displayName, phoneNumberIds}``,
forwarded to the SBC's ``POST /v1/tokens``. In this sample whoever calls the endpoint names the
operator: put it behind your own authentication and take the operator from the session, never
from the browser alone.
"""

import os

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class TokenRequest(BaseModel):
    operatorRef: str = Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")
    displayName: str | None = Field(default=None, max_length=128)
    phoneNumberIds: list[str] | None = None


def create_app(sbc_url: str | None = None, api_key: str | None = None) -> FastAPI:
    sbc_url = (sbc_url or os.environ["SBC_URL"]).rstrip("/")
    api_key = api_key or os.environ["SBC_API_KEY"]
    app = FastAPI()

    @app.post("/api/operator/token")
    async def token(body: TokenRequest):
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(
                    f"{sbc_url}/v1/tokens",
                    json=body.model_dump(exclude_none=True),
                    headers={"X-API-Key": api_key},
                )
        except httpx.HTTPError as err:
            return JSONResponse({"error": {"code": "SBC_UNREACHABLE", "message": str(err)}}, status_code=502)
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != 200 or not isinstance(data.get("token"), str):
            message = (data.get("error") or {}).get("message") or f"the SBC answered HTTP {r.status_code}"
            return JSONResponse({"error": {"code": "TOKEN_REFUSED", "message": message, "sbcStatus": r.status_code}}, status_code=502)
        return {"token": data["token"], "expiresAt": data.get("expiresAt")}

    return app
