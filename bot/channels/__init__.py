"""Channels: one module per way users reach the bot, keyed by name in a ChannelRegistry.

base.py (the Channel role and shared helpers; how a platform module plugs in), registry.py
(ChannelRegistry = ReplySender), web.py (the helpdesk widget), memory.py (a fake for tests);
telegram.py, line.py, slack.py (platform adapters, each with register(registry, settings, core)).
"""
