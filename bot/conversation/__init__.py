"""The conversation core: ConversationService (service.py) and its parts.

turn.py       locks, transactions, dedupe, recovery   router.py     meaning -> the first skill that applies
skills/       one behaviour each (incident, question, dispute, request for a person, more, ...)
understanding/ intents (learned classifier from knowledge/intents), facts, language, text normalisation
answering.py  search + compose + answerability gate   composer.py   extractive, cited sentences
containment.py incident steps                          escalation.py configurable escalation policy
texts.py      the only fixed (non-passage) text
"""
