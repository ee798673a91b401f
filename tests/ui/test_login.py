"""Issue 28: with --auth, the login page publishes no API description and failed logins back off per address."""
from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request

from ui import login


def _login(url: str, password: str) -> tuple[int, dict]:
    data = urllib.parse.urlencode({"username": "alice", "password": password}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=data), timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_the_login_page_lists_no_endpoint_and_signed_in_clients_still_call_them(guarded):
    with urllib.request.urlopen(guarded, timeout=10) as r:
        page = r.read().decode()
    assert "open_model" not in page and "runs_refresh" not in page and "enqueue" not in page
    from gradio_client import Client
    client = Client(guarded, auth=("alice", "s3cret"), verbose=False)
    assert client.view_api(return_format="dict")["named_endpoints"] == {}
    folder, hub, files = client.predict("Hub id", api_name="/model_kind")   # still callable by its api_name
    assert (folder["visible"], hub["visible"], files["visible"]) == (False, True, False)


def test_wrong_passwords_back_off_per_address_and_a_right_one_clears_it(guarded):
    codes = [_login(guarded, "wrong")[0] for _ in range(login.FREE_FAILURES + 1)]
    assert codes == [400] * (login.FREE_FAILURES + 1)            # the last one starts a 1 s lock-out
    status, headers = _login(guarded, "s3cret")                   # even the right password waits
    assert status == 429 and int(headers["retry-after"]) >= 1
    t0 = time.monotonic()
    assert [_login(guarded, "wrong")[0] for _ in range(20)] == [429] * 20    # no password is even looked at
    assert time.monotonic() - t0 < 5
    time.sleep(1.1)
    assert _login(guarded, "wrong")[0] == 400                     # the next lock-out is 2 s
    assert _login(guarded, "s3cret")[0] == 429
    time.sleep(2.1)
    assert _login(guarded, "s3cret")[0] == 200
    assert _login(guarded, "wrong")[0] == 400                     # cleared: back to the free failures
    assert _login(guarded, "s3cret")[0] == 200


def test_the_lock_out_doubles_up_to_its_ceiling_and_addresses_are_forgotten():
    throttle = login.LoginThrottle(app=None)
    for _ in range(login.FREE_FAILURES + 10):
        throttle.record("10.0.0.1", ok=False, failed=True)
    assert login.MAX_S - 1 < throttle.wait_s("10.0.0.1") <= login.MAX_S
    assert throttle.wait_s("10.0.0.2") == 0
    throttle.record("10.0.0.1", ok=True, failed=False)
    assert throttle.wait_s("10.0.0.1") == 0
