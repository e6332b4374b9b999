"""Push delivery: POST each message to the subscription's endpoint, as Pub/Sub does.

The body is Google's JSON envelope (``{"message": {...}, "subscription": ...}``) or, with
``no_wrapper``, the raw data with attributes as ``x-goog-pubsub-*`` headers. Status
102, 200, 201, 202 and 204 acknowledge; anything else, or no answer within the ack
deadline, is a nack, retried with backoff and dead-lettered when the policy says so (an
Eventarc trigger's ``retry_policy.max_attempts`` instead drops it after that many
deliveries: ``PubSub.format_pushes``).
With ``oidc_token`` set, ``Authorization: Bearer`` carries an ID token from localcloud's
issuer for the configured audience (default: the endpoint URL).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from localcloud.pubsub.queue import Consumer, Entry

if TYPE_CHECKING:
    from localcloud.core.oidc import Issuer
    from localcloud.pubsub.engine import PubSub, SubState

LOG = logging.getLogger(__name__)
ACK_CODES = frozenset({102, 200, 201, 202, 204})
MAX_OUTSTANDING = 64


def envelope(st: SubState, entry: Entry) -> tuple[bytes, dict[str, str]]:
    """The request body and headers Google sends for one message."""
    pb = entry.msg.pb
    cfg = st.pb.push_config
    if cfg.HasField("no_wrapper"):
        # Google: with write_metadata, attributes become plain `KEY: VAL` headers and the
        # metadata `x-goog-pubsub-*` headers; without it, only the data is sent.
        headers: dict[str, str] = {}
        if cfg.no_wrapper.write_metadata:
            headers.update(
                (k, v) for k, v in pb.attributes.items() if _header_ok(k) and _value_ok(v)
            )
            headers["x-goog-pubsub-subscription-name"] = st.name
            headers["x-goog-pubsub-message-id"] = pb.message_id
            headers["x-goog-pubsub-publish-time"] = pb.publish_time.ToJsonString()
            if pb.ordering_key:
                headers["x-goog-pubsub-ordering-key"] = pb.ordering_key
        return pb.data, headers
    message: dict[str, Any] = {
        "data": base64.b64encode(pb.data).decode(),
        "messageId": pb.message_id,
        "message_id": pb.message_id,
        "publishTime": pb.publish_time.ToJsonString(),
        "publish_time": pb.publish_time.ToJsonString(),
    }
    if pb.attributes:
        message["attributes"] = dict(pb.attributes)
    if pb.ordering_key:
        message["orderingKey"] = pb.ordering_key
    body: dict[str, Any] = {"message": message, "subscription": st.name}
    if st.pb.HasField("dead_letter_policy"):
        body["deliveryAttempt"] = entry.attempt
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RESERVED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "authorization"}
)


def _header_ok(name: str) -> bool:
    """An attribute that cannot be an HTTP header name is skipped, not a failed delivery."""
    return bool(name) and set(name) <= _TOKEN and name.lower() not in _RESERVED


def _value_ok(value: str) -> bool:
    return "\r" not in value and "\n" not in value


class PushWorker:
    """Delivers one push subscription's messages while it is a push subscription."""

    def __init__(
        self, engine: PubSub, st: SubState, session: aiohttp.ClientSession, issuer: Issuer | None
    ) -> None:
        self.engine = engine
        self.st = st
        self.session = session
        self.issuer = issuer
        self.consumer = Consumer(max_messages=MAX_OUTSTANDING)
        self.task: asyncio.Task | None = None
        self.inflight: set[asyncio.Task] = set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"push {self.st.name}")

    def stop(self) -> None:
        self.consumer.close()
        if self.task is not None:
            self.task.cancel()
        for task in list(self.inflight):
            task.cancel()

    async def _run(self) -> None:
        self.engine.attach(self.st, self.consumer)
        try:
            while True:
                self.consumer.deadline = self.st.pb.ack_deadline_seconds or 10
                entries = await self.engine.next_batch(self.st, self.consumer)
                if not entries:
                    return
                for entry in entries:
                    task = asyncio.create_task(self._deliver(entry))
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
        finally:
            self.engine.detach(self.st, self.consumer)

    def _headers(self, endpoint: str) -> dict[str, str]:
        oidc = self.st.pb.push_config.oidc_token
        if not oidc.service_account_email:
            return {}
        if self.issuer is None:
            LOG.warning("push to %s wants an OIDC token but no issuer is configured", endpoint)
            return {}
        token = self.issuer.mint_id_token(oidc.audience or endpoint, oidc.service_account_email)
        return {"Authorization": f"Bearer {token}"}

    async def _deliver(self, entry: Entry) -> None:
        endpoint = self.st.pb.push_config.push_endpoint
        attempt = entry.attempt  # this delivery's lease; a late answer must not end a newer one
        formatter = self.engine.push_formatters.get(self.st.name)
        if formatter is None:
            body, headers = envelope(self.st, entry)
        else:  # e.g. Eventarc: the message becomes a CloudEvent
            formatted = formatter(self.st, entry)
            if formatted is None:
                await self.engine.ack_entries(self.st, [entry])
                return
            body, headers = formatted
            headers = dict(headers)
        headers.update(self._headers(endpoint))
        timeout = aiohttp.ClientTimeout(total=self.st.pb.ack_deadline_seconds or 10)
        status: int | str
        try:
            async with self.session.post(
                endpoint, data=body, headers=headers, timeout=timeout
            ) as r:
                status = r.status
                await r.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            status = f"{type(exc).__name__}: {exc}"
        if status in ACK_CODES:
            await self.engine.ack_entries(self.st, [entry])
        else:
            LOG.info(
                "push of message %s to %s failed (%s), attempt %d",
                entry.msg.pb.message_id,
                endpoint,
                status,
                attempt,
            )
            current = self.st.queue.lease_of(entry.seq, attempt)
            if current is entry and self.engine.subs.get(self.st.name) is self.st:
                await self.engine.redeliver(self.st, [entry])
