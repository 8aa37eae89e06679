"""`tlpipe serve`'s web app (Starlette): one page to drop a photo on, and beside it a KServe V2 JSON endpoint.

- `GET /`: the page; it shows the model's name, version and aliases, the photo's thumbnail and the top-k.
- `POST /v2/models/<name>/infer`: a KServe V2 (Open Inference Protocol) request with one BYTES input `image`
  (base64-encoded image files) and an optional parameter `top_k`; outputs `label` (BYTES), `probability`
  (FP64) and `top_k` (BYTES: JSON lists of {label, probability}). The page posts here too.
- `GET /v2/models/<name>`, `/v2/health/live`, `/v2/health/ready`: V2 metadata and health.
A bad request (not JSON, no `image` input, bad base64, not an image) is a 400 {"error": message}. No
authentication: for local use on 127.0.0.1.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import uuid

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from tlpipe.serving import params
from tlpipe.serving.predict import Classifier

INPUT = "image"


class BadRequest(ValueError):
    """A request the client must fix: answered 400 with its message."""


def _images(body: dict) -> list[bytes]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    found = [i for i in inputs or [] if isinstance(i, dict) and i.get("name") == INPUT]
    if not found:
        raise BadRequest(f"the request needs an input named {INPUT!r} (KServe V2: "
                         '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}]})')
    data = found[0].get("data")
    if not isinstance(data, list) or not data or not all(isinstance(d, str) for d in data):
        raise BadRequest(f"input {INPUT!r}: data must be a non-empty list of base64 strings")
    try:
        return [base64.b64decode(d.split(",", 1)[-1] if d.startswith("data:") else d, validate=True) for d in data]
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"input {INPUT!r}: data is not base64 ({exc})") from exc


def _top_k(body: dict, default: int) -> int:
    value = (body.get("parameters") or {}).get("top_k", default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"parameter top_k must be an integer >= 1, got {value!r}")
    return value


def build_app(classifier: Classifier, top_k: int = params.TOP_K) -> Starlette:
    """The page and the V2 endpoints around one loaded classifier."""
    info = classifier.info
    version = info.version or "-"
    page = PAGE.replace("{{name}}", html.escape(info.name)).replace("{{version}}", html.escape(version)) \
        .replace("{{aliases}}", html.escape(" ".join("@" + a for a in info.aliases) or "-")) \
        .replace("{{form}}", html.escape(info.form)).replace("{{top_k}}", str(top_k)) \
        .replace("{{infer}}", f"/v2/models/{html.escape(info.name)}/infer")

    def answer(encoded: list[bytes], k: int) -> list[dict]:
        """Prepare and classify (in a worker thread: decoding and the forward pass block)."""
        return classifier.predict(np.stack([classifier.prepare(data, f"{INPUT!r} row {row}")
                                            for row, data in enumerate(encoded)]), k)

    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    def health(request: Request) -> JSONResponse:
        return JSONResponse({"live": True, "ready": True})

    def metadata(request: Request) -> JSONResponse:
        if request.path_params["name"] != info.name:
            return JSONResponse({"error": f"no model {request.path_params['name']!r}; this server has "
                                          f"{info.name!r}"}, status_code=404)
        return JSONResponse({"name": info.name, "versions": [version], "platform": f"tlpipe-{info.form}",
                             "aliases": info.aliases, "classes": classifier.classes,
                             "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
                             "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                         {"name": "probability", "datatype": "FP64", "shape": [-1]},
                                         {"name": "top_k", "datatype": "BYTES", "shape": [-1]}]})

    async def infer(request: Request) -> JSONResponse:
        if request.path_params["name"] != info.name:
            return JSONResponse({"error": f"no model {request.path_params['name']!r}; this server has "
                                          f"{info.name!r}"}, status_code=404)
        raw = await request.body()
        if len(raw) > params.MAX_REQUEST_BYTES:
            return JSONResponse({"error": f"request of {len(raw)} bytes is over {params.MAX_REQUEST_BYTES}"},
                                status_code=413)
        try:
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the request body is not JSON ({exc})") from exc
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object (KServe V2 inference request)")
            rows = await run_in_threadpool(answer, _images(body), _top_k(body, top_k))
        except ValueError as exc:  # BadRequest, or an image that does not decode
            return JSONResponse({"error": str(exc)}, status_code=400)
        n = len(rows)
        return JSONResponse({
            "model_name": info.name, "model_version": version, "id": body.get("id") or str(uuid.uuid4()),
            "parameters": {"aliases": info.aliases, "form": info.form},
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [n], "data": [r["label"] for r in rows]},
                        {"name": "probability", "datatype": "FP64", "shape": [n],
                         "data": [r["probability"] for r in rows]},
                        {"name": "top_k", "datatype": "BYTES", "shape": [n],
                         "data": [json.dumps(r["top_k"]) for r in rows]}]})

    return Starlette(routes=[
        Route("/", index), Route("/v2/health/live", health), Route("/v2/health/ready", health),
        Route("/v2/models/{name}", metadata), Route("/v2/models/{name}/infer", infer, methods=["POST"])])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tlpipe: {{name}}</title>
<style>
body{font-family:sans-serif;max-width:44rem;margin:2rem auto;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2rem;text-align:center;cursor:pointer}
#drop.over{background:#eef}
#thumb{max-width:160px;max-height:160px;display:none;margin:1rem 0;border:1px solid #ccc}
table{border-collapse:collapse;margin-top:.5rem}td,th{padding:.2rem .8rem;text-align:left}
.bar{background:#4a7;height:.8rem}#error{color:#b00}
</style></head><body>
<h1>Fish classifier</h1>
<p id="model">model <b id="model-name">{{name}}</b> version <b id="model-version">{{version}}</b>
alias <b id="model-aliases">{{aliases}}</b> ({{form}})</p>
<div id="drop">Drop a photo here, or click to choose one
<input id="file" type="file" accept="image/*" style="display:none"></div>
<img id="thumb" alt="the photo">
<p id="error"></p>
<table id="result"><thead><tr><th>class</th><th>probability</th><th></th></tr></thead><tbody></tbody></table>
<p><small>JSON endpoint (KServe V2): POST {{infer}} &middot; no authentication, for local use</small></p>
<script>
const drop = document.getElementById("drop"), file = document.getElementById("file");
drop.onclick = () => file.click();
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over"); classify(e.dataTransfer.files[0]); };
file.onchange = () => classify(file.files[0]);
function classify(f) {
  if (!f) return;
  const reader = new FileReader();
  reader.onload = async () => {
    const thumb = document.getElementById("thumb"), body = document.querySelector("#result tbody");
    document.getElementById("error").textContent = ""; body.innerHTML = "";
    thumb.src = reader.result; thumb.style.display = "block";
    const request = {inputs: [{name: "image", datatype: "BYTES", shape: [1], data: [reader.result.split(",")[1]]}],
                     parameters: {top_k: {{top_k}}}};
    const answer = await fetch("{{infer}}", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify(request)});
    const doc = await answer.json();
    if (!answer.ok) { document.getElementById("error").textContent = doc.error; return; }
    for (const t of JSON.parse(doc.outputs.find(o => o.name === "top_k").data[0])) {
      const row = body.insertRow();
      row.insertCell().textContent = t.label;
      row.insertCell().textContent = t.probability.toFixed(3);
      row.insertCell().innerHTML = `<div class="bar" style="width:${Math.round(200 * t.probability)}px"></div>`;
    }
    document.body.dataset.done = "1";
  };
  reader.readAsDataURL(f);
}
</script></body></html>
"""
