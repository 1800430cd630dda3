"""A small OpenAI-compatible chat server on 127.0.0.1 for the judge tests; it answers with a fixed rating."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeJudge:
    def __init__(self, reply="간결하고 정확한 답변입니다. 점수: [[8]]", fail_first=0, always_fail=False, reasoning=False,
                 status=None, page=None, delay_s=0.0):
        """reply: a string, or None for `content: null`; reasoning: refuse temperature/max_tokens with 400;
        status: answer every request with this HTTP status; page: answer 200 with this HTML instead;
        delay_s: wait this long before answering (a judge that never answers in time)."""
        self.reply, self.fail_first, self.always_fail, self.reasoning = reply, fail_first, always_fail, reasoning
        self.status, self.page, self.delay_s = status, page, delay_s
        self.requests, self.auth = [], set()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                judge.auth.add(self.headers.get("Authorization"))
                time.sleep(judge.delay_s)
                if judge.status or judge.page:
                    payload = (judge.page or '{"error": {"message": "denied"}}').encode()
                    self.send_response(judge.status or 200)
                    self.send_header("Content-Type", "text/html" if judge.page else "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if judge.reasoning and ("temperature" in body or "max_tokens" in body):
                    payload = b'{"error": {"message": "Unsupported parameter: max_tokens", "type": "invalid_request_error"}}'
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if judge.always_fail or len(judge.requests) <= judge.fail_first:
                    self.send_response(429 if not judge.always_fail else 500)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                payload = json.dumps({"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": judge.reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
