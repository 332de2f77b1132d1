"""The FastAPI token endpoint against a tiny fake SBC token endpoint on loopback.

Run: python3 -m unittest discover -s sbc/web/examples/token-fastapi (needs fastapi and httpx).
"""

import json
import threading
import unittest
from http.server import BaseHTTPRequestHandler, HTTPServer

from fastapi.testclient import TestClient

from app import create_app

KEY = "test-api-key"


class FakeSbc(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeSbc.seen.append({"path": self.path, "key": self.headers.get("X-API-Key"), "body": body})
        if self.headers.get("X-API-Key") != KEY:
            self._send(401, {"error": {"code": "UNAUTHORIZED", "message": "bad key"}})
        else:
            self._send(200, {"token": f"jwt-for-{body['operatorRef']}", "expiresAt": "2030-01-01T00:00:00Z"})

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class TokenEndpointTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = HTTPServer(("127.0.0.1", 0), FakeSbc)
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}"
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def setUp(self):
        FakeSbc.seen.clear()

    def test_forwards_the_playbook_body_with_the_key_and_returns_only_the_token(self):
        client = TestClient(create_app(self.url, KEY))
        r = client.post("/api/operator/token", json={"operatorRef": "alice", "displayName": "Alice", "phoneNumberIds": ["support"]})
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json(), {"token": "jwt-for-alice", "expiresAt": "2030-01-01T00:00:00Z"})
        self.assertNotIn(KEY, r.text)
        self.assertEqual(FakeSbc.seen, [{"path": "/v1/tokens", "key": KEY, "body": {"operatorRef": "alice", "displayName": "Alice", "phoneNumberIds": ["support"]}}])

    def test_optional_fields_are_left_out(self):
        client = TestClient(create_app(self.url, KEY))
        self.assertEqual(client.post("/api/operator/token", json={"operatorRef": "bob"}).status_code, 200)
        self.assertEqual(FakeSbc.seen[0]["body"], {"operatorRef": "bob"})

    def test_a_refused_key_is_a_502_without_the_key(self):
        client = TestClient(create_app(self.url, "wrong"))
        r = client.post("/api/operator/token", json={"operatorRef": "alice"})
        self.assertEqual(r.status_code, 502)
        self.assertEqual(r.json()["error"]["code"], "TOKEN_REFUSED")
        self.assertEqual(r.json()["error"]["sbcStatus"], 401)
        self.assertNotIn("wrong", r.text)

    def test_a_bad_operator_ref_never_reaches_the_sbc(self):
        client = TestClient(create_app(self.url, KEY))
        self.assertEqual(client.post("/api/operator/token", json={"operatorRef": "no spaces!"}).status_code, 422)
        self.assertEqual(client.post("/api/operator/token", json={}).status_code, 422)
        self.assertEqual(FakeSbc.seen, [])

    def test_an_unreachable_sbc_is_a_502(self):
        client = TestClient(create_app("http://127.0.0.1:9", KEY))
        r = client.post("/api/operator/token", json={"operatorRef": "alice"})
        self.assertEqual(r.status_code, 502)
        self.assertEqual(r.json()["error"]["code"], "SBC_UNREACHABLE")


if __name__ == "__main__":
    unittest.main()
