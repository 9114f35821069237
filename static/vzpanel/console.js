// Web console: xterm.js on the websocket ws/ves/<ctid>/console/.
// Output arrives as binary frames, control messages as JSON (see vzpanel/console/protocol.py).
// The session lives in the node agent: closing the tab or losing the network does not end it, and a
// reconnect replays its recent output. Only the writer's keys reach the VE; the server enforces it.
(function () {
  "use strict";

  const ACK_EVERY = 64 * 1024;   // tell the server what the terminal has shown, so it never floods the tab
  const MAX_SEND = 16 * 1024;    // big pastes go in pieces (the server takes at most 64 KiB per message)
  const PING_EVERY = 25000;

  function start(root) {
    const $ = function (id) { return document.getElementById(id); };
    const statusEl = $("console-status"), whoEl = $("console-who"), banner = $("console-banner");
    const encoder = new TextEncoder();
    const term = new Terminal({
      cursorBlink: true,
      fontFamily: '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, "Courier New", monospace',
      fontSize: parseInt(localStorage.getItem("vzpanel.console.fontSize") || "15", 10),
      scrollback: 5000,
      macOptionIsMeta: true,
      rightClickSelectsWord: true,
      theme: {background: "#1e1e1e", foreground: "#e6e6e6", cursor: "#f0f0f0", selectionBackground: "#4a6a9a"},
    });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open($("terminal"));
    fit.fit();

    let ws = null;
    let asked = root.dataset.role;     // "write" or "watch": what this page asks for
    let role = null;                   // "writer" or "viewer": what the server says we are
    let opened = false, ended = false, everOpened = false;
    let received = 0, shown = 0, acked = 0;   // output offsets (bytes)
    let retries = 0, retryTimer = null, waitingForStart = 0;
    let booting = false, writerName = null;

    function setState(state, text, kind) {
      root.dataset.state = state;
      statusEl.textContent = text;
      statusEl.className = "badge text-bg-" + (kind || "secondary");
    }

    function showBanner(text, offerStart) {
      $("console-banner-text").textContent = text;
      banner.classList.remove("d-none");
      banner.classList.add("d-flex");
      $("console-start").classList.toggle("d-none", !offerStart);
    }

    function hideBanner() {
      banner.classList.add("d-none");
      banner.classList.remove("d-flex");
    }

    function say(text, colour) {  // a line of our own in the terminal
      term.write("\r\n\x1b[" + (colour || "33") + "m" + text + "\x1b[0m\r\n");
    }

    function updateButtons() {
      const live = opened && !ended;
      $("console-takeover").classList.toggle("d-none", !(live && role === "viewer"));
      $("console-release").classList.toggle("d-none", !(live && role === "writer"));
      $("console-end").classList.toggle("d-none", !(live && role === "writer"));
    }

    function send(obj) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
    }

    function sendInput(bytes) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      for (let i = 0; i < bytes.length; i += MAX_SEND) ws.send(bytes.subarray(i, i + MAX_SEND));
    }

    function url() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      // boot=1 after "Start VE": a new session shows the VE's boot messages even if it has booted already
      return scheme + location.host + root.dataset.consoleWs + "?rows=" + term.rows + "&cols=" + term.cols + "&role=" + asked +
        (waitingForStart ? "&boot=1" : "");
    }

    function connect() {
      clearTimeout(retryTimer);
      if (ws) { ws.onclose = null; ws.close(); }
      opened = false;
      ended = false;
      setState(everOpened ? "reconnecting" : "connecting", everOpened ? "reconnecting…" : "connecting…", "secondary");
      ws = new WebSocket(url());
      ws.binaryType = "arraybuffer";
      ws.onmessage = onMessage;
      ws.onclose = onClose;
    }

    function reconnectLater() {
      const delay = Math.min(10000, 1000 * Math.pow(2, retries++));
      clearTimeout(retryTimer);
      retryTimer = setTimeout(connect, delay);
    }

    function onMessage(event) {
      if (typeof event.data !== "string") {
        const bytes = new Uint8Array(event.data);
        received += bytes.length;
        const upTo = received;
        term.write(bytes, function () {
          shown = upTo;
          if (shown - acked >= ACK_EVERY) { acked = shown; send({type: "ack", offset: shown}); }
        });
        return;
      }
      const msg = JSON.parse(event.data);
      (handlers[msg.type] || function () {})(msg);
    }

    const handlers = {
      opened: function (msg) {
        opened = true; everOpened = true; retries = 0; waitingForStart = 0;
        role = msg.role;
        received = shown = acked = msg.offset;
        hideBanner();
        term.reset();  // the scrollback follows: the screen is rebuilt from it
        if (role === "writer") {
          fit.fit();
          if (term.rows !== msg.rows || term.cols !== msg.cols) send({type: "resize", rows: term.rows, cols: term.cols});
        } else {
          term.resize(msg.cols, msg.rows);  // watch at the writer's size, so full-screen programs look right
        }
        booting = !!msg.booting;
        showRole(msg.writer, msg.created ? "new session" : "session resumed");
        term.focus();
      },
      booted: function () {
        booting = false;
        showRole(writerName, "");
      },
      role: function (msg) {
        role = msg.role;
        if (role === "writer") {
          fit.fit();
          send({type: "resize", rows: term.rows, cols: term.cols});
        }
        showRole(msg.writer, msg.reason === "takeover" && role === "viewer" ? msg.by + " took over" : "");
      },
      size: function (msg) {
        if (role !== "writer") term.resize(msg.cols, msg.rows);
      },
      skipped: function (msg) {
        received = shown = acked = msg.offset;
        say("[" + msg.lost + " bytes of output skipped: this window fell behind]");
      },
      error: function (msg) {
        root.dataset.lastError = msg.code;
        if (msg.code === "not-running") {
          if (waitingForStart && Date.now() < waitingForStart) return;  // still booting: onClose retries
          showBanner(msg.message, true);
        } else if (msg.code === "no-such-ve" || msg.code === "attach-failed") {
          showBanner(msg.message, false);
        } else if (msg.code === "agent-unavailable") {
          showBanner(msg.message + " Retrying…", false);
        } else if (msg.code === "access-gone") {
          ended = true;
          say(msg.message, "31");
          showBanner(msg.message, false);
          setState("closed", "no access", "danger");
          updateButtons();
        } else if (msg.code === "read-only" || msg.code === "booting") {
          whoEl.textContent = msg.message;
        } else if (msg.code !== "no-session") {
          say(msg.message, "31");
        }
      },
      exited: function (msg) {
        ended = true; opened = false;
        say(msg.message + " Press Enter to open a new console.");
        setState("ended", "ended", "dark");
        updateButtons();
      },
      pong: function () {},
    };

    function showRole(writer, note) {
      writerName = writer;
      if (booting) {
        setState("open", "booting…", "warning");
        whoEl.textContent = note || "";
      } else if (role === "writer") {
        setState("open", "connected", "success");
        whoEl.textContent = note || "";
      } else {
        setState("open", "watching read-only", "info");
        whoEl.textContent = (note ? note + "; " : "") + (writer ? writer + " is typing" : "nobody is typing");
      }
      updateButtons();
    }

    function onClose(event) {
      const wasOpen = opened;
      opened = false;
      updateButtons();
      if (ended) return;  // the session ended; Enter opens a new one
      const code = root.dataset.lastError;
      root.dataset.lastError = "";
      if (code === "not-running" && waitingForStart && Date.now() < waitingForStart) {
        setState("starting", "waiting for the VE to start…", "warning");
        retryTimer = setTimeout(connect, 500);  // soon, so that the boot messages are seen as they come
      } else if (event.code === 4404 || event.code === 4401) {  // no (longer) access: retrying cannot help
        setState("closed", "no access", "danger");
        if (event.code === 4401) showBanner("You are no longer logged in. Reload the page to log in again.", false);
        else if (code !== "access-gone") showBanner("You have no access to this VE's console.", false);
      } else if (code === "not-running" || code === "no-such-ve" || code === "attach-failed") {
        setState("closed", "not available", "warning");
      } else if (!wasOpen && !everOpened && event.code !== 4000 && retries >= 2) {
        setState("closed", "could not connect", "danger");
        showBanner("The console could not connect. Are you still logged in? Reload the page to try again.", false);
      } else {
        setState("reconnecting", "reconnecting…", "warning");
        reconnectLater();
      }
    }

    // --- keys, copy and paste --------------------------------------------------------------
    term.onData(function (data) {
      if (ended) {
        if (data === "\r") { term.reset(); connect(); }
        return;
      }
      // Watchers send nothing (the server would drop it anyway), not even xterm's own answers to the
      // program's queries (cursor position and the like): those are the writer's terminal's to give.
      if (!opened || role !== "writer") return;
      sendInput(encoder.encode(data));
    });
    term.onKey(function () {
      if (opened && !ended && role !== "writer") whoEl.textContent = "Read-only: take over to type.";
    });
    term.onBinary(function (data) {  // mouse reports in some modes: one byte per character
      if (!opened || role !== "writer") return;
      const bytes = new Uint8Array(data.length);
      for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 255;
      sendInput(bytes);
    });
    term.onResize(function (size) {
      if (opened && role === "writer") send({type: "resize", rows: size.rows, cols: size.cols});
    });

    function copy() {
      const text = term.getSelection();
      if (!text) return;
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).catch(function () { legacyCopy(text); });
      } else {
        legacyCopy(text);
      }
    }

    function legacyCopy(text) {
      const area = document.createElement("textarea");
      area.value = text;
      area.style.position = "fixed"; area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); } finally { area.remove(); term.focus(); }
    }

    function paste() {
      if (navigator.clipboard && navigator.clipboard.readText && window.isSecureContext) {
        navigator.clipboard.readText().then(function (text) { term.paste(text); term.focus(); })
          .catch(function () { whoEl.textContent = "The browser did not allow reading the clipboard: press Ctrl+Shift+V."; });
      } else {
        whoEl.textContent = "Press Ctrl+Shift+V (or Shift+Insert) to paste.";
      }
    }

    term.attachCustomKeyEventHandler(function (e) {
      if (e.type !== "keydown") return true;
      if ((e.ctrlKey && e.shiftKey && e.code === "KeyC") || (e.ctrlKey && e.code === "Insert")) {
        copy();
        e.preventDefault();
        return false;
      }
      if ((e.ctrlKey && e.shiftKey && e.code === "KeyV") || (e.shiftKey && e.code === "Insert")) {
        return false;  // let the browser paste into xterm's text area: xterm sends it as a paste
      }
      return true;
    });

    // --- toolbar -----------------------------------------------------------------------------
    $("console-copy").addEventListener("click", function () { copy(); term.focus(); });
    $("console-paste").addEventListener("click", paste);
    $("console-takeover").addEventListener("click", function () { asked = "write"; send({type: "takeover"}); term.focus(); });
    $("console-release").addEventListener("click", function () { asked = "watch"; send({type: "release"}); });
    $("console-end").addEventListener("click", function () {
      if (confirm("End the shell for everyone watching this console?")) send({type: "close"});
    });
    $("console-reconnect").addEventListener("click", function () { retries = 0; term.reset(); connect(); });
    function fontSize(delta) {
      const size = Math.max(9, Math.min(28, term.options.fontSize + delta));
      term.options.fontSize = size;
      localStorage.setItem("vzpanel.console.fontSize", String(size));
      if (role !== "viewer") fit.fit();
    }
    $("console-smaller").addEventListener("click", function () { fontSize(-1); });
    $("console-bigger").addEventListener("click", function () { fontSize(1); });
    $("console-start").addEventListener("click", function () {
      const token = document.querySelector("#console-csrf input[name=csrfmiddlewaretoken]").value;
      $("console-start").disabled = true;
      fetch(root.dataset.startUrl, {method: "POST", headers: {"X-CSRFToken": token}, credentials: "same-origin"})
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          hideBanner();
          waitingForStart = Date.now() + 120000;
          setState("starting", "waiting for the VE to start…", "warning");
          connect();
        })
        .catch(function (e) { showBanner("The VE could not be started (" + e.message + ").", true); })
        .finally(function () { $("console-start").disabled = false; });
    });

    let resizeTimer = null;
    window.addEventListener("resize", function () {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(function () { if (role !== "viewer") fit.fit(); }, 100);
    });
    setInterval(function () { if (opened) send({type: "ping"}); }, PING_EVERY);
    window.addEventListener("online", function () { if (!opened && !ended) { retries = 0; connect(); } });

    root.console = {term: term, connect: connect};  // for tests and the curious
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("console");
    if (root) start(root);
  });
})();
