"""A small real OpenAI-compatible server that generates with a local transformers chat model (greedy),
for tests and benchmarks of the gateway where starting vLLM would take too long (about a minute on 2
cores, over the gateway tests' whole time budget).

It stands for vLLM's OpenAI server in what the gateway relies on: `POST /v1/chat/completions` and
`/v1/completions`, streamed as server-sent events (a role chunk, one chunk per generated token with
the new text, a chunk with `finish_reason`, `data: [DONE]`) or whole; `GET /v1/models`; a 404 in
OpenAI's error shape for an unknown model; the Authorization header checked when `--api-key` is set;
and a stream whose client goes away stops generating. Two debug routes let tests see the far side:
`GET /debug/stats` (streams started, finished and aborted, tokens generated, the last request's
headers) and `GET /debug/stream/{id}` (the exact bytes sent on the stream of that completion id).

    python -m star_testing.chat_upstream --model DIR --port 8000 [--token-delay-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class Generator:
    """Greedy decoding with a key-value cache, one token at a time."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos = {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}

    def prompt_ids(self, body: dict[str, Any], chat: bool) -> list[int]:
        if chat:
            text = self.tokenizer.apply_chat_template(
                body["messages"], tokenize=False, add_generation_prompt=True
            )
        else:
            text = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def deltas(self, ids: list[int], max_tokens: int, stats: dict[str, Any]) -> AsyncIterator[str]:
        """The new text of each generated token (a token that ends mid-character waits for the next)."""
        cache: Any = None
        pending = torch.tensor([ids])
        out: list[int] = []
        sent = ""
        for _ in range(max_tokens):
            logits, cache = await asyncio.to_thread(self._step, pending, cache)
            token = int(logits.argmax())
            if token in self.eos:
                return
            stats["tokens_generated"] += 1
            out.append(token)
            pending = torch.tensor([[token]])
            text = str(self.tokenizer.decode(out, skip_special_tokens=True))
            if text.startswith(sent) and not text.endswith("\ufffd"):
                delta, sent = text[len(sent) :], text
                if delta:
                    yield delta

    def _step(self, pending: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        with torch.inference_mode():
            out = self.model(input_ids=pending, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], out.cache


class ChatUpstream:
    """The server's routes around one Generator."""

    def __init__(self, generator: Generator, name: str, api_key: str | None, token_delay_s: float) -> None:
        self.gen = generator
        self.name = name
        self.api_key = api_key
        self.token_delay_s = token_delay_s
        self.stats: dict[str, Any] = {"streams_started": 0, "streams_finished": 0, "streams_aborted": 0,
                                      "tokens_generated": 0, "last_headers": {}}  # fmt: skip
        self.streams: dict[str, bytes] = {}

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", lambda r: Response(), methods=["GET"]),
                Route("/debug/stats", lambda r: JSONResponse(self.stats), methods=["GET"]),
                Route("/debug/stream/{rid}", self.stream_bytes, methods=["GET"]),
            ]
        )

    async def stream_bytes(self, request: Request) -> Response:
        got = self.streams.get(request.path_params["rid"])
        return Response(got) if got is not None else _error(404, "no such stream", "NotFoundError")

    async def models(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        card = {"id": self.name, "object": "model", "created": 0, "owned_by": "star-testing"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    def _denied(self, request: Request) -> Response | None:
        self.stats["last_headers"] = dict(request.headers)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid API key", "AuthenticationError")
        return None

    async def _complete(self, request: Request, chat: bool) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body is not JSON", "BadRequestError")
        if body.get("model") != self.name:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model")
        ids = self.gen.prompt_ids(body, chat)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 64)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.name}  # fmt: skip
        if body.get("stream"):
            return StreamingResponse(
                self._events(ids, max_tokens, chat, head), media_type="text/event-stream"
            )
        text = "".join([d async for d in self.gen.deltas(ids, max_tokens, self.stats)])
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = "stop"
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({**head, "object": obj, "choices": [choice]})

    async def _events(
        self, ids: list[int], max_tokens: int, chat: bool, head: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        self.stats["streams_started"] += 1
        sent = bytearray()

        def event(delta: str | None, finish: str | None = None) -> bytes:
            if chat:
                d: dict[str, Any] = {} if delta is None else {"content": delta}
                if delta == "" and finish is None:
                    d = {"role": "assistant", "content": ""}
                choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            data = f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()
            sent.extend(data)
            return data

        finished = False
        try:
            if chat:
                yield event("")
            async for delta in self.gen.deltas(ids, max_tokens, self.stats):
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                yield event(delta)
            yield event(None, "stop")
            sent.extend(b"data: [DONE]\n\n")
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.streams[head["id"]] = bytes(sent)
            while len(self.streams) > 64:
                self.streams.pop(next(iter(self.streams)))
            self.stats["streams_finished" if finished else "streams_aborted"] += 1


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A small OpenAI-compatible server over a transformers model.")
    ap.add_argument("--model", required=True, help="model directory (with tokenizer and chat template)")
    ap.add_argument(
        "--served-model-name", default=None, help="the model's name in requests (default: --model)"
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    ap.add_argument("--token-delay-ms", type=float, default=0.0, help="sleep before each token is sent")
    args = ap.parse_args(argv)
    import uvicorn

    torch.set_num_threads(1)
    upstream = ChatUpstream(
        Generator(args.model), args.served_model_name or args.model, args.api_key, args.token_delay_ms / 1000
    )
    uvicorn.run(upstream.app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
