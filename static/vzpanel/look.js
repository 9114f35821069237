// Tables on narrow screens. Each body cell gets its column's name (data-label, from the table's header) when its
// template gave none; a table wider than its box on a phone-sized screen is shown stacked (.table-stack in
// panel.css: one block per row, each cell with its column's name), so no page scrolls sideways and no button
// hides at the far end of a table. Templates can mark a table .table-stack themselves (no JS needed then).
(function () {
  "use strict";

  const NARROW = window.matchMedia("(max-width: 767.98px)");

  function label(table) {
    const heads = table.tHead ? Array.from(table.tHead.rows[0] ? table.tHead.rows[0].cells : []) : [];
    if (!heads.length) return;
    const names = [];
    heads.forEach(function (th) {
      const name = th.textContent.trim();
      for (let i = 0; i < (th.colSpan || 1); i++) names.push(name);
    });
    Array.from(table.tBodies).forEach(function (body) {
      Array.from(body.rows).forEach(function (row) {
        let column = 0;
        Array.from(row.cells).forEach(function (cell) {
          if (!cell.hasAttribute("data-label") && cell.colSpan === 1 && names[column]) {
            cell.setAttribute("data-label", names[column]);
          }
          column += cell.colSpan || 1;
        });
      });
    });
  }

  function fit(table) {
    if (table.dataset.autoStack) {  // measure it as a table again
      table.classList.remove("table-stack");
      delete table.dataset.autoStack;
    }
    if (!NARROW.matches || table.classList.contains("table-stack")) return;
    const box = table.parentElement;
    if (box && table.scrollWidth > box.clientWidth + 1) {
      table.classList.add("table-stack");
      table.dataset.autoStack = "1";
    }
  }

  function adapt(root) {
    (root || document).querySelectorAll("table.table").forEach(function (table) {
      label(table);
      fit(table);
    });
  }

  let pending = null;
  function later() {
    clearTimeout(pending);
    pending = setTimeout(function () { adapt(document); }, 150);
  }

  document.addEventListener("DOMContentLoaded", function () { adapt(document); });
  document.addEventListener("htmx:afterSettle", function (event) { adapt(event.detail.elt && event.detail.elt.parentElement); });
  window.addEventListener("resize", later);
})();
