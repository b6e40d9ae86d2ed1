"""The conversation core: ConversationService (service.py) and its parts.

language.py   reply language by script          signals.py    carriers, intents, follow-ups, scope
triage.py     incident in progress, facts        escalation.py configurable escalation policy
composer.py   extractive, cited answers          texts.py      the only fixed (non-passage) text
"""
