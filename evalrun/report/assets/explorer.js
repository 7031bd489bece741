// evalrun report: the item explorer. Draws only the rows in view (20,000 items as DOM rows took
// seconds to lay out); every text is data, put on screen with textContent, never innerHTML.
(function () {
  "use strict";
  var block = document.getElementById("xp-data");
  if (!block) return;
  var data = JSON.parse(block.textContent);
  var ROW = 30, EXTRA = 12, SHOWN_CELLS = 4;
  var list = document.getElementById("xp-list"), space = list.firstElementChild;
  var filter = document.getElementById("xp-filter"), search = document.getElementById("xp-search");
  var count = document.getElementById("xp-count"), detail = document.getElementById("xp-detail");
  var chooser = document.getElementById("xp-cells");
  var flips = data.flips;  // row id → [[compared cell, direction, classes, base answer]]

  // per item, once: what the filters ask (an answer is [pass, text, cost, latency, error, judges])
  var items = data.items.map(function (it) {
    var failing = false, flaky = false, errors = false, hay = [it[0], it[1]];
    it[2].forEach(function (pc) {
      var yes = 0, no = 0;
      pc[1].forEach(function (a) {
        if (a[0] === 1) yes++;
        if (a[0] === 0 || a[4]) no++;
        if (a[4]) errors = true;
        hay.push(a[1]);
      });
      if (no) failing = true;
      if (yes && no) flaky = true;
    });
    return { row: it[0], question: it[1], cells: it[2], failing: failing, flaky: flaky, errors: errors,
             flip: (flips[it[0]] || []).some(function (f) { return f[1] === "pass→fail"; }),
             flips: flips[it[0]] || [], hay: hay.join("\n").toLowerCase() };
  });
  var chosen = data.cells.map(function (_, i) { return i < SHOWN_CELLS; });
  var view = items, selected = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function tally(item, cell) {
    for (var i = 0; i < item.cells.length; i++) {
      if (item.cells[i][0] !== cell) continue;
      var yes = 0, n = 0, err = 0;
      item.cells[i][1].forEach(function (a) { n++; if (a[0] === 1) yes++; if (a[4]) err++; });
      return { yes: yes, n: n, err: err };
    }
    return null;
  }
  function badge(t) {
    if (!t) return el("span", "badge", "–");
    var tone = t.err ? "warn" : t.yes === t.n ? "good" : t.yes === 0 ? "bad" : "warn";
    var b = el("span", "badge " + tone, t.err && !t.yes ? "error" : t.yes + "/" + t.n);
    b.setAttribute("data-tip", t.yes + " of " + t.n + " answers passed" + (t.err ? ", " + t.err + " errors" : ""));
    return b;
  }

  // ---- the cells side by side: a checkbox per cell
  data.cells.forEach(function (c, i) {
    var label = el("label", "xp-cell"), box = el("input");
    box.type = "checkbox";
    box.checked = chosen[i];
    box.addEventListener("change", function () { chosen[i] = box.checked; draw(true); showDetail(); });
    var sw = el("span", "swatch");
    sw.style.background = c[2];
    label.appendChild(box); label.appendChild(sw); label.appendChild(document.createTextNode(c[1]));
    chooser.appendChild(label);
  });

  // ---- the list: a spacer as tall as every row, and the rows in view drawn over it
  function apply() {
    var f = filter.value, q = search.value.trim().toLowerCase();
    view = items.filter(function (it) {
      if (f !== "all" && !it[f === "flips" ? "flip" : f]) return false;
      return !q || it.hay.indexOf(q) !== -1;
    });
    count.textContent = view.length.toLocaleString() + " of " + items.length.toLocaleString() + " rows";
    space.style.height = view.length * ROW + "px";
    list.scrollTop = 0;
    draw(true);
  }
  var drawn = [-1, -1];
  function draw(force) {
    var first = Math.max(0, Math.floor(list.scrollTop / ROW) - EXTRA);
    var last = Math.min(view.length, Math.ceil((list.scrollTop + list.clientHeight) / ROW) + EXTRA);
    if (!force && first === drawn[0] && last === drawn[1]) return;
    drawn = [first, last];
    Array.prototype.slice.call(list.querySelectorAll(".xp-row")).forEach(function (r) { r.remove(); });
    for (var i = first; i < last; i++) list.appendChild(rowOf(view[i], i));
  }
  function rowOf(item, i) {
    var r = el("div", "xp-row" + (item === selected ? " on" : ""));
    r.style.top = i * ROW + "px";
    r.setAttribute("data-row", item.row);
    r.appendChild(el("span", "xp-id mono", item.row));
    r.appendChild(el("span", "xp-q", item.question));
    var marks = el("span", "xp-marks");
    data.cells.forEach(function (_, c) { if (chosen[c]) marks.appendChild(badge(tally(item, c))); });
    if (item.flips.length) {
      marks.appendChild(el("span", "badge " + (item.flip ? "bad" : "good"), item.flip ? "pass→fail" : "fail→pass"));
    }
    r.appendChild(marks);
    r.addEventListener("click", function () { selected = item; draw(true); showDetail(); });
    return r;
  }

  // ---- the detail: the chosen cells' answers side by side, with the judges' reasoning
  function showDetail() {
    if (!selected) return;
    detail.textContent = "";
    var head = el("div", "xp-head");
    head.appendChild(el("b", "mono", selected.row));
    head.appendChild(el("span", "xp-question", selected.question));
    detail.appendChild(head);
    selected.flips.forEach(function (f) {
      var p = el("p", "xp-flip");
      p.appendChild(el("span", "badge " + (f[1] === "pass→fail" ? "bad" : "good"), f[1]));
      p.appendChild(el("span", "", " " + f[0] + " (" + f[2] + "); the base run answered: "));
      p.appendChild(el("code", "", f[3]));
      detail.appendChild(p);
    });
    var grid = el("div", "xp-grid");
    data.cells.forEach(function (c, ci) {
      if (!chosen[ci]) return;
      var col = el("div", "xp-col");
      col.appendChild(el("h4", "", c[1]));
      var pc = selected.cells.filter(function (x) { return x[0] === ci; })[0];
      if (!pc) col.appendChild(el("p", "sub", "no request for this row"));
      (pc ? pc[1] : []).forEach(function (a, k) { col.appendChild(answerOf(a, k)); });
      grid.appendChild(col);
    });
    detail.appendChild(grid);
  }
  function answerOf(a, k) {
    var box = el("div", "xp-answer");
    var line = el("div", "xp-line");
    var tone = a[4] ? "warn" : a[0] === 1 ? "good" : a[0] === 0 ? "bad" : "";
    line.appendChild(el("span", "badge " + tone, a[4] ? "error" : a[0] === 1 ? "pass" : a[0] === 0 ? "fail" : "–"));
    var facts = ["answer " + (k + 1)];
    if (a[2] !== null) facts.push("cost " + a[2]);
    if (a[3] !== null) facts.push(a[3].toFixed(3) + " s");
    line.appendChild(el("small", "", facts.join(" · ")));
    box.appendChild(line);
    box.appendChild(el("div", "answer", a[4] || a[1]));
    a[5].forEach(function (j) {
      var d = el("details", "xp-judge");
      d.appendChild(el("summary", "", "judge " + j[0] + (j[1] ? ": " + j[1] : "")));
      d.appendChild(el("div", "answer", j[2]));
      box.appendChild(d);
    });
    return box;
  }

  list.addEventListener("scroll", function () { draw(false); });
  filter.addEventListener("change", apply);
  var timer = null;
  search.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 120); });
  apply();
})();
