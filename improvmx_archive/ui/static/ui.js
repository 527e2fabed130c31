// Enhancements only: every page works without this file (keyboard shortcuts, select all,
// a confirmation before destructive buttons).
(function () {
  "use strict";

  document.querySelectorAll("[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      box.form.querySelectorAll("input[name=ids]").forEach(function (item) { item.checked = box.checked; });
    });
  });

  document.querySelectorAll("[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });

  var rows = Array.prototype.slice.call(document.querySelectorAll(".message-row"));
  var focused = -1;
  function focusRow(index) {
    if (!rows.length) { return; }
    if (focused >= 0) { rows[focused].classList.remove("focused"); }
    focused = Math.max(0, Math.min(rows.length - 1, index));
    rows[focused].classList.add("focused");
    rows[focused].scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || /INPUT|TEXTAREA|SELECT/.test(target.tagName)) { return; }
    if (event.key === "/") {
      var search = document.getElementById("q");
      if (search) { event.preventDefault(); search.focus(); }
      return;
    }
    if (rows.length) {
      if (event.key === "j") { focusRow(focused + 1); return; }
      if (event.key === "k") { focusRow(focused - 1); return; }
      if (event.key === "x" && focused >= 0) {
        var box = rows[focused].querySelector("input[name=ids]");
        box.checked = !box.checked;
        return;
      }
      if ((event.key === "Enter" || event.key === "o") && focused >= 0) {
        rows[focused].querySelector(".row-link").click();
        return;
      }
    }
    var link = document.querySelector("[data-key='" + event.key + "']");
    if (link) { link.click(); }
  });
}());
