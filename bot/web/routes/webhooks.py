"""The channels' webhook routes: each platform channel's router under /webhooks/<name> (its prefix
when it has its own). A route only verifies, parses and hands over to the registry's pipeline."""

from __future__ import annotations

from fastapi import FastAPI

from bot.channels.registry import ChannelRegistry


def include_channel_routes(app: FastAPI, registry: ChannelRegistry) -> None:
    for channel in registry:
        router = getattr(channel, "router", None)
        if router is not None:
            prefix = getattr(channel, "prefix", None)
            app.include_router(router, prefix=f"/webhooks/{channel.name}" if prefix is None else prefix)
