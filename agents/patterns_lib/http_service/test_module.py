import json
import threading
import urllib.error
import urllib.request

import pytest

from {{module}} import SERVICE_NAME, Store, make_server


@pytest.fixture
def base_url():
    server = make_server(0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def request(url, method="GET", body=None):
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health(base_url):
    assert request(base_url + "/healthz") == (200, {"status": "ok", "service": SERVICE_NAME})


def test_put_then_get(base_url):
    assert request(base_url + "/items/a", "PUT", {"n": 1}) == (201, {"n": 1})
    assert request(base_url + "/items/a") == (200, {"n": 1})
    assert request(base_url + "/items") == (200, {"a": {"n": 1}})


def test_missing_item_and_unknown_path(base_url):
    assert request(base_url + "/items/zz")[0] == 404
    assert request(base_url + "/nope")[0] == 404
    assert request(base_url + "/other", "PUT", {"x": 1})[0] == 404


def test_bad_json_is_refused(base_url):
    status, body = request(base_url + "/items/b", "PUT", b"{not json")
    assert status == 400
    assert "JSON" in body["error"]


def test_store_is_independent():
    store = Store()
    store.put("k", [1, 2])
    assert store.get("k") == [1, 2]
    assert store.get("missing") is None
    assert store.all() == {"k": [1, 2]}
