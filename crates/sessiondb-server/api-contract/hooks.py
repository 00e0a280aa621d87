"""Schemathesis hooks for sessiondb's HTTP API (schemathesis.sh loads them).

Credentials: an operation that takes the admin token gets it; one that
takes a session key gets the key of a session registered for it through
the admin API (a fresh one each time, so that a logout or an expire in one
test case does not refuse the next); the others get nothing. A session key
that a stateful link already put in `Authorization` (register, then data or
logout) is kept.
"""

import itertools
import os

import requests
import schemathesis

BASE_URL = os.environ["SESSIONDB_URL"]
ADMIN_TOKEN = os.environ["SESSIONDB_ADMIN_TOKEN"]
_actors = itertools.count()


def _schemes(case):
    security = case.operation.definition.raw.get("security", [])
    return {name for requirement in security for name in requirement}


def _register():
    response = requests.post(
        f"{BASE_URL}/v1/sessions",
        json={"actorId": f"fuzz-{next(_actors)}"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["key"]


@schemathesis.auth(refresh_interval=None, retry_on=[])
class SessiondbAuth:
    def get(self, case, context):
        return ADMIN_TOKEN

    def set(self, case, data, context):
        headers = case.headers if case.headers is not None else {}
        case.headers = headers
        if "Authorization" in headers:
            return
        schemes = _schemes(case)
        if "adminToken" in schemes:
            headers["Authorization"] = f"Bearer {data}"
        elif "sessionKey" in schemes:
            headers["Authorization"] = f"Bearer {_register()}"


@schemathesis.hook
def before_call(context, case, kwargs):
    """Sends a session key whose actor id is not Latin-1 as its UTF-8 bytes.

    A stateful link puts `Bearer <key>` in `Authorization`, and actor ids
    are any Unicode text; HTTP sends header values as bytes, and the server
    reads them as UTF-8 (as the JavaScript client sends them). Python's
    HTTP client would refuse the text instead.
    """
    headers = case.headers or {}
    value = headers.get("Authorization")
    if isinstance(value, str):
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            headers["Authorization"] = value.encode("utf-8").decode("latin-1")
