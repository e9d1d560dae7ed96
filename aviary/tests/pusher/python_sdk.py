"""Runs one call of the PyPI `pusher` server SDK against Aviary and prints its outcome as one
JSON line: {"status": 200, "body": <answer>} or, for a call the SDK refused,
{"status": <HTTP status>, "error": "<body text>"}. Driven by aviary/tests/pusher_http.rs.

Usage: python python_sdk.py <call> '<JSON arguments>'
Config from the environment: PUSHER_HOST, PUSHER_PORT, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET.
"""

import json
import os
import sys

import pusher
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus, PusherForbidden

client = pusher.Pusher(
    app_id=os.environ["PUSHER_APP_ID"],
    key=os.environ["PUSHER_KEY"],
    secret=os.environ["PUSHER_SECRET"],
    host=os.environ["PUSHER_HOST"],
    port=int(os.environ["PUSHER_PORT"]),
    ssl=False,
)

call, args = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")

calls = {
    "trigger": lambda a: client.trigger(a["channels"], a["event"], a["data"], a.get("socket_id")),
    "trigger_batch": lambda a: client.trigger_batch(a["batch"]),
    "channels_info": lambda a: client.channels_info(a.get("prefix_filter"), a.get("attributes", [])),
    "channel_info": lambda a: client.channel_info(a["channel"], a.get("attributes", [])),
    "users_info": lambda a: client.users_info(a["channel"]),
    "terminate_user_connections": lambda a: client.terminate_user_connections(a["user_id"]),
    # These compute signatures locally; the test checks them with Aviary's verifier.
    "authenticate": lambda a: client.authenticate(a["channel"], a["socket_id"], a.get("custom_data")),
    "authenticate_user": lambda a: client.authenticate_user(a["socket_id"], a["user_data"]),
}

STATUS = {PusherBadRequest: 400, PusherBadAuth: 401, PusherForbidden: 403}

try:
    print(json.dumps({"status": 200, "body": calls[call](args)}))
except (PusherBadRequest, PusherBadAuth, PusherForbidden) as e:
    print(json.dumps({"status": STATUS[type(e)], "error": str(e)}))
except PusherBadStatus as e:
    status, _, body = str(e).partition(": ")
    print(json.dumps({"status": int(status), "error": body}))
