"""The browser stack end to end: a FastAPI page with a form on uvicorn (a real socket on loopback), driven by
Debian's headless Chromium through Playwright: fill, submit, follow the redirect, read the result, take
screenshots. The RM workbench tests (issue 16) build on the same fixtures."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import pytest
import uvicorn
from fastapi import FastAPI, Form, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment

PAGES = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title></head>
<body>
<main>
{% if note is none %}
  <h1>New note</h1>
  <form method="post" action="/notes">
    <label for="note">Note for the customer</label>
    <input id="note" name="note" required>
    <button type="submit">Save note</button>
  </form>
{% else %}
  <h1>Saved</h1>
  <p id="saved">{{ note }}</p>
{% endif %}
</main>
</body>
</html>""")


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    def form() -> str:
        return PAGES.render(title="New note", note=None)

    @app.post("/notes")
    def save(note: str = Form(...)) -> RedirectResponse:
        return RedirectResponse(f"/saved?note={quote(note)}", status_code=303)  # post, redirect, get

    @app.get("/saved", response_class=HTMLResponse)
    def saved(note: str = Query(...)) -> str:
        return PAGES.render(title="Saved", note=note)

    return app


@pytest.fixture()
def site() -> Iterator[str]:
    """The app on uvicorn in a thread, on a loopback socket bound here (port 0: no race for a free port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None and no log_level: uvicorn leaves the process's logging setup alone (other tests read
    # the uvicorn loggers through caplog).
    server = uvicorn.Server(uvicorn.Config(_app(), log_config=None, lifespan="off", loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_form_post_redirect_and_screenshots(browser, site, tmp_path):
    note = 'Call about the mortgage renewal <b>"fixed 5y"</b> & savings'
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(site + "/")
        assert page.title() == "New note"
        assert page.evaluate("document.documentElement.lang") == "en"

        page.get_by_label("Note for the customer").fill(note)
        page.get_by_role("button", name="Save note").click()
        page.wait_for_url(lambda url: urlsplit(url).path == "/saved")

        assert page.get_by_role("heading", level=1).inner_text() == "Saved"
        assert page.locator("#saved").inner_text() == note  # the text as typed: escaped, not markup
        assert page.locator("#saved b").count() == 0
        assert page.evaluate("document.documentElement.lang") == "en"

        shots = {}
        for w, h in [(1280, 800), (768, 1024)]:
            page.set_viewport_size({"width": w, "height": h})
            shots[w, h] = tmp_path / f"saved-{w}x{h}.png"
            page.screenshot(path=shots[w, h])
    finally:
        page.close()

    for (w, h), path in shots.items():
        assert path.is_file() and path.stat().st_size > 0
        assert _png_size(path.read_bytes()) == (w, h)
