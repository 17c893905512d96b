"""Zalo benchmark: reminders for 2,000 loans swept through the real adapter (``ZaloChannel``)
to the fake Zalo Bot API server, with a steady trickle of faults (every 25th sendMessage answered
``ok:false`` 429, every 60th HTTP 502), at the pace docsach ships with.

    .venv/bin/python bench/zalo.py [--messages 100] [--rate 5]

Prints, beside the configured pace (the baseline: Zalo publishes no limit, so the setting *is*
the contract): the achieved send rate, the most messages in any one second, faults met and
retried, outcomes, and duplicates (target 0). Then the cost of cutting a 6,000-character reply
into 2,000-character parts beside a plain slice. Not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import update  # noqa: E402

from bench.reminders import NOW, seed  # noqa: E402
from bot.app import build_app  # noqa: E402
from bot.channels import zalo  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.scheduler import Sweeper  # noqa: E402
from services.common import Clock  # noqa: E402
from services.db import upgrade_async  # noqa: E402
from services.models import ChatIdentity  # noqa: E402
from tests.fake_zalo_api import FakeZaloApi  # noqa: E402


async def sweep(messages: int, rate: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade_async(url)
        settings = Settings(database_url=url, secret_key=b"bench", secret_key_is_ephemeral=False,
                            zalo_messages_per_second=rate)
        app = build_app(settings, clock=Clock(fixed=NOW))
        patrons, _ = await seed(app.db, 2000, random.Random(7))
        async with app.db.transaction() as s:
            await s.execute(update(ChatIdentity).values(channel="zalo"))
        async with FakeZaloApi() as api:
            api.fail_every("sendMessage", 25, 429)
            api.fail_every("sendMessage", 60, 502, http_status=502)
            adapter = zalo.ZaloAdapter(app, token=api.token, base_url=api.base_url)
            app.deps.outbound[zalo.CHANNEL] = adapter.channel
            app.deps.channels[zalo.CHANNEL] = zalo.profile(app)
            started = time.perf_counter()
            report = await Sweeper(app.router).sweep(max_messages=messages)
            elapsed = time.perf_counter() - started
            await adapter.api.close()
            sent = [c for c in api.calls_to("sendMessage") if c.ok]
            faults = [c for c in api.calls_to("sendMessage") if not c.ok]
        await app.close()
    times = sorted(c.at for c in sent)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    achieved = (len(times) - 1) / span if span else 0.0
    busiest = max((sum(1 for t in times[i:] if t - start < 1.0) for i, start in enumerate(times)), default=0)
    n = int(rate)
    tightest = min((times[i + n] - times[i] for i in range(len(times) - n)), default=0.0)
    duplicates = sum(n - 1 for n in Counter((c.chat_id, c.text) for c in sent).values() if n > 1)
    print(f"patrons with loans: {patrons}; sweep window {messages} messages in {elapsed:.1f} s")
    print(f"  pace            configured {rate:.1f}/s (baseline)   achieved {achieved:.2f}/s "
          f"({achieved / rate:.3f} of it)   most in any second: {busiest} (limit {n}; "
          f"{n + 1} consecutive sends spanned at least {tightest * 1000:.0f} ms)")
    print(f"  faults met      {len(faults)} (429 {sum(c.response.get('error_code') == 429 for c in faults)}, "
          f"502 {sum(c.status == 502 for c in faults)}), all retried inside the adapter")
    print(f"  outcomes        {report.summary()}")
    print(f"  duplicates      {duplicates} (target 0)")


def splitting() -> None:
    text = "\n\n".join(f"Đoạn {i}: " + "Sách là người bạn tốt của học sinh. " * 16 for i in range(12))
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        parts = zalo.split_text(text)
    ours = (time.perf_counter() - started) / rounds * 1e6
    started = time.perf_counter()
    for _ in range(rounds):
        naive = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    plain = (time.perf_counter() - started) / rounds * 1e6
    print(f"split {len(text)} characters: zalo.split_text {ours:.0f} µs → {len(parts)} parts on paragraph "
          f"boundaries (longest {max(map(len, parts))}); plain slice {plain:.1f} µs → {len(naive)} parts "
          f"cut mid-word")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="ZALO_MESSAGES_PER_SECOND (default: as shipped)")
    args = parser.parse_args()
    asyncio.run(sweep(args.messages, args.rate))
    splitting()


if __name__ == "__main__":
    main()
