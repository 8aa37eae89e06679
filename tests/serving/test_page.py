"""`tlpipe serve` as a user runs it (a subprocess on 127.0.0.1), driven by headless Chromium, and its V2 endpoint.

The screenshot of the answered page is kept in test-artifacts/serve-page.png (ignored by git).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tlpipe.serving import predict
from tlpipe.stack.servers import stop_popen_group

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "fish-egu2017-demo" / "images"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    """`tlpipe serve --model <champion>` on a free port; (base URL, model name); stopped by its PID."""
    reference = demo_model[0]
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "tlpipe", "serve", "--model", reference, "--port", str(port)],
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"tlpipe serve exited {proc.returncode}:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no answer in 180 s:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield url, predict.parse_reference(reference)[0], log_path
    finally:
        stop_popen_group(proc, grace=20)


def _infer(url: str, name: str, body) -> requests.Response:
    return requests.post(f"{url}/v2/models/{name}/infer", data=body if isinstance(body, bytes) else json.dumps(body),
                         headers={"Content-Type": "application/json"}, timeout=60)


def _expected(reference: str, photo: Path) -> dict:
    classifier = predict.load(reference)
    return classifier.predict(classifier.prepare(photo.read_bytes(), str(photo))[None], 3)[0]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed")
def test_the_page_shows_the_top_3_of_a_dropped_photo(server, demo_model):
    from playwright.sync_api import sync_playwright

    url, name, _ = server
    photo = sorted((DEMO / "chub").iterdir())[0]
    expected = _expected(demo_model[0], photo)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url + "/")
            assert page.text_content("#model-name") == name
            assert page.text_content("#model-version") == "1"
            assert page.text_content("#model-aliases") == "@challenger @champion"
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-done='1']", timeout=60_000)
            rows = [[c.inner_text() for c in r.query_selector_all("td")[:2]]
                    for r in page.query_selector_all("#result tbody tr")]
            thumb = page.eval_on_selector("#thumb", "img => [img.complete, img.naturalWidth, img.style.display]")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert rows == [[t["label"], f"{t['probability']:.3f}"] for t in expected["top_k"]]
    assert thumb[0] and thumb[1] > 0 and thumb[2] == "block"
    assert shot.stat().st_size > 5000


def test_the_v2_endpoint_answers_as_predict_does(server, demo_model):
    url, name, _ = server
    photos = sorted((DEMO / "nase").iterdir())[:3]
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                    "data": [base64.b64encode(p.read_bytes()).decode() for p in photos]}],
            "parameters": {"top_k": 2}}
    answer = _infer(url, name, body)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["model_name"] == name and doc["model_version"] == "1" and doc["id"] == "r1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    expected = [_expected(demo_model[0], p) for p in photos]
    assert outputs["label"]["data"] == [e["label"] for e in expected] and outputs["label"]["shape"] == [3]
    assert [len(json.loads(t)) for t in outputs["top_k"]["data"]] == [2, 2, 2]
    meta = requests.get(f"{url}/v2/models/{name}", timeout=10).json()
    assert meta["versions"] == ["1"] and meta["inputs"][0]["name"] == "image"


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ({"inputs": []}, "needs an input named 'image'"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, "not base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                  "data": [base64.b64encode(b"plain text").decode()]}]}, "'image' row 0 is not a decodable image"),
    ({"inputs": [{"name": "image", "data": ["aGk="]}], "parameters": {"top_k": 0}}, "top_k must be an integer >= 1"),
])
def test_a_bad_upload_is_a_400_with_a_message(server, body, message):
    url, name, log_path = server
    answer = _infer(url, name, body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert "Traceback" not in log_path.read_text()


def test_it_binds_127_0_0_1_only(server):
    url, _, log_path = server
    assert url.startswith("http://127.0.0.1:")
    assert "no authentication" in log_path.read_text()
