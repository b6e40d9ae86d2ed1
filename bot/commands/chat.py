"""`pbxbot chat`: an interactive chat in the terminal, through the same ConversationService
(SQLite in the data dir, so `pbxbot tickets reply` from another terminal reaches this chat).

Commands: /human (ask for a person), /new (new conversation), /quit. Operator replies are shown
before each prompt.
"""

from __future__ import annotations

import sys
import uuid

from bot.commands.ask import CHANNEL, address_for, deliver_pending, render_text
from bot.config import Settings
from bot.messages import InboundMessage

BANNER = "pbxbot chat: ask about IP-PBX takeover / 国際電話の不正発信。 /human, /new, /quit"


def run(args, settings: Settings) -> int:
    from bot.wiring import build_conversation_service

    service = build_conversation_service(settings)
    conversation_id = f"{CHANNEL}:chat-{uuid.uuid4().hex[:12]}"
    print(BANNER)
    while True:
        deliver_pending(service, conversation_id, sys.stdout, as_json=False)
        try:
            text = input("> ")
        except EOFError:
            print()
            return 0
        cmd = text.strip().lower()
        if cmd in ("/quit", "/exit", "/q"):
            return 0
        if cmd == "/new":
            conversation_id = f"{CHANNEL}:chat-{uuid.uuid4().hex[:12]}"
            print(f"(new conversation {conversation_id})")
            continue
        action = "request_human" if cmd == "/human" else None
        replies = service.handle(InboundMessage(address=address_for(conversation_id), text=text, action=action))
        for reply in replies:
            print(render_text(reply))
            print()
