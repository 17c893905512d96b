// docsach web chat: one WebSocket, no framework. Every message is shown once, in id order; what
// the person sends waits in a queue until docsach acknowledges it, and is sent again (same ref)
// after a reconnect, so nothing is lost and nothing is handled twice. Text goes in with
// textContent only: nothing a message says can become markup.
(function () {
  "use strict";
  var body = document.body;
  var S = JSON.parse(body.getAttribute("data-strings") || "{}");
  var first = JSON.parse(body.getAttribute("data-first") || "[]");
  var maxText = parseInt(body.getAttribute("data-max") || "2000", 10);
  var csrf = document.querySelector('meta[name="csrf"]').getAttribute("content");
  var log = document.getElementById("log");
  var statusEl = document.getElementById("status");
  var form = document.getElementById("composer");
  var input = document.getElementById("text");
  var photo = document.getElementById("photo");
  var shown = {};          // message id -> element
  var lastId = 0;
  var queue = [];          // {ref, frame, el} not yet acknowledged
  var ws = null, ready = false, delay = 1000, timer = null, greeted = false;

  function ref() {
    var a = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function setStatus(text) {
    if (text) { statusEl.textContent = text; statusEl.hidden = false; } else { statusEl.hidden = true; }
  }

  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 80; }
  function scrollDown() { log.scrollTop = log.scrollHeight; }

  function bubble(mine) {
    var el = document.createElement("div");
    el.className = "msg " + (mine ? "me" : "bot");
    return el;
  }

  function render(m) {
    var el = bubble(m.mine);
    el.setAttribute("data-id", m.id);
    if (m.notice) el.classList.add("notice");
    if (m.unread) el.classList.add("unread");
    if (m.photo) {
      var img = document.createElement("img");
      img.src = m.photo; img.alt = ""; img.loading = "lazy";
      el.appendChild(img);
    }
    if (m.text) el.appendChild(document.createTextNode(m.text));
    if (m.file) {
      var a = document.createElement("a");
      a.className = "file"; a.href = m.file.url; a.setAttribute("download", m.file.name);
      a.textContent = "📄 " + (S.file || "") + " " + m.file.name;
      el.appendChild(document.createElement("br"));
      el.appendChild(a);
    }
    if (m.buttons && !m.mine) el.appendChild(keys(m.buttons));
    return el;
  }

  function keys(rows) {
    var box = document.createElement("div");
    box.className = "keys";
    rows.forEach(function (row) {
      var line = document.createElement("div");
      line.className = "row";
      row.forEach(function (b) {
        var k;
        if (b.url) {
          k = document.createElement("a");
          k.href = b.url; k.target = "_blank"; k.rel = "noopener noreferrer";
        } else {
          k = document.createElement("button");
          k.type = "button";
          k.addEventListener("click", function () { press(b); });
        }
        k.textContent = b.label;
        line.appendChild(k);
      });
      box.appendChild(line);
    });
    return box;
  }

  function place(m) {
    if (shown[m.id]) return;
    var follow = atBottom();
    var el = render(m);
    shown[m.id] = el;
    // keep id order even if a lower id arrives late
    var next = null;
    var nodes = log.querySelectorAll(".msg[data-id]");
    for (var i = nodes.length - 1; i >= 0; i--) {
      if (parseInt(nodes[i].getAttribute("data-id"), 10) > m.id) next = nodes[i]; else break;
    }
    log.insertBefore(el, next || firstPending());
    if (m.id > lastId) lastId = m.id;
    if (m.notice && m.unread && !document.hidden && ready) markRead();
    if (follow || m.mine) scrollDown();
  }

  function firstPending() { return log.querySelector(".msg.pending"); }

  function markRead() {
    if (ws && ws.readyState === 1 && lastId) ws.send(JSON.stringify({ type: "read", upto: lastId }));
    setTimeout(function () {
      Array.prototype.forEach.call(log.querySelectorAll(".msg.unread"), function (e) { e.classList.remove("unread"); });
    }, 4000);
  }

  function enqueue(frame, label) {
    frame.ref = ref();
    var el = bubble(true);
    el.classList.add("pending");
    el.textContent = label;
    log.appendChild(el);
    scrollDown();
    queue.push({ ref: frame.ref, frame: frame, el: el });
    flush();
  }

  function flush() {
    if (!ws || ws.readyState !== 1 || !ready) return;
    queue.forEach(function (q) { if (!q.sent) { ws.send(JSON.stringify(q.frame)); q.sent = true; } });
  }

  function acked(r) {
    for (var i = 0; i < queue.length; i++) {
      if (queue[i].ref === r) { queue[i].el.remove(); queue.splice(i, 1); return; }
    }
  }

  function send(text) {
    text = text.trim();
    if (!text) return;
    if (text.length > maxText) { notice(S.too_long); return; }
    enqueue({ type: "text", text: text }, text);
  }

  function press(b) { enqueue({ type: "button", payload: b.payload, label: b.label }, b.label); }

  function notice(text) {
    var el = bubble(false);
    el.classList.add("notice");
    el.textContent = text;
    log.appendChild(el);
    scrollDown();
  }

  function connect() {
    clearTimeout(timer);
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var sock = ws = new WebSocket(scheme + location.host + "/chat/ws");
    ready = false;
    setStatus(S.connecting);
    ws.onopen = function () {
      delay = 1000;
      ws.send(JSON.stringify({ type: "hello", after: lastId }));
    };
    ws.onmessage = function (ev) {
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "message") { place(m); }
      else if (m.type === "ready") {
        ready = true; setStatus("");
        queue.forEach(function (q) { q.sent = false; });
        if (!lastId && !first.length && !greeted) first.push("/start");   // a first visit: say hello
        greeted = true;
        while (first.length) { var c = first.shift(); enqueue({ type: "text", text: c }, c); }
        if (history.replaceState && location.search) history.replaceState(null, "", location.pathname);
        flush();
        if (!document.hidden) markRead();
      }
      else if (m.type === "ack") { acked(m.ref); }
      else if (m.type === "error") { if (m.ref) acked(m.ref); notice(m.text); }
      else if (m.type === "rotate") { rotate(m.ticket); }
      else if (m.type === "reset") { location.reload(); }
    };
    ws.onclose = function (ev) {
      if (sock !== ws || sock.rotating) return;   // replaced, or swapping its session after a link
      ready = false;
      if (ev.code === 4401) { setStatus(S.session_ended); setTimeout(function () { location.reload(); }, 1500); return; }
      setStatus(S.offline);
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }

  function rotate(ticket) {
    ws.rotating = true;
    fetch("/chat/rotate", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ ticket: ticket })
    }).then(function (r) { return r.json(); }).then(function (j) {
      if (j.ok) { csrf = j.csrf; connect(); } else { location.reload(); }
    }).catch(function () { setTimeout(connect, 1000); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    send(input.value);
    input.value = "";
    input.style.height = "";
  });
  input.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.submit(); }
  });
  input.addEventListener("input", function () {
    input.style.height = "";
    input.style.height = Math.min(input.scrollHeight, 128) + "px";
  });
  photo.addEventListener("change", function () {
    var file = photo.files && photo.files[0];
    if (!file) return;
    var data = new FormData();
    data.append("photo", file);
    setStatus(S.sending);
    fetch("/chat/upload", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf }, body: data })
      .then(function (r) { return r.json(); })
      .then(function (j) { setStatus(""); if (!j.ok) notice(j.text || S.upload_failed); })
      .catch(function () { setStatus(""); notice(S.upload_failed); });
    photo.value = "";
  });
  document.addEventListener("visibilitychange", function () { if (!document.hidden && ready) markRead(); });
  window.addEventListener("online", function () { if (!ws || ws.readyState > 1) connect(); });
  connect();
})();
