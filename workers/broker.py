"""What the broker holds: the runs that have a message waiting in the queue, and those whose message was delivered
to a worker and is not acknowledged yet. The reaper sends a queued run again only when the broker has no live
message for it, so a run waiting behind a three-day job is not sent once a minute (each duplicate would be harmless,
since the claim is atomic, but would cost a worker a forked process and pile up in Redis).

Kombu's Redis transport keeps a queue as one list per priority step (`cpu`, `cpu\\x06\\x163`, ...) and every
message delivered but not acknowledged in the hash `unacked` as `[message, exchange, routing_key]`; a message is
`{"headers": {"task": ...}, "body": base64(json([args, kwargs, embed])), ...}`. The key names come from kombu's own
`Channel` constants.

    view = read_broker(WorkerSettings.from_env())     # every queue of settings.queues (cpu and gpu)
    view.waiting, view.delivered                      # {17, 18}, {"<delivery tag>": 19}
    view.waiting_in                                   # {"cpu": {17}, "gpu": {18}}
"""
from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import Channel

from .celery_app import RUN_TASK
from .settings import WorkerSettings

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker did not answer (or did not take a message); `reason` is one line saying why."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def one_line(exc: BaseException) -> str:
    """'ConnectionError: Error 111 connecting to ...' on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold `queue`'s messages, one per priority step."""
    return [queue] + [f"{queue}{Channel.sep}{step}" for step in Channel.priority_steps if step]


def run_id_of(message: dict) -> int | None:
    """The run id a raw kombu message carries, or None for any other task or an unreadable body."""
    if (message.get("headers") or {}).get("task") != RUN_TASK:
        return None
    try:
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return int(json.loads(body)[0][0])
    except (KeyError, IndexError, TypeError, ValueError):
        log.warning("unreadable %s message in the broker: %.200r", RUN_TASK, message)
        return None


@dataclass(frozen=True)
class BrokerView:
    waiting: set[int]           # run ids with a message in any of the studio's queues
    delivered: dict[str, int]   # delivery tag -> run id of a message a worker holds and has not acknowledged
    waiting_in: dict[str, set[int]] = field(default_factory=dict)   # queue name -> run ids waiting there


def read_broker(settings: WorkerSettings) -> BrokerView:
    """The run messages of every queue in `settings.queues` (the default / CPU queue and the GPU queue). Raises
    `BrokerUnavailable` when Redis does not answer."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        waiting = {q: [json.loads(m) for key in queue_keys(q) for m in client.lrange(key, 0, -1)]
                   for q in settings.queues}
        delivered = {tag.decode(): json.loads(entry) for tag, entry in client.hgetall(Channel.unacked_key).items()}
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(f"the broker did not answer: {one_line(exc)}", one_line(exc)) from exc
    finally:
        client.close()
    held = {tag: run_id_of(message) for tag, (message, _exchange, routing_key) in delivered.items()
            if routing_key in settings.queues}
    waiting_in = {q: {i for i in map(run_id_of, messages) if i is not None} for q, messages in waiting.items()}
    return BrokerView(waiting=set().union(*waiting_in.values()),
                      delivered={tag: i for tag, i in held.items() if i is not None}, waiting_in=waiting_in)
