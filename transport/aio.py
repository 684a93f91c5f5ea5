"""The asyncio session client: the same workflow as `SessionClient`, carried out on `httpx.AsyncClient`.

Both clients drive the one workflow of transport/_base.py; this module holds only the awaiting driver.
Pass `transport=` an `httpx.AsyncBaseTransport` to swap the I/O layer.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar, Unpack

import httpx

from transport._base import BaseSessionClient, ClientOptions
from transport._common import BodyReader, Payload, Progress, user_agent
from transport._deadline import enforce_deadlines
from transport._flow import Flow, Send, Sleep, Stepper
from transport.errors import VitalcamError
from transport.models import Demographics, Result, StartedSession
from transport.outbox import Outbox

T = TypeVar("T")


class AsyncSessionClient(BaseSessionClient):
    """Async twin of `SessionClient`, with the same arguments, rules and errors; use `async with`, or
    `await close()`.

    Talks to any server speaking the sessions API (our reference backend or a hosted one). Deadlines are
    for the whole request, from connecting to the last byte of the answer: `timeout_s` for ordinary
    requests, `upload_timeout_s` for the PUT of the tensor, `processing_timeout_s` for upload-complete,
    which returns only after inference. `measure_timeout_s` bounds a whole `measure()`, retries included;
    answers larger than `max_response_bytes` are refused; `on_retry` hears of every retry before its wait.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s),
            transport=transport,
            headers={"User-Agent": user_agent()},
        )
        enforce_deadlines(self._http)

    async def __aenter__(self) -> AsyncSessionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- the four API steps (documented on SessionClient) ---------------------------------------------

    async def start(self, demographics: Demographics | None = None) -> StartedSession:
        """POST /sdk/session/start. Retried on transient errors: an unused extra session is harmless."""
        return await self._run(self._start_flow(demographics))

    async def upload(
        self, session: StartedSession, payload: Payload, progress: Progress | None = None
    ) -> None:
        """PUT the tensor to the session's upload URL, streamed; see `SessionClient.upload`."""
        await self._run(self._upload_flow(session, payload, progress))

    async def complete(self, session: StartedSession | str) -> Result:
        """POST /sdk/session/upload-complete; see `SessionClient.complete`."""
        return await self._run(self._complete_flow(session))

    async def result(self, session_id: str) -> Result:
        """GET /sdk/session/result/{id} once (with retries): works only on servers with PERSIST_VITALS=true."""
        return await self._run(self._result_flow(session_id))

    async def wait_result(
        self, session_id: StartedSession | str, poll_interval_s: float = 2.0, timeout_s: float = 120.0
    ) -> Result:
        """Poll the result every `poll_interval_s` until completed or failed; see `SessionClient.wait_result`."""
        return await self._run(self._poll_flow(session_id, poll_interval_s, timeout_s, resend_complete=False))

    async def check(self, timeout_s: float = 5.0) -> None:
        """Prove the server is reachable and accepts the API key; see `SessionClient.check`."""
        await self._run(self._check_flow(timeout_s))

    # -- the whole workflow ---------------------------------------------------------------------------

    async def measure(
        self,
        payload: Payload,
        demographics: Demographics | None = None,
        *,
        progress: Progress | None = None,
        outbox: Outbox | None = None,
    ) -> Result:
        """Start, upload, complete (falling back to polling) and return the result; see `SessionClient.measure`."""
        try:
            return await self._run(self._measure_flow(payload, demographics, progress))
        except VitalcamError as exc:
            self._keep(exc, payload, demographics, outbox)
            raise

    # -- the driver -----------------------------------------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow's steps with awaits: each answer is sent in, each failure thrown in."""
        stepper = Stepper(flow)
        try:
            while (step := stepper.next()) is not None:
                if isinstance(step, Sleep):
                    self._before_sleep(step)
                    await asyncio.sleep(step.seconds)
                    continue
                try:
                    stepper.answer(await self._send(step))
                except Exception as exc:  # the flow decides what any failure means
                    stepper.fail(exc)
            return stepper.result()
        finally:
            stepper.close()

    async def _send(self, step: Send) -> httpx.Response:
        """One HTTP exchange, its answer read in full but never beyond `max_response_bytes`."""
        content = step.upload.achunks(step.progress) if step.upload is not None else None
        request = self._build_request(self._http, step, content)
        with self._exchanging(step, request):
            response = await self._http.send(request, stream=True)
            try:
                reader = BodyReader(response, self.max_response_bytes, step.deadline)
                async for chunk in response.aiter_bytes():
                    if not reader.add(chunk):
                        break
            finally:
                await response.aclose()
        return reader.finish()


__all__ = ["AsyncSessionClient"]
