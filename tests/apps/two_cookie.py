"""An app that keeps its session in two cookies, as Express's cookie-session.

    sess     = base64url(JSON of the session)
    sess.sig = base64url(HMAC-SHA256(secret, "sess=" + <value of sess>))

Both are set on every change and the signature is checked on every request;
a missing or wrong signature, or a value that is not a JSON object, means
no session. Every instance shares the secret, so any instance accepts the
cookies another one issued. The session is one value split over two
cookies: sessionlb must keep and give back both, or neither.

    python two_cookie.py <port> <instance-name>

Same routes and JSON as flask_counter.py (Flask's own session is not used):

- POST /login (form or query `user=<name>`): starts a session, n = 0
- GET|POST /count: n += 1 and answers it; 401 without a session
- GET /whoami: the session as it is, no Set-Cookie
- POST /logout: expires both cookies (Max-Age=0)
- GET /healthz: "ok"

Every answer carries `x-backend: <instance-name>`.
"""

import base64
import hashlib
import hmac
import json
import logging
import sys

import flask.cli
from flask import Flask, g, jsonify, request

port = int(sys.argv[1])
instance = sys.argv[2]

SECRET = b"sessionlb-test-two-cookie-secret"
NAME = "sess"
SIG = NAME + ".sig"

app = Flask(__name__)


def b64(data: bytes) -> str:
    # unpadded, so the value needs no quoting in a cookie
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(value: str) -> str:
    return b64(hmac.new(SECRET, f"{NAME}={value}".encode(), hashlib.sha256).digest())


def load():
    """The session the request's cookies carry, or None."""
    value = request.cookies.get(NAME)
    sig = request.cookies.get(SIG)
    if not value or not sig or not hmac.compare_digest(sig, sign(value)):
        return None
    try:
        data = json.loads(unb64(value))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def store(resp, data):
    value = b64(json.dumps(data, separators=(",", ":")).encode())
    resp.set_cookie(NAME, value, path="/", httponly=True)
    resp.set_cookie(SIG, sign(value), path="/", httponly=True)
    return resp


@app.before_request
def read_session():
    g.sess = load()


@app.after_request
def tag(resp):
    resp.headers["x-backend"] = instance
    return resp


@app.post("/login")
def login():
    user = request.values.get("user")
    if not user:
        return jsonify(error="user missing", instance=instance), 400
    data = {"user": user, "n": 0}
    return store(jsonify(user=user, n=0, instance=instance), data)


@app.route("/count", methods=["GET", "POST"])
def count():
    data = g.sess
    if data is None or data.get("user") is None:
        return jsonify(user=None, instance=instance), 401
    data["n"] = data.get("n", 0) + 1
    return store(jsonify(user=data["user"], n=data["n"], instance=instance), data)


@app.get("/whoami")
def whoami():
    data = g.sess or {}
    return jsonify(user=data.get("user"), n=data.get("n"), instance=instance)


@app.post("/logout")
def logout():
    resp = jsonify(user=None, instance=instance)
    for name in (NAME, SIG):
        # Max-Age=0 with an Expires in 1970, as cookie-session does
        resp.delete_cookie(name, path="/", httponly=True)
    return resp


@app.get("/healthz")
def healthz():
    return "ok"


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    app.run(host="127.0.0.1", port=port, threaded=True, debug=False, use_reloader=False)
