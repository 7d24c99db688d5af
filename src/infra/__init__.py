"""The production runtime both services share: settings helpers, cache, rate limits, work
queue, shard store, security, health and observability.

Each seam is a Protocol with an embedded implementation (no external service) and a
production one (PostgreSQL, Redis, NATS JetStream); both pass the same conformance tests.
"""
