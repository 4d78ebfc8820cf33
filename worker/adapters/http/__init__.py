"""HTTP through aiohttp: the Lovense client and the health/metrics server."""
