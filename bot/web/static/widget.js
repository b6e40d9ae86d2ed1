/* pbxbot helpdesk widget: <script src="https://BOT/widget.js" defer></script> adds a chat panel.
 *
 * Options (data- attributes on the script tag): data-lang="ja|en" (default: the page's lang,
 * then the browser's language), data-open="true" (open at load), data-title="...".
 * Vanilla JS, no dependencies, no build step; styles live in a shadow root so the host page's CSS
 * neither leaks in nor out. Keyboard: Tab order launcher → header → messages → input → send →
 * "talk to a person"; Enter sends, Shift+Enter adds a line, Escape closes the panel.
 * Live messages (operator replies) arrive over Server-Sent Events; on reconnect or reload the
 * widget fetches what it missed, so nothing is lost.
 */
(function () {
  "use strict";
  if (window.__pbxbotWidget) return;
  var script = document.currentScript;
  var src = script && script.src ? new URL(script.src, location.href) : new URL("/widget.js", location.href);
  var BASE = src.origin + src.pathname.replace(/\/widget\.js$/, "");
  var opts = (script && script.dataset) || {};

  var T = {
    ja: {
      launcher: "チャットで相談", title: "PBX 不正利用 相談窓口", close: "閉じる", input: "メッセージ",
      placeholder: "例: 深夜に海外への発信が大量にあります", send: "送信", human: "担当者と話す",
      hint: "Enter で送信、Shift+Enter で改行", thinking: "回答を作成しています…", you: "あなた",
      bot: "ボット", operator: "担当者", sources: "出典", ticket: "受付番号", switchLang: "English",
      switchLangLabel: "Switch to English", error: "送信できませんでした。通信状況を確認して、もう一度お試しください。",
      welcome: "IP-PBX の乗っ取り・不正発信についてご相談ください。被害が続いている場合は、まず通信事業者へ連絡して発信を止めてください。",
      humanText: "担当者と話したいです", newWindow: "（新しいタブで開きます）", live: "担当者の返信はこの画面に表示されます。",
      dateless: "日付なし"
    },
    en: {
      launcher: "Chat with us", title: "PBX toll-fraud helpdesk", close: "Close", input: "Message",
      placeholder: "e.g. Many international calls at night", send: "Send", human: "Talk to a person",
      hint: "Enter to send, Shift+Enter for a new line", thinking: "Composing an answer…", you: "You",
      bot: "Bot", operator: "Operator", sources: "Sources", ticket: "Ticket", switchLang: "日本語",
      switchLangLabel: "日本語に切り替え", error: "Could not send. Please check your connection and try again.",
      welcome: "Ask about IP-PBX takeover and toll fraud. If fraudulent calls are still going on, first call your carrier to stop them.",
      humanText: "I would like to talk to a person", newWindow: "(opens in a new tab)",
      live: "Operator replies will appear here.", dateless: "undated"
    }
  };
  function pickLang(v) { return /^ja/i.test(v || "") ? "ja" : (/^en/i.test(v || "") ? "en" : null); }
  var lang = pickLang(opts.lang) || pickLang(document.documentElement.lang) ||
             pickLang(navigator.language) || "ja";

  var KEY = "pbxbot-widget:" + BASE;
  var state = { cid: null, token: null, lastSeq: 0, seen: {}, clientIds: {}, es: null, busy: false };
  try {
    var saved = JSON.parse(localStorage.getItem(KEY) || "null");
    if (saved && saved.cid && saved.token) { state.cid = saved.cid; state.token = saved.token; }
  } catch (e) { /* storage blocked: a fresh conversation per page */ }
  function save() {
    try { localStorage.setItem(KEY, JSON.stringify({ cid: state.cid, token: state.token })); } catch (e) { }
  }

  // ------------------------------------------------------------------ DOM
  var host = document.createElement("div");
  host.id = "pbxbot-widget";
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var css = [
    ":host{all:initial}",
    "*{box-sizing:border-box;font-family:system-ui,-apple-system,'Noto Sans CJK JP','Noto Sans JP','Hiragino Sans',Meiryo,sans-serif}",
    ".launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;border:0;border-radius:28px;padding:14px 20px;background:#0b57d0;color:#fff;font-size:16px;font-weight:600;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25)}",
    ".launcher:hover{background:#0842a0}",
    ".panel{position:fixed;right:20px;bottom:84px;z-index:2147483000;width:min(400px,calc(100vw - 24px));height:min(600px,calc(100vh - 110px));display:flex;flex-direction:column;background:#fff;color:#1f1f1f;border:1px solid #c4c7c5;border-radius:12px;box-shadow:0 8px 28px rgba(0,0,0,.28);overflow:hidden;font-size:15px;line-height:1.55}",
    ".panel[hidden]{display:none}",
    "header{display:flex;align-items:center;gap:8px;padding:10px 12px;background:#0b57d0;color:#fff}",
    "h2{flex:1;margin:0;font-size:16px}",
    "header button{background:transparent;color:#fff;border:1px solid rgba(255,255,255,.7);border-radius:6px;padding:4px 8px;font-size:13px;cursor:pointer}",
    ".log{flex:1;overflow-y:auto;padding:12px;background:#f8fafd}",
    ".msg{margin:0 0 12px;padding:8px 10px;border-radius:10px;max-width:92%;word-wrap:break-word}",
    ".msg .who{display:block;font-size:12px;font-weight:700;color:#444746;margin-bottom:2px}",
    ".msg .text{margin:0;white-space:pre-wrap}",
    ".msg.user{margin-left:auto;background:#d3e3fd}",
    ".msg.bot{background:#fff;border:1px solid #dde3ea}",
    ".msg.operator{background:#e6f4ea;border:1px solid #8cc99b}",
    ".msg.notice{background:#fef7e0;border:1px solid #f0c36d}",
    ".cites{margin:6px 0 0;padding:6px 0 0 0;border-top:1px solid #e3e3e3;font-size:13px;list-style:none}",
    ".cites li{margin:2px 0}",
    ".cites-h{font-size:12px;font-weight:700;color:#444746;margin:6px 0 0}",
    "a{color:#0b57d0}",
    "sup a{text-decoration:none;font-weight:700}",
    ".ticket{margin:6px 0 0;font-size:13px;font-weight:700;color:#8c1d18}",
    ".status{min-height:1.4em;padding:0 12px;font-size:13px;color:#444746}",
    "form{display:flex;gap:8px;padding:8px 12px 4px;border-top:1px solid #dde3ea}",
    "textarea{flex:1;resize:none;font-size:15px;padding:8px;border:1px solid #747775;border-radius:8px;min-height:44px}",
    ".send{border:0;border-radius:8px;padding:0 16px;background:#0b57d0;color:#fff;font-size:15px;font-weight:600;cursor:pointer}",
    ".send[disabled]{background:#8fa9d6;cursor:progress}",
    ".row{display:flex;align-items:center;justify-content:space-between;gap:8px;padding:4px 12px 10px}",
    ".human{border:1px solid #0b57d0;background:#fff;color:#0b57d0;border-radius:8px;padding:6px 12px;font-size:14px;font-weight:600;cursor:pointer}",
    ".hint{font-size:12px;color:#5f6368;margin:0}",
    ".sr{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0,0,0,0);border:0}",
    ":focus-visible{outline:3px solid #f9ab00;outline-offset:2px}",
    "textarea:focus-visible{outline:3px solid #f9ab00;outline-offset:1px}",
    "@media (prefers-reduced-motion:no-preference){.msg{animation:in .15s ease-out}@keyframes in{from{opacity:0;transform:translateY(4px)}to{opacity:1}}}"
  ].join("\n");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "class") e.className = attrs[k]; else e.setAttribute(k, attrs[k]);
    }
    if (text != null) e.textContent = text;
    return e;
  }

  var style = el("style"); style.textContent = css; root.appendChild(style);
  var launcher = el("button", { "class": "launcher", type: "button", "aria-expanded": "false", "aria-controls": "pbxbot-panel" });
  var panel = el("section", { "class": "panel", id: "pbxbot-panel", role: "region", hidden: "" });
  var header = el("header");
  var title = el("h2", { id: "pbxbot-title" });
  var langBtn = el("button", { type: "button", "class": "lang" });
  var closeBtn = el("button", { type: "button", "class": "close" });
  header.appendChild(title); header.appendChild(langBtn); header.appendChild(closeBtn);
  var log = el("div", { "class": "log", role: "log", "aria-live": "polite", "aria-relevant": "additions", tabindex: "0" });
  var status = el("div", { "class": "status", role: "status", "aria-live": "polite" });
  var form = el("form", { novalidate: "" });
  var label = el("label", { "for": "pbxbot-input", "class": "sr" });
  var input = el("textarea", { id: "pbxbot-input", rows: "2", maxlength: "4000", autocomplete: "off" });
  var sendBtn = el("button", { type: "submit", "class": "send" });
  form.appendChild(label); form.appendChild(input); form.appendChild(sendBtn);
  var row = el("div", { "class": "row" });
  var humanBtn = el("button", { type: "button", "class": "human" });
  var hint = el("p", { "class": "hint", id: "pbxbot-hint" });
  row.appendChild(humanBtn); row.appendChild(hint);
  panel.setAttribute("aria-labelledby", "pbxbot-title");
  input.setAttribute("aria-describedby", "pbxbot-hint");
  panel.appendChild(header); panel.appendChild(log); panel.appendChild(status);
  panel.appendChild(form); panel.appendChild(row);
  root.appendChild(launcher); root.appendChild(panel);

  var welcomeEl = null;
  function applyLang() {
    var t = T[lang];
    launcher.textContent = t.launcher;
    title.textContent = t.title;
    panel.setAttribute("lang", lang);
    launcher.setAttribute("lang", lang);
    langBtn.textContent = t.switchLang;
    langBtn.setAttribute("aria-label", t.switchLangLabel);
    closeBtn.textContent = "×";
    closeBtn.setAttribute("aria-label", t.close);
    label.textContent = t.input;
    input.placeholder = t.placeholder;
    sendBtn.textContent = t.send;
    humanBtn.textContent = t.human;
    hint.textContent = t.hint;
    log.setAttribute("aria-label", t.title);
    if (welcomeEl) welcomeEl.querySelector(".text").textContent = t.welcome;
  }

  // ------------------------------------------------------------------ rendering
  function whoLabel(role, kind) {
    var t = T[lang];
    if (role === "user") return t.you;
    if (role === "operator" || kind === "operator") return t.operator;
    return t.bot;
  }

  function renderAnswer(p, text, cites, msgId) {
    // "[1]" markers become links to the cited source; everything is text nodes (no HTML injection).
    var byN = {};
    (cites || []).forEach(function (c) { byN[c.n] = c; });
    var re = /\[(\d{1,2})\]/g, last = 0, m;
    while ((m = re.exec(text)) !== null) {
      var c = byN[+m[1]];
      if (!c) continue;
      p.appendChild(document.createTextNode(text.slice(last, m.index)));
      var sup = el("sup");
      var a = el("a", { href: "#" + msgId + "-c" + c.n, "aria-label": T[lang].sources + " " + c.n }, "[" + c.n + "]");
      sup.appendChild(a); p.appendChild(sup);
      last = re.lastIndex;
    }
    p.appendChild(document.createTextNode(text.slice(last)));
  }

  function safeUrl(u) {
    try { var x = new URL(u); return (x.protocol === "https:" || x.protocol === "http:") ? x.href : null; }
    catch (e) { return null; }
  }

  function render(ev) {
    var role = ev.role || "bot";
    var kind = ev.kind || "";
    var cls = role === "user" ? "user" : (role === "operator" || kind === "operator" ? "operator" :
              (kind === "notice" || kind === "error" ? "notice" : "bot"));
    var msgId = "pbxbot-m" + (ev.seq || Math.floor(Math.random() * 1e9));
    var box = el("div", { "class": "msg " + cls, id: msgId });
    var evLang = ev.language === "en" || ev.language === "ja" ? ev.language : null;
    if (evLang) box.setAttribute("lang", evLang);
    box.appendChild(el("span", { "class": "who" }, whoLabel(role, kind)));
    var p = el("p", { "class": "text" });
    if (role === "user") p.textContent = ev.text || (ev.action === "request_human" ? T[lang].humanText : "");
    else renderAnswer(p, ev.answer || "", ev.citations, msgId);
    box.appendChild(p);
    var cites = ev.citations || [];
    if (cites.length) {
      box.appendChild(el("p", { "class": "cites-h" }, T[evLang || lang].sources));
      var ol = el("ol", { "class": "cites" });
      cites.forEach(function (c) {
        var li = el("li", { id: msgId + "-c" + c.n });
        var label = "[" + c.n + "] " + (c.publisher || "") + (evLang === "en" ? ": " : "「") + (c.title || "") +
                    (evLang === "en" ? "" : "」") + (c.published ? " (" + c.published + ")" : "");
        var url = safeUrl(c.url);
        if (url) {
          var a = el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, label);
          a.appendChild(el("span", { "class": "sr" }, " " + T[lang].newWindow));
          li.appendChild(a);
        } else {
          li.textContent = label;
        }
        ol.appendChild(li);
      });
      box.appendChild(ol);
    }
    if (ev.escalation && ev.escalation.ticket_id && (ev.answer || "").indexOf(ev.escalation.ticket_id) < 0) {
      box.appendChild(el("p", { "class": "ticket" }, T[lang].ticket + ": " + ev.escalation.ticket_id));
    }
    if (ev.escalation && ev.escalation.ticket_id) box.setAttribute("data-ticket", ev.escalation.ticket_id);
    box.setAttribute("data-kind", kind || role);
    log.appendChild(box);
    log.scrollTop = log.scrollHeight;
    return box;
  }

  function accept(ev) {
    // Each event is rendered once, whichever way it arrived (POST answer, SSE, history).
    if (ev.seq != null) {
      if (state.seen[ev.seq]) return;
      state.seen[ev.seq] = true;
      if (ev.seq > state.lastSeq) state.lastSeq = ev.seq;
    }
    if (ev.role === "user" && ev.client_id && state.clientIds[ev.client_id]) return; // shown when typed
    if (!ev.answer && ev.role !== "user") return; // a silent acknowledgement
    render(ev);
  }

  // ------------------------------------------------------------------ network
  function api(path) { return BASE + path; }

  function connect() {
    if (!state.cid || !state.token || !window.EventSource) return;
    if (state.es) state.es.close();
    var url = api("/api/chat/events?conversation_id=" + encodeURIComponent(state.cid) +
                  "&token=" + encodeURIComponent(state.token) + "&after=" + state.lastSeq);
    var es = new EventSource(url);
    state.es = es;
    es.onmessage = function (m) {
      try { accept(JSON.parse(m.data)); } catch (e) { }
    };
    es.onerror = function () {
      if (es.readyState === 2) { // closed for good (server restarted with a new key, ...): catch up, retry
        state.es = null;
        setTimeout(function () { catchUp().then(connect); }, 5000);
      }
    };
  }

  function catchUp() {
    if (!state.cid || !state.token) return Promise.resolve();
    return fetch(api("/api/chat/history?conversation_id=" + encodeURIComponent(state.cid) +
                     "&token=" + encodeURIComponent(state.token) + "&after=" + state.lastSeq))
      .then(function (r) {
        if (r.status === 403) { state.cid = null; state.token = null; save(); return null; }
        return r.ok ? r.json() : null;
      })
      .then(function (data) { if (data) data.events.forEach(accept); })
      .catch(function () { });
  }

  function newClientId() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function send(text, action, again) {
    if (state.busy) return;
    text = (text || "").trim();
    if (!text && !action) return;
    var clientId = newClientId();
    state.clientIds[clientId] = true;
    if (!again) render({ role: "user", text: text, action: action });
    state.busy = true;
    sendBtn.disabled = true;
    status.textContent = T[lang].thinking;
    var body = { text: text, client_id: clientId };
    if (action) body.action = action;
    if (state.cid) { body.conversation_id = state.cid; body.conversation_token = state.token; }
    fetch(api("/api/chat"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) { return { r: r, data: data }; });
    }).then(function (res) {
      var data = res.data;
      status.textContent = "";
      if (!data) throw new Error("bad response");
      if (res.r.status === 403 && data.error === "invalid_token" && state.cid && !again) {
        // the stored conversation cannot be written into any more (the server's key changed): a new one
        if (state.es) { state.es.close(); state.es = null; }
        state.cid = null; state.token = null; state.lastSeq = 0; save();
        return "again";
      }
      if (data.conversation_id && data.conversation_token) {
        var fresh = state.cid !== data.conversation_id;
        state.cid = data.conversation_id; state.token = data.conversation_token; save();
        if (fresh || !state.es) connect();
      }
      if (res.r.status === 429) { render({ role: "bot", kind: "notice", answer: data.message, language: data.language }); return; }
      if (!res.r.ok) { render({ role: "bot", kind: "error", answer: data.message || T[lang].error }); return; }
      if (data.user_seq != null) state.seen[data.user_seq] = true;
      (data.replies || []).forEach(accept);
      if (action === "request_human") status.textContent = T[lang].live;
    }).catch(function () {
      status.textContent = "";
      render({ role: "bot", kind: "error", answer: T[lang].error });
    }).then(function (next) {
      state.busy = false;
      sendBtn.disabled = false;
      if (next === "again") send(text, action, true);
    });
  }

  // ------------------------------------------------------------------ behaviour
  var opened = false;
  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    if (!opened) {
      opened = true;
      welcomeEl = render({ role: "bot", kind: "greeting", answer: T[lang].welcome, language: lang });
      catchUp().then(connect);
    }
    input.focus();
  }
  function close() {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    launcher.focus();
  }
  launcher.addEventListener("click", function () { panel.hidden ? open() : close(); });
  closeBtn.addEventListener("click", close);
  langBtn.addEventListener("click", function () { lang = lang === "ja" ? "en" : "ja"; applyLang(); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") { e.preventDefault(); close(); } });
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value;
    if (!text.trim() || state.busy) return;
    input.value = "";
    send(text, null);
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { // not while an IME composes
      e.preventDefault();
      form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit", { cancelable: true }));
    }
  });
  humanBtn.addEventListener("click", function () { send("", "request_human"); });

  applyLang();
  function mount() {
    document.body.appendChild(host);
    if (opts.open === "true") open();
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
  window.__pbxbotWidget = { open: open, close: close, send: send, state: state };
})();
