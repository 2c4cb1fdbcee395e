// The compare view: two to four methods side by side, the choice kept in the address (?m=a,b,c).
(function () {
  function text(value) { return value === null || value === undefined || value === "" ? "—" : String(value); }
  function cell(tag, content) { var el = document.createElement(tag); el.textContent = content; return el; }

  function reportedList(rows) {
    if (!rows.length) return "none in the atlas";
    return rows.map(function (r) {
      return r.benchmark + ": " + text(r.mean_of_tasks) + " (mean of tasks) / " + text(r.mean_of_group_means) +
        " (of group means), " + r.selection + "; " + r.fingerprint + "; " + r.label + " — " + r.source;
    }).join("\n");
  }
  function reproducedList(rows) {
    if (!rows.length) return "not run here";
    return rows.map(function (r) {
      return r.benchmark + ": " + r.mean_of_group_means + (r.std !== null ? " ± " + r.std : "") + " over " + r.seeds + " seed(s)";
    }).join("\n");
  }
  var FACETS = [
    ["Category", function (m) { return m.category; }],
    ["Equations", null],
    ["Acts on", function (m) { return m.insertion.join(", "); }],
    ["Applications", function (m) { return m.applications.join(", "); }],
    ["Trainable parameters (formula)", function (m) { return m.formula; }],
    ["Parameters on ViT-B/16 (M)", function (m) { return text(m.params_m) + (m.params_basis ? " (" + m.params_basis + ")" : ""); }],
    ["Mergeable", function (m) { return m.mergeable ? "yes" : "no"; }],
    ["Inference time", function (m) { return text(m.inference); }],
    ["Implemented here", function (m) { return m.implemented ? "yes" : "no"; }],
    ["Venue", function (m) { return m.venue; }],
    ["Reported (copies left out)", function (m) { return reportedList(m.reported); }],
    ["Reproduced here", function (m) { return reproducedList(m.reproduced); }],
  ];

  function render(data, ids, holder) {
    holder.innerHTML = "";
    if (ids.length === 0) { holder.appendChild(cell("p", "Choose methods above.")); return; }
    var table = document.createElement("table"), head = table.createTHead().insertRow(), body = table.createTBody();
    head.appendChild(cell("th", ""));
    ids.forEach(function (id) {
      var th = document.createElement("th"), link = document.createElement("a");
      link.href = "methods/" + id + ".html"; link.textContent = data[id].name; th.appendChild(link); head.appendChild(th);
    });
    FACETS.forEach(function (facet) {
      var row = body.insertRow();
      row.appendChild(cell("th", facet[0]));
      ids.forEach(function (id) {
        var td;
        if (facet[1] === null) {
          // MathML made when the site was built from the atlas's own data
          td = document.createElement("td");
          td.innerHTML = data[id].equations.length ? data[id].equations.join("") : "on the method's card";
        } else {
          td = cell("td", facet[1](data[id]));
          td.style.whiteSpace = "pre-line";
        }
        row.appendChild(td);
      });
    });
    holder.appendChild(table);
  }

  function setUp() {
    var form = document.getElementById("atlas-compare"), holder = document.getElementById("atlas-compare-table");
    var source = document.getElementById("atlas-compare-data");
    if (!form || !holder || !source || form.dataset.ready) return;
    form.dataset.ready = "yes";
    var data = JSON.parse(source.textContent), selects = form.querySelectorAll("select");
    var wanted = (new URLSearchParams(location.search).get("m") || "").split(",").filter(function (id) { return id in data; });
    wanted.slice(0, selects.length).forEach(function (id, i) { selects[i].value = id; });
    function update() {
      var ids = [];
      selects.forEach(function (s) { if (s.value && ids.indexOf(s.value) < 0) ids.push(s.value); });
      render(data, ids, holder);
      history.replaceState(null, "", location.pathname + (ids.length ? "?m=" + ids.join(",") : "") + location.hash);
    }
    form.addEventListener("change", update);
    update();
  }
  if (typeof document$ !== "undefined") document$.subscribe(setUp);
  else document.addEventListener("DOMContentLoaded", setUp);
})();
