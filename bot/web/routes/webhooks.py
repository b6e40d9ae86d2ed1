"""The channels' webhook routes: each platform channel's router under /webhooks/<name> (its prefix
when it has its own). A route only verifies, parses and hands over to the registry's pipeline."""

from __future__ import annotations

from fastapi import FastAPI

from bot.channels.registry import ChannelRegistry


def include_channel_routes(app: FastAPI, registry: ChannelRegistry) -> None:
    for channel in registry:
        if channel.router is not None:
            prefix = channel.prefix if channel.prefix is not None else f"/webhooks/{channel.name}"
            app.include_router(channel.router, prefix=prefix)
