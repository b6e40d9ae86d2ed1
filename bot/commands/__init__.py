"""One module per CLI command; each exposes `run(args, settings) -> int`.

Imported lazily by bot.cli so that `pbxbot search` never imports the web stack
and nothing imports torch unless asked.
"""
