// CRD coverage console: small progressive enhancements; every page works without this script.
(function () {
  "use strict";

  // Try it: copy the chosen scenario's request into the editor, to change it before sending.
  function scenarioLoader() {
    var button = document.getElementById("load-scenario");
    var select = document.getElementById("scenario");
    var editor = document.getElementById("request-json");
    if (!button || !select || !editor) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var url = button.getAttribute("data-url") + "?id=" + encodeURIComponent(select.value);
      button.disabled = true;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (resp) {
          if (!resp.ok) throw new Error("HTTP " + resp.status);
          return resp.json();
        })
        .then(function (body) {
          editor.value = JSON.stringify(body, null, 2);
          editor.focus();
        })
        .catch(function (err) {
          editor.value = "";
          editor.setAttribute("placeholder", "Could not load the scenario: " + err.message);
        })
        .finally(function () { button.disabled = false; });
    });
  }

  // Following an in-page link: a tree node's link moves keyboard focus to its row in the table
  // (decision page); a value set's link opens its details (revision page).
  function focusTarget() {
    function go() {
      if (!location.hash) return;
      var target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
      if (!target) return;
      if (target.tagName === "TR") target.focus({ preventScroll: false });
      if (target.tagName === "DETAILS") {
        target.open = true;
        var summary = target.querySelector("summary");
        if (summary) summary.focus();
      }
    }
    window.addEventListener("hashchange", go);
    go();
  }

  document.addEventListener("DOMContentLoaded", function () {
    scenarioLoader();
    focusTarget();
  });
})();
