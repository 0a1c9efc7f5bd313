"""engines/fleet/relay.py: a replica's stream batching keeps every byte in order and bounds items per interval."""
from __future__ import annotations

import asyncio

from engines.fleet.relay import coalesce


def relayed(chunks, interval_s):
    async def source():
        for chunk in chunks:
            yield chunk

    async def main():
        return [item async for item in coalesce(source(), interval_s)]

    return asyncio.run(main())


def test_no_interval_passes_every_chunk_as_it_comes():
    assert relayed([b"a", b"b", b"c"], 0) == [b"a", b"b", b"c"]


def test_the_first_chunk_goes_at_once_and_chunks_within_the_interval_are_joined_in_order():
    # an interval no run reaches: whatever comes after the first chunk leaves with the end of the stream
    assert relayed([b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"], 1e9) == \
        [b"data: 1\n\n", b"data: 2\n\ndata: [DONE]\n\n"]
    assert relayed([], 1e9) == []
    assert relayed([b"only"], 1e9) == [b"only"]


def test_held_chunks_leave_when_the_interval_ends_though_the_stream_has_not():
    """The source stops after two chunks until the consumer has seen the second: only the end of the interval
    can send it, so the test finishes only if held chunks are flushed by time, not by the next chunk."""
    async def main():
        seen_second = asyncio.Event()

        async def source():
            yield b"a"
            yield b"b"
            await seen_second.wait()
            yield b"c"

        out = []
        async for item in coalesce(source(), 0.01):
            out.append(item)
            if b"b" in item:
                seen_second.set()
        return out

    out = asyncio.run(asyncio.wait_for(main(), 60))
    assert b"".join(out) == b"abc"
    assert out[0] == b"a" and out[1] == b"b"


def test_a_consumer_that_stops_early_cancels_the_pending_read():
    async def main():
        cancelled = asyncio.Event()

        async def source():
            yield b"a"
            try:
                await asyncio.Event().wait()  # never comes
            except asyncio.CancelledError:
                cancelled.set()
                raise

        stream = coalesce(source(), 0.01)
        assert await stream.__anext__() == b"a"
        reader = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # let it start waiting on the source
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()
        return cancelled.is_set()

    assert asyncio.run(asyncio.wait_for(main(), 60))
