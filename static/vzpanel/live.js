// Live task progress. A [data-ws] element opens one websocket: progress events update task cards in
// place; when a task changes state (queued → running → ended) or a new one appears, the page's live region
// is fetched again (htmx), so the server renders every view of a task (panel, table, buttons) from one row:
// a page never shows a task running in one place and queued in another.
// Without websockets, the live region is polled while a task is active.
// Messages about a task (data-task) go away, or say it failed, when the page sees that task end.
// State changes are announced to screen readers through #live-status (aria-live, polite).
(function () {
  "use strict";

  const ACTIVE = '.task-panel[data-status="queued"], .task-panel[data-status="running"]';
  const FINISHED = ["completed", "failed", "errored", "cancelled"];

  function announce(text) {
    const status = document.getElementById("live-status");
    if (!status || !text) return;
    status.textContent = "";
    setTimeout(function () { status.textContent = text; }, 50);  // a change, even for the same words
  }

  // A panel the user has opened (a row's "Roll back / delete") stays open, with what they ticked or typed,
  // when the region around it is drawn again because a task changed state.
  function openPanels(target) {
    return Array.from(target.querySelectorAll("details[open][id]")).map(function (panel) {
      const fields = Array.from(panel.querySelectorAll("input[id], select[id], textarea[id]")).map(function (f) {
        return {id: f.id, value: f.value, checked: f.checked};
      });
      return {id: panel.id, fields: fields};
    });
  }

  function reopen(panels) {
    panels.forEach(function (saved) {
      const panel = document.getElementById(saved.id);
      if (!panel) return;
      panel.open = true;
      saved.fields.forEach(function (f) {
        const field = document.getElementById(f.id);
        if (!field || !panel.contains(field)) return;
        if (field.type === "checkbox" || field.type === "radio") field.checked = f.checked;
        else if (field.type !== "hidden") field.value = f.value;
      });
    });
  }

  function refresh(root) {
    const target = document.querySelector(root.dataset.refreshTarget);
    if (!target) return;
    target.setAttribute("aria-busy", "true");
    htmx.ajax("GET", root.dataset.refreshUrl, {target: target, swap: "innerHTML"}).finally(function () {
      target.removeAttribute("aria-busy");
    });
  }

  function settleMessages(task) {
    document.querySelectorAll('#messages [data-task="' + task.id + '"]').forEach(function (alert) {
      if (task.status === "completed" || !task.status) {
        alert.remove();  // the page itself now shows the outcome
        return;
      }
      alert.classList.remove("alert-success", "alert-info", "alert-warning");
      alert.classList.add("alert-danger");
      const close = alert.querySelector(".btn-close");
      alert.textContent = "Task " + task.id + " (" + (task.action_label || task.action) + ") " + task.status +
        (task.error ? ": " + task.error : ".");
      if (close) alert.appendChild(close);
    });
  }

  // Pages that poll (a class's dashboard) or were re-rendered show tasks with data-task-id and data-task-state:
  // a message about one that has ended is settled from there.
  function settleFromPage() {
    document.querySelectorAll("#messages [data-task]").forEach(function (alert) {
      const shown = document.querySelector('[data-task-id="' + alert.dataset.task + '"][data-task-state]');
      if (shown && FINISHED.indexOf(shown.dataset.taskState) >= 0) {
        settleMessages({id: alert.dataset.task, status: shown.dataset.taskState, action_label: shown.dataset.taskLabel});
      }
    });
  }

  function update(panel, task, snapshot) {
    const bar = panel.querySelector(".progress-bar");
    bar.style.width = task.progress + "%";
    bar.textContent = task.progress + "%";
    panel.querySelector(".progress").setAttribute("aria-valuenow", task.progress);
    panel.querySelector(".task-message").textContent = task.message || "";
    const log = panel.querySelector(".task-log");
    if (snapshot && task.log !== undefined) {
      log.textContent = task.log;
    } else if (task.log_lines > parseInt(panel.dataset.logLines || "0", 10) && task.message) {
      log.textContent += task.message + "\n";  // one log line per message
    }
    panel.dataset.logLines = task.log_lines;
  }

  function onTask(root, task, snapshot) {
    const panel = document.getElementById("task-" + task.id);
    if (task.finished) settleMessages(task);
    if (panel && panel.dataset.status === task.status) {
      if (!task.finished) update(panel, task, snapshot);  // progress only: the state shown is still right
      return;
    }
    if (!snapshot || panel) {
      // A new state, or a task new to this page: the server renders it everywhere at once.
      if (!snapshot || task.finished) {
        announce("Task " + task.id + ", " + (task.action_label || task.action) +
                 (task.ve ? " of VE " + task.ve : "") + ": " + task.status + ".");
      }
      refresh(root);
    }
  }

  function onSnapshot(root, event) {
    // The snapshot lists the VE's active tasks: one this page shows as active (or a message is about) that is
    // not among them ended between the page's rendering and this connection, so no event of it will come.
    const active = new Set((event.tasks || []).map(function (task) { return String(task.id); }));
    const shown = root.querySelectorAll(ACTIVE);
    if (Array.from(shown).some(function (panel) { return !active.has(panel.dataset.taskId); })) refresh(root);
    document.querySelectorAll("#messages [data-task]").forEach(function (alert) {
      if (!active.has(alert.dataset.task)) settleMessages({id: alert.dataset.task});
    });
  }

  function connect(root) {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let opened = false;
    let socket;
    try {
      socket = new WebSocket(scheme + location.host + root.dataset.ws);
    } catch (e) {
      poll(root);
      return;
    }
    socket.onopen = function () { opened = true; root.dataset.live = "ws"; };
    socket.onmessage = function (message) {
      const event = JSON.parse(message.data);
      if (event.type === "task" && event.task) onTask(root, event.task, !!event.snapshot);
      if (event.type === "ve" && !event.snapshot) refresh(root);
      (event.tasks || []).forEach(function (task) { onTask(root, task, true); });
      if (event.type === "ve" && event.snapshot) onSnapshot(root, event);
      if (event.type === "gone") announce(event.message);
    };
    socket.onclose = function () {
      if (!opened) { poll(root); return; }  // refused or no websockets here: poll instead
      root.dataset.live = "reconnecting";
      setTimeout(function () { connect(root); }, 2000);
    };
  }

  function poll(root) {
    root.dataset.live = "poll";
    setInterval(function () {
      if (root.querySelector(ACTIVE)) refresh(root);
    }, 2000);
  }

  // Regions htmx polls on their own (a class's dashboard) carry data-announce: a short summary said aloud
  // when it changes, instead of the whole region read out at every poll.
  const announced = {};
  function summaries(speak) {
    document.querySelectorAll("[data-announce][id]").forEach(function (region) {
      const text = region.dataset.announce;
      if (speak && announced[region.id] !== undefined && announced[region.id] !== text) announce(text);
      announced[region.id] = text;
    });
  }
  // Taken at the moment of the swap (not when the request left), so a panel opened meanwhile counts too.
  document.addEventListener("htmx:beforeSwap", function (event) {
    event.detail.target._openPanels = openPanels(event.detail.target);
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    reopen(event.detail.target._openPanels || []);
    event.detail.target._openPanels = null;
  });
  document.addEventListener("htmx:afterSettle", function () { summaries(true); settleFromPage(); });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-ws]").forEach(connect);
    summaries(false);
    settleFromPage();
  });
})();
