"""A client generated from docs/openapi.json registers and resolves a session.

generated-client.sh generates the package `sessiondb_client` with
openapi-python-client and runs this against a fresh `sessiondb serve`
(SESSIONDB_URL, SESSIONDB_ADMIN_TOKEN). Nothing here is written by hand
but the calls: every request and answer type is the generator's.
"""

import os
import sys

from sessiondb_client import AuthenticatedClient
from sessiondb_client.api.game_client import get_data, is_valid, put_data, restore
from sessiondb_client.api.game_server import register, resolve
from sessiondb_client.models import (
    KeyRequest,
    RegisterRequest,
    Session,
    SessionKeyRequest,
    Validity,
)

url = os.environ["SESSIONDB_URL"]
admin = AuthenticatedClient(base_url=url, token=os.environ["SESSIONDB_ADMIN_TOKEN"])

# The game server registers a session for a player...
registered = register.sync(client=admin, body=RegisterRequest(actor_id="player-7", language="en"))
assert isinstance(registered, Session), registered
print(f"register: 201, actorId={registered.actor_id} id={registered.id} key={registered.key[:12]}...")

# ... and resolves the key the game client sends back.
resolved = resolve.sync(client=admin, body=SessionKeyRequest(session_key=registered.key))
assert isinstance(resolved, Session), resolved
assert resolved.id == registered.id and resolved.key == registered.key
print(f"resolve: 200, id={resolved.id} expiresAt={resolved.expires_at}")

# The game client, with its key as the bearer credentials.
player = AuthenticatedClient(base_url=url, token=registered.key)
valid = is_valid.sync(client=player, body=KeyRequest(session_key=registered.key))
assert isinstance(valid, Validity) and valid.valid, valid
print(f"isValid: 200, valid={valid.valid}")
response = put_data.sync_detailed(name="level", client=player, body=3)
assert response.status_code == 204, response
value = get_data.sync(name="level", client=player)
assert value.value == 3, value
print(f"data: PUT 204, GET 200 value={value.value}")
restored = restore.sync(client=player, body=KeyRequest(session_key=registered.key))
assert isinstance(restored, Session) and restored.data.additional_properties == {"level": 3}, restored
print(f"restore: 200, data={restored.data.additional_properties}")

# A wrong key gets MAGE's reason in the generated error type.
refused = resolve.sync(client=admin, body=SessionKeyRequest(session_key="player-7:" + "A" * 32))
assert refused.error.value == "keyMismatch", refused
print(f"resolve with a wrong key: 401, error={refused.error.value}")
sys.exit(0)
