"""The OpenAI-compatible HTTP server (aiohttp) that fronts every in-process engine."""
