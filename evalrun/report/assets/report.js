// evalrun report: table sorting and chart tooltips. No libraries: the page must open offline.
(function () {
  "use strict";

  // ---- sortable tables: click (or Enter on) a header; cells sort by data-sort when present.
  function key(td) {
    var v = td.getAttribute("data-sort");
    return v === null ? td.textContent.trim() : v;
  }
  function compare(a, b, asc) {
    // blanks (no value) stay at the bottom in both directions
    if (a === "" || b === "") return (a === "") - (b === "");
    var x = Number(a), y = Number(b);
    var r = !isNaN(x) && !isNaN(y) ? x - y : a.localeCompare(b, undefined, { numeric: true });
    return asc ? r : -r;
  }
  function sortBy(table, th, index) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) { return compare(key(r1.cells[index]), key(r2.cells[index]), asc); });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.title = "sort";
      th.addEventListener("click", function () { sortBy(table, th, i); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, i); }
      });
    });
  });

  // ---- the score chart's scorer: one chart per scorer is in the page; show the chosen one.
  var pick = document.getElementById("scorer-pick");
  if (pick) {
    pick.addEventListener("change", function () {
      Array.prototype.forEach.call(document.querySelectorAll(".by-scorer"), function (view) {
        view.hidden = view.getAttribute("data-scorer") !== pick.value;
      });
    });
  }

  // ---- tooltips: any element with data-tip. textContent, never innerHTML: the text is data.
  var tip = document.createElement("div");
  tip.className = "tip";
  tip.setAttribute("role", "tooltip");
  document.body.appendChild(tip);
  var current = null;
  document.addEventListener("mouseover", function (e) {
    var t = e.target.closest ? e.target.closest("[data-tip]") : null;
    if (t === current) return;
    current = t;
    if (!t) { tip.style.opacity = "0"; return; }
    tip.textContent = t.getAttribute("data-tip");
    tip.style.opacity = "1";
  });
  document.addEventListener("mousemove", function (e) {
    if (!current) return;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var x = e.clientX + 14, y = e.clientY + 14;
    if (x + w > window.innerWidth - 8) x = e.clientX - w - 14;
    if (y + h > window.innerHeight - 8) y = e.clientY - h - 14;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  });
  document.addEventListener("mouseleave", function () { current = null; tip.style.opacity = "0"; });
})();
