// The method finder on the "All methods" page: checkbox and range filters over the table's rows,
// kept in the address (?category=partial&mergeable=yes&params_max=0.5) so a view can be shared.
(function () {
  var LISTS = ["category", "modality", "application"];  // a row matches any ticked value of each
  var FLAGS = ["mergeable", "implemented", "clip"];

  function state(form) {
    var s = {};
    LISTS.concat(FLAGS).forEach(function (name) {
      s[name] = Array.prototype.filter.call(form.elements[name] ? form.querySelectorAll("input[name=" + name + "]") : [],
        function (box) { return box.checked; }).map(function (box) { return box.value; });
    });
    ["params_max", "year_min", "year_max", "q"].forEach(function (name) { s[name] = form.elements[name].value.trim(); });
    return s;
  }

  function matches(row, s) {
    for (var i = 0; i < LISTS.length; i++) {
      var wanted = s[LISTS[i]];
      if (wanted.length) {
        var have = (row.dataset[LISTS[i]] || "").split(" ");
        if (!wanted.some(function (v) { return have.indexOf(v) >= 0; })) return false;
      }
    }
    for (var j = 0; j < FLAGS.length; j++) {
      if (s[FLAGS[j]].length && row.dataset[FLAGS[j]] !== "yes") return false;
    }
    if (s.params_max !== "") {
      var params = parseFloat(row.dataset.params);
      if (isNaN(params) || params > parseFloat(s.params_max)) return false;
    }
    var year = parseInt(row.dataset.year, 10);
    if (s.year_min !== "" && year < parseInt(s.year_min, 10)) return false;
    if (s.year_max !== "" && year > parseInt(s.year_max, 10)) return false;
    if (s.q !== "" && row.dataset.q.indexOf(s.q.toLowerCase()) < 0) return false;
    return true;
  }

  function apply(form, table, count) {
    var s = state(form), shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var ok = matches(row, s);
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    count.textContent = shown + " of " + rows.length;
    var params = new URLSearchParams();
    Object.keys(s).forEach(function (name) {
      [].concat(s[name]).forEach(function (value) { if (value !== "") params.append(name, value); });
    });
    var query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
  }

  function restore(form) {
    var params = new URLSearchParams(location.search);
    params.forEach(function (value, name) {
      var boxes = form.querySelectorAll("input[type=checkbox][name=" + name + "]");
      if (boxes.length) {
        Array.prototype.forEach.call(boxes, function (box) { if (box.value === value) box.checked = true; });
      } else if (form.elements[name]) {
        form.elements[name].value = value;
      }
    });
  }

  function setUp() {
    var form = document.getElementById("atlas-finder");
    var table = document.querySelector("table.atlas-finder-table");
    if (!form || !table || form.dataset.ready) return;
    form.dataset.ready = "yes";
    var count = document.getElementById("atlas-finder-count");
    restore(form);
    form.addEventListener("input", function () { apply(form, table, count); });
    form.addEventListener("change", function () { apply(form, table, count); });
    form.addEventListener("reset", function () { setTimeout(function () { apply(form, table, count); }, 0); });
    apply(form, table, count);
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(setUp);
  } else {
    document.addEventListener("DOMContentLoaded", setUp);
  }
})();
