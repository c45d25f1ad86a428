"""``ecotel-dashboards push`` against a Grafana HTTP API stand-in.

No Grafana can be installed or run here, so the push is tested against a small
local HTTP server that implements just the endpoints grafana-client calls
(folders, datasources by uid, dashboards by uid and /api/dashboards/db, alerting
provisioning rules), storing what it is sent and answering 404 for what it does
not hold, as Grafana does. Everything else in ecotel's tests uses real servers.
"""

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dashboards.alerts import SPECS
from dashboards.boards import all_dashboards
from dashboards.cli import main


class GrafanaStandIn:
    """The objects the stand-in holds and every write it received."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []


def _handler(state: GrafanaStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def _found(self, store: dict[str, dict[str, Any]], uid: str) -> None:
            if uid in store:
                self._send(200, store[uid])
            else:
                self._send(404, {"message": "not found"})

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            uid = path.rsplit("/", 1)[-1]
            if path.startswith("/api/folders/"):
                self._found(state.folders, uid)
            elif path.startswith("/api/datasources/uid/"):
                self._found(state.datasources, uid)
            elif path.startswith("/api/dashboards/uid/"):
                self._found(state.dashboards, uid)
            elif path.startswith("/api/v1/provisioning/alert-rules/"):
                self._found(state.rules, uid)
            else:
                self._send(404, {"message": f"stand-in has no {path}"})

        def _write(self, method: str) -> None:
            path, body = self.path, self._body()
            state.writes.append((method, path))
            if path == "/api/folders" or path.startswith("/api/folders/"):
                uid = body.get("uid") or path.rsplit("/", 1)[-1]
                state.folders[uid] = {"id": 7, "uid": uid, "title": body["title"], "version": 1}
                self._send(200, state.folders[uid])
            elif path.startswith("/api/datasources"):
                uid = body["uid"]
                state.datasources[uid] = {"id": 3, "orgId": 1, "readOnly": False, **body}
                self._send(200, {"datasource": state.datasources[uid]})
            elif path == "/api/dashboards/db":
                board = {**body["dashboard"], "id": 11, "version": 2}
                state.dashboards[board["uid"]] = {
                    "dashboard": board,
                    "meta": {"folderUid": body["folderUid"]},
                }
                self._send(200, {"status": "success", "uid": board["uid"]})
            elif path.startswith("/api/v1/provisioning/alert-rules"):
                uid = body["uid"]
                state.rules[uid] = {"id": 5, "updated": "2026-11-28T00:00:00Z", **body}
                self._send(201 if method == "POST" else 200, state.rules[uid])
            else:
                self._send(404, {"message": f"stand-in has no {path}"})

        def do_POST(self) -> None:
            self._write("POST")

        def do_PUT(self) -> None:
            self._write("PUT")

    return Handler


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaStandIn]]:
    state = GrafanaStandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://admin:admin@127.0.0.1:{server.server_port}", state
    server.shutdown()
    server.server_close()


def _push(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    capsys.readouterr()
    assert main(["push", "--grafana-url", url, *extra]) == 0
    return capsys.readouterr().out


def test_dry_run_shows_everything_it_would_create_and_writes_nothing(
    grafana: tuple[str, GrafanaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = grafana
    out = _push(url, capsys, "--dry-run")
    assert state.writes == []
    assert "would create  folder ecotel" in out
    for uid in all_dashboards():
        assert f"would create  dashboard {uid}" in out
    assert out.count("would create  alert-rule ") == len(SPECS)
    assert "+++ ecotel/dashboard/ecotel-fleet" in out


def test_push_creates_into_the_folder_then_is_idempotent(
    grafana: tuple[str, GrafanaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = grafana
    _push(url, capsys)
    assert set(state.folders) == {"ecotel"}
    assert set(state.dashboards) == set(all_dashboards())
    assert {d["meta"]["folderUid"] for d in state.dashboards.values()} == {"ecotel"}
    assert set(state.datasources) == {"ecotel-influxdb", "ecotel-static"}
    assert len(state.rules) == len(SPECS)
    assert {r["folderUID"] for r in state.rules.values()} == {"ecotel"}
    writes = len(state.writes)

    again = _push(url, capsys)
    assert len(state.writes) == writes, "a second push wrote again"
    assert "create" not in again
    assert "update" not in again


def test_dry_run_shows_a_diff_of_what_someone_changed(
    grafana: tuple[str, GrafanaStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    url, state = grafana
    _push(url, capsys)
    state.dashboards["ecotel-highway"]["dashboard"]["title"] = "edited in the UI"
    state.rules["ecotel-battery-low"]["for"] = "1h"
    writes = len(state.writes)
    out = _push(url, capsys, "--dry-run")
    assert len(state.writes) == writes
    assert "would update  dashboard ecotel-highway" in out
    assert '-  "title": "edited in the UI"' in out
    assert '+  "for": "10m"' in out
    assert "would update  dashboard ecotel-ecology" not in out
    _push(url, capsys)
    assert state.dashboards["ecotel-highway"]["dashboard"]["title"] == "ecotel: Smart highway"
    assert state.rules["ecotel-battery-low"]["for"] == "10m"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_unreachable_grafana_is_named_with_where_its_url_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    url = f"http://admin:hunter2@127.0.0.1:{_free_port()}"
    monkeypatch.setenv("GRAFANA_URL", url)
    assert main(["push", "--dry-run"]) == 1
    err = capsys.readouterr().err
    shown = url.replace("hunter2", "***")
    assert f"Grafana at {shown} (from GRAFANA_URL;" in err
    assert "unreachable: [Errno" in err
    assert "hunter2" not in err
    assert "Traceback" not in err

    monkeypatch.delenv("GRAFANA_URL")
    assert main(["push", "--dry-run"]) in (0, 1)  # whatever listens on 3000 here, if anything
    err = capsys.readouterr().err
    assert err.startswith(
        "Grafana http://127.0.0.1:3000 (from the default: neither --grafana-url nor GRAFANA_URL"
    )


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_name_the_settings(
    status: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Refusing(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = json.dumps({"message": "invalid API key"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_wrong")
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["push", "--grafana-url", url]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"Grafana at {url} (from --grafana-url; token from GRAFANA_TOKEN)" in err
    assert f"refused the credentials (HTTP {status}" in err
    assert "set GRAFANA_TOKEN" in err
    assert "user:password@ in the URL" in err
    assert "glsa_wrong" not in err


def test_a_grafana_url_that_is_not_http_is_refused_before_any_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["push", "--grafana-url", "notaurl", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "notaurl (from --grafana-url) is not an http:// or https:// address" in err
    assert "Traceback" not in err
