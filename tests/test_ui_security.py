"""`kaelum ui`'s guards: loopback by default, the token, the Host check, start-up refusals, headers."""

from __future__ import annotations

import html
import json
import os
import socket
import sys

import httpx
import pytest
from click.testing import CliRunner

from ui_stores import RunningServer, build_store

from kaelum.cli import main as kaelum_main
from ui.server import UIConfig, UIConfigError, is_loopback

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("ui-sec"))[0]


@pytest.fixture(scope="module")
def guarded(store_dir):
    with RunningServer(UIConfig(store=str(store_dir), port=0, token=TOKEN, user='eve"><script>x</script>')) as srv:
        yield srv


@pytest.mark.parametrize("path", ["/", "/traces/x", "/datasets", "/charts", "/quarantine", "/api/traces", "/api/session", "/static/app.js"])
def test_without_the_token_everything_is_401(guarded, path):
    r = httpx.get(guarded.url + path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "a token is required" in r.json()["error"]
    assert httpx.get(guarded.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(guarded.url + path, params={"token": "wrong"}).status_code == 401


def test_the_token_as_header_or_query(guarded):
    assert httpx.get(guarded.url + "/api/traces", headers={"Authorization": f"Bearer {TOKEN}"}).json()["total"] == 7
    assert httpx.get(guarded.url + "/api/traces", params={"token": TOKEN}).json()["total"] == 7
    # A page carries the token on to its own scripts and styles.
    page = httpx.get(guarded.url + "/", params={"token": TOKEN}).text
    assert f'src="/static/app.js?token={TOKEN}"' in page
    assert httpx.get(guarded.url + f"/static/app.js?token={TOKEN}").status_code == 200


def test_feedback_needs_the_token_and_the_csrf_header(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    tid = httpx.get(guarded.url + "/api/traces", headers=auth).json()["traces"][0]["trace_id"]
    csrf = httpx.get(guarded.url + "/api/session", headers=auth).json()["csrf"]
    url = f"{guarded.url}/api/traces/{tid}/feedback"
    assert httpx.post(url, json={"label": "x"}, headers={"X-Kaelum-CSRF": csrf}).status_code == 401
    assert httpx.post(url, json={"label": "x"}, headers=auth).status_code == 403
    r = httpx.post(url, json={"label": "checked"}, headers={**auth, "X-Kaelum-CSRF": csrf})
    assert r.status_code == 200 and r.json()["trace"]["feedback_label"] == "checked"


def test_user_name_with_markup_is_escaped_in_the_page(guarded):
    page = httpx.get(guarded.url + "/", params={"token": TOKEN}).text
    assert "<script>x</script>" not in page
    settings = json.loads(html.unescape(page.split('data-settings="')[1].split('"')[0]))
    assert settings["user"] == 'eve"><script>x</script>'


def test_security_headers(guarded):
    r = httpx.get(guarded.url + "/", params={"token": TOKEN})
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


def test_without_a_token_only_loopback_host_names_are_answered(store_dir):
    """A page on another site that rebinds its DNS name to 127.0.0.1 must not reach the API."""
    with RunningServer(UIConfig(store=str(store_dir), port=0)) as srv:
        assert httpx.get(srv.url + "/api/traces").status_code == 200
        assert httpx.get(srv.url + "/api/traces", headers={"Host": f"localhost:{srv.config.port}"}).status_code == 200
        r = httpx.get(srv.url + "/api/traces", headers={"Host": f"evil.example:{srv.config.port}"})
        assert r.status_code == 421 and "only answers requests addressed to localhost" in r.json()["error"]
        assert httpx.get(srv.url + "/api/session", headers={"Host": "evil.example"}).status_code == 421
        # A name is refused even when it resolves to loopback (as a rebinding attacker's does):
        # this machine's own host name stands in for one.
        name = socket.gethostname()
        if name.lower() != "localhost":
            assert httpx.get(srv.url + "/api/session", headers={"Host": f"{name}:{srv.config.port}"}).status_code == 421


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True), ("127.1.2.3", True),
                                      ("0.0.0.0", False), ("192.168.1.10", False), ("::", False)])
def test_is_loopback(host, ok):
    assert is_loopback(host) is ok


def test_non_loopback_without_a_token_is_refused(store_dir):
    with pytest.raises(UIConfigError, match="--host 0.0.0.0 is not a loopback address"):
        UIConfig(store=str(store_dir), host="0.0.0.0").validate()
    UIConfig(store=str(store_dir), host="0.0.0.0", token="t").validate()  # with a token it may
    with pytest.raises(UIConfigError, match="--token .* is empty"):
        UIConfig(store=str(store_dir), token=" ").validate()


def test_cli_refuses_non_loopback_without_a_token(store_dir, monkeypatch):
    monkeypatch.delenv("KAELUM_UI_TOKEN", raising=False)
    r = CliRunner().invoke(kaelum_main, ["ui", "--store", str(store_dir), "--host", "0.0.0.0"])
    assert r.exit_code == 1
    assert "cannot start kaelum ui" in r.output and "add --token T (or set KAELUM_UI_TOKEN), or bind to 127.0.0.1" in r.output


def test_cli_names_a_missing_store(tmp_path):
    r = CliRunner().invoke(kaelum_main, ["ui", "--store", str(tmp_path / "nothing"), "--port", "0"])
    assert r.exit_code == 1 and "kaelum-ingest --once --log-dir ./logs --store" in r.output


def test_cli_is_listed_and_documented():
    r = CliRunner().invoke(kaelum_main, ["ui", "--help"])
    assert r.exit_code == 0 and "--token" in r.output and "KAELUM_UI_TOKEN" in r.output and "KAELUM_UI_USER" in r.output
    assert "ui" in CliRunner().invoke(kaelum_main, ["--help"]).output


def test_cli_serves_with_the_token_from_the_environment(store_dir, tmp_path):
    """`kaelum ui` as a user starts it: a subprocess, KAELUM_UI_TOKEN and KAELUM_UI_USER from the environment."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KAELUM_UI_TOKEN": TOKEN, "KAELUM_UI_USER": "env-user"}
    proc = subprocess.Popen([sys.executable, "-m", "kaelum.cli", "ui", "--store", str(store_dir), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/session", headers={"Authorization": f"Bearer {TOKEN}"})
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode() if proc.poll() is not None else "kaelum ui did not start")
                time.sleep(0.2)
        assert r.json()["user"] == "env-user"
        assert httpx.get(f"http://127.0.0.1:{port}/api/session").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "serving" in proc.stdout.read().decode()
