"""pbxbot: incident-response knowledge chatbot for IP-PBX takeover (toll fraud) in Japan."""

__version__ = "0.1.0"
