"""How Python's cookie parsers read a request's Cookie fields, for
tests/cookie_parsers.rs.

    python py_cookies.py werkzeug|django|simplecookie

Reads one request per line on stdin: its Cookie fields, each written as
`x` and its bytes in hex, separated by spaces. Answers each line with one
JSON line, {"readings": [{"how": ..., "cookies": [[name, value], ...]}]}
or a reading's "error" when the parser raised: one reading per way a
server hands the fields to the app (WSGI servers join repeated fields,
Werkzeug's and gunicorn with ",", waitress with ", ", Django's ASGI
handler with "; "; a single field is read as it is). Header bytes are
latin-1, as WSGI and ASGI decode them. The Werkzeug read is the one
Flask's `request.cookies` makes; put the Werkzeug under test first on
PYTHONPATH.
"""

import json
import sys


def werkzeug():
    from importlib.metadata import version

    from werkzeug.wrappers import Request

    def parse(raw):
        req = Request({"HTTP_COOKIE": raw, "REQUEST_METHOD": "GET"})
        return list(req.cookies.items(multi=True))

    return f"werkzeug {version('werkzeug')}", parse


def django():
    import django as d
    from django.http.cookie import parse_cookie

    return f"django {d.get_version()}", lambda raw: list(parse_cookie(raw).items())


def simplecookie():
    from http.cookies import SimpleCookie

    def parse(raw):
        c = SimpleCookie()
        c.load(raw)
        return [(k, m.value) for k, m in c.items()]

    v = sys.version_info
    return f"http.cookies {v.major}.{v.minor}.{v.micro}", parse


def main():
    name, parse = {"werkzeug": werkzeug, "django": django, "simplecookie": simplecookie}[
        sys.argv[1]
    ]()
    for line in sys.stdin:
        fields = [bytes.fromhex(t[1:]).decode("latin-1") for t in line.split()]
        ways = [("", fields[0])] if len(fields) == 1 else []
        if len(fields) > 1:
            ways += [(f" joined {j!r}", j.join(fields)) for j in (",", ", ", "; ")]
        readings = []
        for how, raw in ways:
            reading = {"how": name + how}
            try:
                reading["cookies"] = [[k, v] for k, v in parse(raw)]
            except Exception as e:  # the app would answer 400 or 500
                reading["error"] = f"{type(e).__name__}: {e}"
            readings.append(reading)
        print(json.dumps({"readings": readings}), flush=True)


main()
