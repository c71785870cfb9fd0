# SPDX-License-Identifier: Apache-2.0
"""OpenAI-API streaming clients for the reliability tests (requests + threads, bounded by timeouts)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests


@dataclass
class StreamResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    error: str | None = None  # an error event in the stream, an HTTP error or a broken connection
    done: bool = False  # saw `data: [DONE]`
    ended_at: float = 0.0  # time.monotonic() when the stream ended, however it ended
    first_chunk_at: float = 0.0


def stream_completion(
    base: str, body: dict, headers: dict | None = None, read_timeout: float = 120.0, on_chunk=None
) -> StreamResult:
    """POST /v1/completions with stream=True and return_token_ids; never raises."""
    result = StreamResult()
    try:
        with requests.post(
            f"{base}/v1/completions",
            json={**body, "stream": True, "return_token_ids": True},
            headers=headers,
            stream=True,
            timeout=(10, read_timeout),
        ) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {resp.text[:500]}"
                return result
            for line in resp.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    result.done = True
                    break
                event = json.loads(line[6:])
                if "error" in event or not event.get("choices"):
                    result.error = json.dumps(event)[:500]
                    continue
                choice = event["choices"][0]
                result.chunks += 1
                if result.chunks == 1:
                    result.first_chunk_at = time.monotonic()
                result.text += choice.get("text") or ""
                result.token_ids += choice.get("token_ids") or []
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
                if on_chunk is not None:
                    on_chunk(result)
    except (requests.RequestException, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"[:500]
    finally:
        result.ended_at = time.monotonic()
    return result


def run_concurrently(
    base: str, bodies: list[dict], headers: dict | None = None, read_timeout: float = 120.0
) -> list[StreamResult]:
    """All `bodies` as simultaneous streaming requests (one thread each); results in input order."""
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        futures = [pool.submit(stream_completion, base, b, headers, read_timeout) for b in bodies]
        return [f.result(timeout=read_timeout * 4) for f in futures]
