"""The OpenAI-compatible annotator against a loopback stub server (never the network)."""

import http.server
import json
import re
import threading
import time

import pytest

from robust_r1_jax.data import annotators, chains

SPEC_FORMAT = re.compile(
    r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>\s*"
    r"<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>",
    re.DOTALL,
)


GOOD_REPLY = (
    "<INFLUENCE>Noise hides fine texture.<INFLUENCE_END>\n"
    "<REASONING>{reasoning}<REASONING_END>\n"
    "<CONCLUSION>The star is blue, so the answer is blue.<CONCLUSION_END>"
)


class _StubHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        server = self.server
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        mode = server.mode
        if mode == "slow":
            time.sleep(1.0)
        if mode == "http500":
            self._send(500, b'{"error": "overloaded"}')
            return
        if mode == "not_json":
            self._send(200, b"<html>proxy error</html>")
            return
        if mode == "no_choices":
            self._send(200, json.dumps({"object": "chat.completion"}).encode())
            return
        words = server.reasoning_words
        reasoning = " ".join(["blue"] * words)
        content = {
            "good": GOOD_REPLY.format(reasoning=reasoning),
            "missing_block": GOOD_REPLY.format(reasoning=reasoning).split("<CONCLUSION>")[0],
            "nested_tag": GOOD_REPLY.format(reasoning=reasoning + " <ANSWER>1<ANSWER_END>"),
            "too_short": GOOD_REPLY.format(reasoning="blue"),
        }.get(mode, GOOD_REPLY.format(reasoning=reasoning))
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture()
def stub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    server.requests = []
    server.mode = "good"
    server.reasoning_words = 40
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _request():
    return chains.ChainRequest(
        question="What colour is the star?", options=("red", "blue", "green", "white"), answer=1,
        rationales=("The star is blue.",), applied=(("noise", 0.8), ("darkness", 0.3)), seed=3)


def test_openai_annotator_against_loopback_stub(stub_server):
    request = _request()
    stub_server.reasoning_words = annotators.reasoning_word_target(request)
    host, port = stub_server.server_address
    annotator = annotators.OpenAIAnnotator(f"http://{host}:{port}", "stub-model", api_key="test-key", timeout=5,
                                       on_failure="raise")
    text = annotators.build_chain(request, annotator)
    assert SPEC_FORMAT.search(text)
    parsed = chains.parse_chain(text)
    assert parsed.types == [("noise", 0.8), ("darkness", 0.3)]  # TYPE from the request, not the LLM
    assert parsed.answer == "1"
    assert parsed.blocks["INFLUENCE"] == "Noise hides fine texture."
    assert len(stub_server.requests) == 1
    sent = stub_server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer test-key"
    assert sent["body"]["model"] == "stub-model"
    user = sent["body"]["messages"][1]["content"]
    assert "noise: intensity 0.80 (severe)" in user
    assert "darkness: intensity 0.30 (mild)" in user
    assert f"about {annotators.reasoning_word_target(request)} words" in user


def test_openai_annotator_base_url_with_v1_suffix(stub_server):
    host, port = stub_server.server_address
    stub_server.reasoning_words = annotators.reasoning_word_target(_request())
    annotator = annotators.OpenAIAnnotator(f"http://{host}:{port}/v1/", "m", api_key="k", on_failure="raise")
    annotator.annotate(_request())
    assert stub_server.requests[0]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize(
    "mode, message",
    [
        ("http500", "HTTP 500"),
        ("not_json", "invalid JSON"),
        ("no_choices", "no choices"),
        ("missing_block", "CONCLUSION"),
        ("nested_tag", "contains another tag"),
        ("too_short", "calibrated target"),
    ],
)
def test_openai_annotator_bad_replies_raise_or_fall_back(stub_server, mode, message):
    stub_server.mode = mode
    stub_server.reasoning_words = annotators.reasoning_word_target(_request())
    host, port = stub_server.server_address
    strict = annotators.OpenAIAnnotator(f"http://{host}:{port}", "m", api_key="k", timeout=5, on_failure="raise")
    with pytest.raises(annotators.AnnotatorError, match=message):
        strict.annotate(_request())
    lenient = annotators.OpenAIAnnotator(f"http://{host}:{port}", "m", api_key="k", timeout=5)
    body = lenient.annotate(_request())
    assert body == annotators.TemplateAnnotator().annotate(_request())
    assert lenient.num_fallbacks == 1


def test_openai_annotator_timeout_and_unreachable(stub_server):
    stub_server.mode = "slow"
    host, port = stub_server.server_address
    slow = annotators.OpenAIAnnotator(f"http://{host}:{port}", "m", api_key="k", timeout=0.2, on_failure="raise")
    with pytest.raises(annotators.AnnotatorError, match="could not be reached"):
        slow.annotate(_request())
    # A loopback port with nothing listening: refused at once, never leaves the machine.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    closed = annotators.OpenAIAnnotator(f"http://127.0.0.1:{free_port}", "m", api_key="k", timeout=2,
                                    on_failure="raise")
    with pytest.raises(annotators.AnnotatorError, match="could not be reached"):
        closed.annotate(_request())
