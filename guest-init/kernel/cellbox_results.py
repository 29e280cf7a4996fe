"""Rich results as cellbox's kernel protocol carries them: a Jupyter mime bundle
(IPython's, or any Jupyter kernel's) becomes one `result` event, with E2B's names
for the formats it knows (text, html, png, ...) and the rest under `extra`.
Shared by the Python kernel and the Jupyter-kernel bridge; standard library only."""
import base64

MIME = {"text/plain": "text", "text/html": "html", "text/markdown": "markdown",
        "text/latex": "latex", "image/png": "png", "image/jpeg": "jpeg",
        "image/svg+xml": "svg", "application/pdf": "pdf", "application/json": "json",
        "application/javascript": "javascript",
        # cellbox's own: structured data E2B's SDK reads (see cellbox_charts.py)
        "application/vnd.cellbox.chart+json": "chart",
        "application/vnd.cellbox.data+json": "data"}
OBJECTS = {"json", "chart", "data"}     # kept as JSON values, not text
BINARY = {"png", "jpeg", "pdf"}         # base64 text


def result_event(bundle, main):
    """The `result` event for one mime bundle (`main`: the cell's value, not a display)."""
    event, extra = {"type": "result", "is_main_result": main}, {}
    for mime, value in bundle.items():
        key = MIME.get(mime)
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = bytes(value)
            value = (value.decode("utf-8", "replace") if key and key not in BINARY
                     else base64.b64encode(value).decode("ascii"))
        elif key in BINARY and isinstance(value, str):
            value = "".join(value.split())          # base64 from kernels may hold newlines
        elif key and key not in OBJECTS and not isinstance(value, str):
            value = "".join(value) if isinstance(value, list) else str(value)
        if key:
            event[key] = value
        else:
            extra[mime] = value
    if extra:
        event["extra"] = extra
    return event
