// Live task progress. A [data-ws] element opens one websocket: progress events update task cards in
// place; when a task ends or a new one appears, the page's live region is fetched again (htmx).
// Without websockets, the live region is polled while a task is active.
(function () {
  "use strict";

  function refresh(root) {
    const target = document.querySelector(root.dataset.refreshTarget);
    if (target) htmx.ajax("GET", root.dataset.refreshUrl, {target: target, swap: "innerHTML"});
  }

  function update(panel, task, snapshot) {
    const bar = panel.querySelector(".progress-bar");
    bar.style.width = task.progress + "%";
    bar.textContent = task.progress + "%";
    panel.querySelector(".progress").setAttribute("aria-valuenow", task.progress);
    panel.querySelector(".task-status").textContent = task.status;
    panel.dataset.status = task.status;
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
    if (panel && !task.finished) {
      update(panel, task, snapshot);
    } else if (!snapshot || (panel && panel.dataset.status !== task.status)) {
      refresh(root);  // ended, or new to this page: the server renders the outcome
    }
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
      if (event.type === "ve" && event.snapshot) {
        // The snapshot lists the VE's active tasks: one this page shows as active that is not among them
        // ended between the page's rendering and this connection, so no event of it will come: re-render.
        const active = new Set((event.tasks || []).map(function (task) { return "task-" + task.id; }));
        const shown = root.querySelectorAll('.task-panel[data-status="queued"], .task-panel[data-status="running"]');
        if (Array.from(shown).some(function (panel) { return !active.has(panel.id); })) refresh(root);
      }
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
      if (root.querySelector('.task-panel[data-status="queued"], .task-panel[data-status="running"]')) refresh(root);
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-ws]").forEach(connect);
  });
})();
