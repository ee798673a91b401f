"""The studio behind `--auth`: a back-off on failed logins per client address, and no API description for strangers.

Gradio's password check sees only the user name and the password, so the back-off is an ASGI middleware around the
whole app that watches `POST /login`: after `FREE_FAILURES` wrong passwords from one address, each further one
locks that address out for twice as long as the last (`BASE_S`, 2 x, 4 x, ... at most `MAX_S`); a login tried while
locked out gets 429 with Retry-After and never reaches the password check; a right password clears the address.

Trade-offs, chosen on purpose:
- the address is the TCP peer (`scope["client"]`), not X-Forwarded-For, which any client can write. Behind a reverse
  proxy every user shares the proxy's address, so one person guessing passwords slows everyone's login by up to
  `MAX_S`; put the rate limit in the proxy then (nginx `limit_req`).
- the state is in this process's memory: a restart forgets it, and it holds at most `MAX_ADDRESSES` addresses
  (the quietest are forgotten first).
- with auth on, every event is `api_visibility="undocumented"` (`hide_api`): the login page, which Gradio builds
  with the API description in it, then lists no endpoint, and the footer has no "Use via API" link. Signed-in
  clients still call every endpoint by its api_name (gradio_client with auth=), as docs/ui.md lists them.

    app.launch(..., auth=pairs, app_kwargs={"middleware": [Middleware(LoginThrottle)]}); hide_api(demo)
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

FREE_FAILURES = 3
BASE_S = 1.0
MAX_S = 30.0
FORGET_AFTER_S = 900.0
MAX_ADDRESSES = 10_000


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """ASGI middleware: the failed-login back-off described in the module docstring."""

    def __init__(self, app):
        self.app = app
        self.records: OrderedDict[str, _Record] = OrderedDict()
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or \
                scope.get("path", "").rstrip("/").rsplit("/", 1)[-1] != "login":
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        wait = self.wait_s(address)
        if wait > 0:
            await _too_many(send, wait)
            return
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        self.record(address, ok=status.get("code") == 200, failed=status.get("code") == 400)

    def wait_s(self, address: str) -> float:
        """Seconds `address` must still wait before its next login is looked at (0: none)."""
        with self.lock:
            rec = self.records.get(address)
            return max(0.0, rec.locked_until - time.monotonic()) if rec else 0.0

    def record(self, address: str, *, ok: bool, failed: bool) -> None:
        now = time.monotonic()
        with self.lock:
            if ok:
                self.records.pop(address, None)
                return
            if not failed:
                return
            rec = self.records.pop(address, None)
            if rec is None or now - rec.last > FORGET_AFTER_S:
                rec = _Record()
            rec.failures += 1
            rec.last = now
            over = rec.failures - FREE_FAILURES
            if over > 0:
                rec.locked_until = now + min(MAX_S, BASE_S * 2 ** (over - 1))
            self.records[address] = rec                  # most recent last
            while len(self.records) > MAX_ADDRESSES:
                self.records.popitem(last=False)


async def _too_many(send, wait: float) -> None:
    body = (f'{{"detail": "Too many failed logins from this address; try again in {wait:.0f} s."}}').encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(int(wait) + 1).encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def hide_api(demo) -> None:
    """Leave every public event out of the API description (`api_visibility="undocumented"`): still callable by
    api_name, not listed on the login page or the API page."""
    for fn in demo.fns.values():
        if getattr(fn, "api_visibility", "public") == "public":
            fn.api_visibility = "undocumented"
