"""End to end in a real browser: the helpdesk widget, the operator console, and back.

A user asks in the widget and sees an answer with citations; clicks "talk to a person"; an operator
(already logged into the console) sees the ticket appear in the live queue, claims it and replies;
the user sees the reply in the widget, live; the operator resolves and the bot answers again.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re

import pytest

from tests.web_fakes import ServerThread, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "e2e-operator-token-4b1f9c"
OPERATOR_REPLY = "担当の山田です。まず回線の発信停止を通信事業者に依頼してください。"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from bot.config import Settings
    from bot.web.app import create_app

    tmp = tmp_path_factory.mktemp("e2e")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'e2e.sqlite3'}",
        operator_token=TOKEN,
        rate_limit_per_minute=1000,
    )
    # No core given: create_app builds the real ConversationService over the real knowledge base
    # (bot.wiring; the index of PBXBOT_DATA_DIR, built first if there is none) and a fresh SQLite store.
    app = create_app(settings, outbox_interval=0.2)
    srv = ServerThread(app, free_port()).start(timeout=600)
    try:
        yield srv
    finally:
        srv.stop()


def test_user_escalates_operator_replies_and_bot_answers_again(server, browser, artifacts_dir):
    base = server.url
    user_ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 860})
    op_ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 860})
    user_ctx.set_default_timeout(30_000)
    op_ctx.set_default_timeout(30_000)
    user, op = user_ctx.new_page(), op_ctx.new_page()
    console_errors: list[str] = []
    user.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        # --- the operator logs in first and watches the live queue
        op.goto(f"{base}/console")
        assert op.url.endswith("/console/login")
        op.fill("#secret", TOKEN)
        op.fill("#name", "yamada")
        op.click("button[type=submit]")
        op.wait_for_url(f"{base}/console")
        assert op.locator("h1").first.inner_text().startswith("Queue")

        # --- the user opens the widget with the keyboard and asks
        user.goto(f"{base}/")
        launcher = user.locator("#pbxbot-widget .launcher")
        launcher.focus()
        user.keyboard.press("Enter")
        textarea = user.locator("#pbxbot-widget textarea")
        assert textarea.evaluate("e => e.getRootNode().activeElement === e"), "focus moves to the input"
        textarea.type("IP-PBXが乗っ取られて海外に不正発信されています。どうすればいいですか？")
        user.keyboard.press("Enter")
        answer = user.locator("#pbxbot-widget .msg.bot").filter(has=user.locator(".cites a")).first
        answer.wait_for()
        links = answer.locator(".cites a")
        assert links.count() >= 1
        href = links.first.get_attribute("href")
        assert href and href.startswith("http")
        assert re.search(r"\[\d+\]", links.first.inner_text())
        user.screenshot(path=str(artifacts_dir / "e2e-1-answer-with-citations.png"), animations="disabled")

        # --- "talk to a person"
        user.locator("#pbxbot-widget button.human").click()
        handoff = user.locator("#pbxbot-widget .msg[data-ticket]").last
        handoff.wait_for()
        ticket_id = handoff.get_attribute("data-ticket")
        assert ticket_id
        user.screenshot(path=str(artifacts_dir / "e2e-2-handoff.png"), animations="disabled")

        # --- the ticket appears in the operator's queue without a reload
        row_link = op.locator(f"#queue a:text-is('{ticket_id}')")
        row_link.wait_for(timeout=15_000)
        op.screenshot(path=str(artifacts_dir / "e2e-3-console-queue.png"), animations="disabled")
        row_link.click()
        op.wait_for_url(re.compile(r"/console/tickets/"))
        op.click("#claim")
        op.wait_for_url(re.compile(r"notice=claim"))
        assert op.locator("#ticket-status").inner_text() == "claimed"
        op.fill("#reply-text", OPERATOR_REPLY)
        op.click("#send-reply")
        op.wait_for_url(re.compile(r"notice=reply"))
        op.locator(".transcript .msg.operator").first.wait_for()
        op.screenshot(path=str(artifacts_dir / "e2e-4-console-ticket.png"), full_page=True, animations="disabled")

        # --- the user sees the operator's reply live
        user.locator("#pbxbot-widget .msg.operator", has_text="担当の山田です").wait_for(timeout=15_000)
        user.screenshot(path=str(artifacts_dir / "e2e-5-operator-reply-live.png"), animations="disabled")

        # --- the operator resolves; the bot answers again
        op.click("#resolve")
        op.wait_for_url(re.compile(r"notice=resolve"))
        assert op.locator("#ticket-status").inner_text() == "resolved"
        before = user.locator("#pbxbot-widget .msg.bot .cites a").count()
        textarea.fill("不正発信を防ぐための設定を教えてください")
        user.keyboard.press("Enter")
        user.wait_for_function(
            """(n) => document.querySelector('#pbxbot-widget').shadowRoot
                   .querySelectorAll('.msg.bot .cites a').length > n""", arg=before)
        user.screenshot(path=str(artifacts_dir / "e2e-6-bot-answers-again.png"), animations="disabled")
        assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
    finally:
        user_ctx.close()
        op_ctx.close()


def test_widget_follows_page_language_and_is_keyboard_usable(server, browser, artifacts_dir):
    ctx = browser.new_context(locale="en-US")
    page = ctx.new_page()
    try:
        page.set_content('<html lang="en"><body><h1>Intranet</h1>'
                         f'<script src="{server.url}/widget.js"></script></body></html>')
        launcher = page.locator("#pbxbot-widget .launcher")
        assert launcher.inner_text() == "Chat with us"
        launcher.focus()
        page.keyboard.press("Enter")
        assert page.locator("#pbxbot-widget button.human").inner_text() == "Talk to a person"
        page.keyboard.press("Escape")
        assert page.locator("#pbxbot-widget .panel").is_hidden()
        assert launcher.evaluate("e => e.getRootNode().activeElement === e"), "focus returns to the launcher"
        outline = launcher.evaluate("e => getComputedStyle(e).outlineStyle")
        assert outline != "none", "visible focus"
        page.screenshot(path=str(artifacts_dir / "e2e-widget-en-closed.png"), animations="disabled")
    finally:
        ctx.close()
