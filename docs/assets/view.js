// The like-for-like control of a results page: show only the reported rows whose selection rule,
// mean convention, source and setting match, and hide rows that copy an earlier source unless asked.
(function () {
  function rowFacts(row) {
    var badges = Array.prototype.map.call(row.querySelectorAll(".atlas-badge"), function (b) { return b.className; });
    function has(name) { return badges.some(function (c) { return (" " + c + " ").indexOf(" " + name + " ") >= 0; }); }
    var source = row.querySelector(".atlas-source"), setting = row.querySelector(".atlas-badge.setting");
    return { has: has, source: source ? source.textContent.trim() : "", copy: has("copy"),
             setting: setting ? setting.textContent.trim() : "reference" };
  }

  function apply(form, table, count) {
    var selection = form.elements.selection.value, convention = form.elements.convention.value;
    var source = form.elements.source.value, copies = form.elements.copies.checked;
    // rows carry a setting badge only off the benchmark's reference backbone and pre-training
    var setting = form.elements.setting ? form.elements.setting.value : "";
    var shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var facts = rowFacts(row);
      var ok = (!selection || facts.has(selection)) && (!convention || facts.has(convention))
        && (!source || facts.source === source) && (copies || !facts.copy)
        && (!setting || facts.setting === setting);
      row.classList.toggle("atlas-hidden", !ok);
      if (ok) shown += 1;
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }

  function setUp() {
    var form = document.getElementById("atlas-view");
    if (!form || form.dataset.ready) return;
    var table = form.nextElementSibling;
    while (table && table.tagName !== "TABLE") {
      table = table.querySelector ? (table.querySelector("table") || table.nextElementSibling) : null;
    }
    if (!table) return;
    form.dataset.ready = "yes";
    var count = document.getElementById("atlas-view-count");
    form.addEventListener("change", function () { apply(form, table, count); });
    apply(form, table, count);
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(setUp);
  } else {
    document.addEventListener("DOMContentLoaded", setUp);
  }
})();
