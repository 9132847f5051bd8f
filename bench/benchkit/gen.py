"""Deterministic, fast generator of realistic log lines, cached on disk by size and version."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

__all__ = ["GEN_VERSION", "body_pool", "cached_log", "generate", "line_stats"]

GEN_VERSION = 1
_SEED = 20240501
_BLOCK = 100_000
_POOL = 10_000
_LONG_SHARE = 0.01  # share of the pool (hence of lines) longer than 1 KiB
_BASE_US = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 1_000_000
_STEP_US = 137  # about 7,300 lines per second of log time

_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 4 + ["WARN"] * 2 + ["ERROR"]
_SERVICES = [
    "api-gateway",
    "auth",
    "billing",
    "search",
    "cart",
    "payments",
    "inventory",
    "notifier",
    "scheduler",
    "ingest",
]
_METHODS = ["GET"] * 6 + ["POST"] * 2 + ["PUT", "DELETE"]
_ROUTES = [
    "/api/v1/users/{}",
    "/api/v1/orders/{}",
    "/api/v2/search",
    "/healthz",
    "/api/v1/carts/{}/items",
    "/static/app.{}.js",
    "/api/v1/payments/{}/capture",
]
_USERS = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "trent",
    "peggy",
    "victor",
    "walter",
    "anon",
    "José",
    "Zoë",
]
_PLACES = [
    "berlin",
    "paris",
    "nyc",
    "sfo",
    "lon",
    "fra",
    "sin",
    "syd",
    "ams",
    "dub",
    "iad",
    "Zürich",
    "東京",
]
_EVENTS = [
    "request completed",
    "cache miss",
    "token refreshed",
    "retrying upstream call",
    "slow query",
    "connection reset by peer",
    "job finished",
    "rate limit applied",
    "user logged in",
    "order placed",
    "payment authorized",
    "config reloaded",
]
_FRAMES = [
    "com.example.billing.InvoiceService.render",
    "com.example.db.Pool.acquire",
    "io.netty.channel.AbstractChannelHandlerContext.invokeChannelRead",
    "org.springframework.web.servlet.FrameworkServlet.service",
    "java.util.concurrent.ThreadPoolExecutor.runWorker",
    "java.lang.Thread.run",
]


def _ip(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _route(rng: random.Random) -> str:
    return rng.choice(_ROUTES).format(rng.randrange(100_000))


def _short_body(rng: random.Random) -> str:
    """One ordinary line after the timestamp: level, service, event and key=value pairs."""
    head = f"{rng.choice(_LEVELS)} {rng.choice(_SERVICES)}[{rng.randrange(1000, 65000)}]:"
    pairs = [
        f"method={rng.choice(_METHODS)} path={_route(rng)}",
        f"status={rng.choice([200] * 8 + [404, 500])}",
        f"ms={rng.expovariate(1 / 30):.1f}",
        f"user={rng.choice(_USERS)}",
        f"client={_ip(rng)}",
        f"region={rng.choice(_PLACES)}",
    ]
    rng.shuffle(pairs)
    return " ".join([head, rng.choice(_EVENTS), *pairs[: rng.randrange(1, 5)]])


def _long_body(rng: random.Random) -> str:
    """An exception flattened onto one line, 1.1 to 2.6 KB."""
    target = rng.randrange(1100, 2600)
    out = [
        f"ERROR {rng.choice(_SERVICES)}[{rng.randrange(1000, 65000)}]: unhandled exception "
        f'error="java.lang.IllegalStateException: pool exhausted" user={rng.choice(_USERS)}'
    ]
    size = len(out[0])
    while size < target:
        frame = f" | at {rng.choice(_FRAMES)}({rng.choice(_FRAMES).split('.')[-1]}.java:"
        frame += f"{rng.randrange(10, 900)})"
        out.append(frame)
        size += len(frame)
    return "".join(out)


@lru_cache(maxsize=4)
def body_pool(seed: int = _SEED) -> tuple[str, ...]:
    """Line bodies (text after the timestamp); 1% of them are longer than 1 KiB."""
    rng = random.Random(seed)
    n_long = int(_POOL * _LONG_SHARE)
    pool = [_short_body(rng) for _ in range(_POOL - n_long)]
    pool += [_long_body(rng) for _ in range(n_long)]
    rng.shuffle(pool)
    return tuple(pool)


@lru_cache(maxsize=4096)
def _second_prefix(sec: int) -> str:
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def _block(rng: random.Random, start: int, count: int) -> bytes:
    bodies = rng.choices(body_pool(), k=count)
    reqs = rng.choices(range(1 << 32), k=count)
    us = [_BASE_US + (start + j) * _STEP_US for j in range(count)]
    lines = [
        f"{_second_prefix(t // 1_000_000)}{t % 1_000_000:06d}Z {b} req_id={r:08x}"
        for t, b, r in zip(us, bodies, reqs, strict=True)
    ]
    lines.append("")
    return "\n".join(lines).encode()


def generate(n: int, seed: int = _SEED) -> Iterator[bytes]:
    """Yield the file in blocks: n LF-terminated lines, no empty line, no CR."""
    rng = random.Random(seed + 1)
    for start in range(0, n, _BLOCK):
        yield _block(rng, start, min(_BLOCK, n - start))


def cached_log(cache_dir: Path, n: int) -> Path:
    """Return the path of the n-line benchmark file, generating it once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"lines-{n}-v{GEN_VERSION}.log"
    if path.exists():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb", buffering=0) as f:
        for block in generate(n):
            f.write(block)
    tmp.replace(path)
    return path


def line_stats(path: Path) -> dict[str, float]:
    """Line count, mean length, share over 1 KiB and share with non-ASCII bytes."""
    n = long_ = non_ascii = total = 0
    with path.open("rb") as f:
        for line in f:
            n += 1
            total += len(line) - 1
            long_ += len(line) > 1025
            non_ascii += not line.isascii()
    return {
        "lines": n,
        "mean_bytes": total / max(n, 1),
        "over_1kib": long_ / max(n, 1),
        "non_ascii": non_ascii / max(n, 1),
    }
