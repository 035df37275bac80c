"""A webhook receiver that verifies every request with the official Standard
Webhooks library (PyPI `standardwebhooks`), as a real receiver would: a request
that fails verification gets 401.

Env WEBHOOK_SECRET is the `whsec_...` secret. Prints `LISTENING <port>`, then
one JSON line per webhook request: id, timestamp, body, verified, error,
answered, now. `POST /control` with {"mode": ...} sets how the next webhooks
are answered once verified: "ok" (204), "reject" (400, a definite failure),
"busy_once" (503 with Retry-After: 2 for the next one, then "ok").
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

HOOK = Webhook(os.environ["WEBHOOK_SECRET"])
STATE = {"mode": "ok"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_OPTIONS(self):
        self.reply(204)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            STATE["mode"] = json.loads(body)["mode"]
            self.reply(204)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            HOOK.verify(body, headers)
            verified, error = True, None
        except WebhookVerificationError as e:
            verified, error = False, str(e)
        headers_out = []
        if not verified:
            status = 401
        elif STATE["mode"] == "reject":
            status = 400
        elif STATE["mode"] == "busy_once":
            STATE["mode"] = "ok"
            status, headers_out = 503, [("retry-after", "2")]
        else:
            status = 204
        print(
            json.dumps(
                {
                    "id": headers.get("webhook-id"),
                    "idempotency_key": headers.get("idempotency-key"),
                    "timestamp": int(headers.get("webhook-timestamp", "0")),
                    "body": body.decode(),
                    "verified": verified,
                    "error": error,
                    "answered": status,
                    "now": time.time(),
                }
            ),
            flush=True,
        )
        self.reply(status, headers_out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"LISTENING {server.server_address[1]}", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
