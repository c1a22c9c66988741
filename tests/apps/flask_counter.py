"""A Flask app that keeps its session in Flask's default client-side cookie.

The whole session lives in the itsdangerous-signed `session` cookie, and
every instance shares one secret key, so any instance accepts a cookie
another one issued: the app the shared-store tests put behind sessionlb.

    python flask_counter.py <port> <instance-name>

Routes (every answer is JSON but /healthz, and carries `x-backend:
<instance-name>`, as the tests' Rust backends do):

- GET /hello: an anonymous visitor's session (`visits`, counted), as a
  page with a CSRF token starts one before anyone logs in
- POST /login (form or query `user=<name>`): clears the session (what a
  careful app does at login), then starts one, n = 0
- GET|POST /count: n += 1 and answers it; 401 without a session
- GET /whoami: the session as it is; Flask sends no Set-Cookie then
- POST /logout: clears the session; Flask expires the cookie
- GET /healthz: "ok"
"""

import logging
import sys

import flask.cli
from flask import Flask, jsonify, request, session

port = int(sys.argv[1])
instance = sys.argv[2]

app = Flask(__name__)
# Fixed, so that every instance signs and accepts the same cookies.
app.secret_key = "sessionlb-test-flask-counter-secret"


@app.after_request
def tag(resp):
    resp.headers["x-backend"] = instance
    return resp


@app.get("/hello")
def hello():
    session["visits"] = session.get("visits", 0) + 1
    return jsonify(user=session.get("user"), visits=session["visits"], instance=instance)


@app.post("/login")
def login():
    user = request.values.get("user")
    if not user:
        return jsonify(error="user missing", instance=instance), 400
    session.clear()
    session["user"] = user
    session["n"] = 0
    return jsonify(user=user, n=0, instance=instance)


@app.route("/count", methods=["GET", "POST"])
def count():
    user = session.get("user")
    if user is None:
        return jsonify(user=None, instance=instance), 401
    session["n"] = session.get("n", 0) + 1
    return jsonify(user=user, n=session["n"], instance=instance)


@app.get("/whoami")
def whoami():
    return jsonify(user=session.get("user"), n=session.get("n"), instance=instance)


@app.post("/logout")
def logout():
    session.clear()
    return jsonify(user=None, instance=instance)


@app.get("/healthz")
def healthz():
    return "ok"


if __name__ == "__main__":
    # Quiet: no banner, no request log, only errors on stderr (which the
    # harness shows when the app does not come up).
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    flask.cli.show_server_banner = lambda *args, **kwargs: None
    # threaded: one slow request does not hold up the others. Werkzeug
    # answers in HTTP/1.1 but closes every connection (`Connection: close`),
    # so the proxy opens a new one for each request.
    app.run(host="127.0.0.1", port=port, threaded=True, debug=False, use_reloader=False)
