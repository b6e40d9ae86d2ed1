/* Operator console: keeps the queue and the open ticket's transcript current (polls the JSON API
 * every 2 s with the session cookie; the queue also follows /console/api/events and, while the
 * server says changes of every node are pushed, polls only every 16 s). Builds DOM with
 * textContent only. No inline script (CSP). */
(function () {
  "use strict";
  var POLL_MS = 2000;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function age(s) {
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    var m = Math.floor((s % 3600) / 60);
    return Math.floor(s / 3600) + "h" + (m < 10 ? "0" : "") + m + "m";
  }
  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { location.href = "/console/login"; throw new Error("logged out"); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      });
  }

  // ------------------------------------------------------------ queue page
  var queue = document.querySelector("table[data-live=queue]");
  if (queue) {
    var tbody = queue.querySelector("tbody");
    var count = document.getElementById("queue-count");
    var lastKey = null;
    var refreshQueue = function () {
      getJSON("/console/api/tickets").then(function (data) {
        var key = JSON.stringify(data.tickets.map(function (t) { return [t.id, t.status, t.priority, t.operator]; }));
        var active = document.activeElement;
        var activeHref = active && active.getAttribute ? active.getAttribute("href") : null;
        if (key !== lastKey) {
          count.textContent = "(" + data.tickets.length + ")";
          var urgent = data.tickets.filter(function (t) { return t.priority === "urgent" && t.status === "open"; }).length;
          document.title = (urgent ? "[" + urgent + " urgent] " : "") + "(" + data.tickets.length + ") Queue · pbxbot console";
        }
        lastKey = key;
        var rows = document.createDocumentFragment();
        if (!data.tickets.length) {
          var tr0 = el("tr", "empty"); var td0 = el("td", null, "No open tickets / 未対応の問い合わせはありません");
          td0.colSpan = 8; tr0.appendChild(td0); rows.appendChild(tr0);
        }
        data.tickets.forEach(function (t) {
          var tr = el("tr", "prio-" + t.priority);
          var td = el("td"); td.appendChild(el("span", "badge " + t.priority, t.priority)); tr.appendChild(td);
          td = el("td"); var a = el("a", null, t.id); a.href = "/console/tickets/" + encodeURIComponent(t.id);
          td.appendChild(a); tr.appendChild(td);
          [t.status, t.channel, t.reason, t.summary_line || "", t.operator || ""].forEach(function (v) { tr.appendChild(el("td", null, v)); });
          tr.appendChild(el("td", null, age(t.age_seconds)));
          rows.appendChild(tr);
        });
        tbody.replaceChildren(rows);
        if (activeHref) { // keep keyboard focus on the same link across refreshes
          var again = tbody.querySelector('a[href="' + activeHref.replace(/"/g, "") + '"]');
          if (again) again.focus();
        }
      }).catch(function () { });
    };
    var live = false, ticks = 0;
    setInterval(function () { if (!live || ++ticks % 8 === 0) refreshQueue(); }, POLL_MS);
    if (window.EventSource) {
      var events = new EventSource("/console/api/events");
      events.addEventListener("hello", function (e) { live = !!JSON.parse(e.data).live; refreshQueue(); });
      events.addEventListener("ticket", function () { refreshQueue(); });
      events.onerror = function () { live = false; };
    }
  }

  // ------------------------------------------------------------ ticket page
  var transcript = document.querySelector("ol[data-live=ticket]");
  if (transcript) {
    var tid = transcript.getAttribute("data-ticket");
    var statusEl = document.getElementById("ticket-status");
    var opEl = document.getElementById("ticket-operator");
    var shown = transcript.children.length;
    var lastStatus = statusEl ? statusEl.textContent : null;
    var who = { user: "User / 利用者", bot: "Bot", operator: "Operator / 担当者", system: "System" };
    var refreshTicket = function () {
      getJSON("/console/api/tickets/" + encodeURIComponent(tid)).then(function (d) {
        for (var i = shown; i < d.transcript.length; i++) {
          var m = d.transcript[i];
          var li = el("li", "msg " + m.role);
          li.appendChild(el("span", "who", (who[m.role] || m.role) + (m.operator ? " " + m.operator : "")));
          var time = el("time", null, m.created_at); time.setAttribute("datetime", m.created_at);
          li.appendChild(time);
          li.appendChild(el("p", null, m.text || "(talk to a person / 担当者と話す)"));
          transcript.appendChild(li);
        }
        shown = d.transcript.length;
        if (statusEl && d.ticket.status !== lastStatus) {
          lastStatus = d.ticket.status;
          statusEl.textContent = d.ticket.status;
        }
        if (opEl) opEl.textContent = d.ticket.operator || "—";
      }).catch(function () { });
    };
    setInterval(refreshTicket, POLL_MS);
  }
})();
