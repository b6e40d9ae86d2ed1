"""Channels: one module per way users reach the bot, keyed by name in a ChannelRegistry.

base.py (the channel role and the Inbound event; what a platform module holds), pipeline.py (the one
inbound chain every channel hands its events to), registry.py (PLATFORMS, ChannelRegistry = the
ReplySender), rendering.py (plain text and splitting, shared), rate_limit.py, memory.py (a fake for
tests); telegram/, line.py, slack/ (platform adapters). The widget's channel is the web app's
(bot/web/widget.py).
"""
