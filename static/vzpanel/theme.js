// Light or dark: the user's choice (remembered in localStorage) or else the system's (prefers-color-scheme).
// Loaded without defer in <head>, before the style sheets, so the first paint already has the right theme.
(function () {
  "use strict";
  var KEY = "vzpanel-theme";
  var system = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function chosen() {
    try {
      var value = localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : "auto";
    } catch (e) {
      return "auto";  // storage refused (private mode, policy): follow the system
    }
  }

  function apply() {
    var choice = chosen();
    var theme = choice === "auto" ? (system && system.matches ? "dark" : "light") : choice;
    document.documentElement.setAttribute("data-bs-theme", theme);
    document.querySelectorAll("[data-theme-choice]").forEach(function (button) {
      var on = button.getAttribute("data-theme-choice") === choice;
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.classList.toggle("active", on);
    });
  }

  function choose(choice) {
    try {
      if (choice === "auto") localStorage.removeItem(KEY); else localStorage.setItem(KEY, choice);
    } catch (e) { /* not remembered, still applied below for this page */ }
    apply();
  }

  apply();
  if (system && system.addEventListener) system.addEventListener("change", apply);
  document.addEventListener("DOMContentLoaded", function () {
    apply();
    document.querySelectorAll("[data-theme-choice]").forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.preventDefault();
        choose(button.getAttribute("data-theme-choice"));
      });
    });
  });
})();
