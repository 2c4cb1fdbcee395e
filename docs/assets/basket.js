// The BibTeX basket: methods added from their cards or ticked in the "All methods" table are kept
// in this browser (localStorage) and downloaded as one .bib file from the "All methods" page.
(function () {
  var KEY = "atlas-bibtex-basket";
  function load() { try { return JSON.parse(localStorage.getItem(KEY)) || []; } catch (e) { return []; } }
  function save(ids) { try { localStorage.setItem(KEY, JSON.stringify(ids)); } catch (e) { /* private mode */ } }

  function setUpCard() {
    document.querySelectorAll("button.atlas-basket-add").forEach(function (button) {
      if (button.dataset.ready) return;
      button.dataset.ready = "yes";
      var id = button.dataset.method;
      function show() { button.textContent = load().indexOf(id) >= 0 ? "In the BibTeX basket (remove)" : "Add to the BibTeX basket"; }
      button.addEventListener("click", function () {
        var ids = load(), at = ids.indexOf(id);
        if (at >= 0) ids.splice(at, 1); else ids.push(id);
        save(ids); show();
      });
      show();
    });
  }

  function setUpFinder() {
    var data = document.getElementById("atlas-bibtex");
    var download = document.getElementById("atlas-basket-download");
    if (!data || !download || download.dataset.ready) return;
    download.dataset.ready = "yes";
    var bibtex = JSON.parse(data.textContent), count = document.getElementById("atlas-basket-count");
    var boxes = Array.prototype.slice.call(document.querySelectorAll("input.atlas-basket"));
    function refresh() {
      var ids = load();
      boxes.forEach(function (box) { box.checked = ids.indexOf(box.value) >= 0; });
      count.textContent = ids.length;
      download.disabled = ids.length === 0;
    }
    boxes.forEach(function (box) {
      box.addEventListener("change", function () {
        var ids = load().filter(function (id) { return id !== box.value; });
        if (box.checked) ids.push(box.value);
        save(ids); refresh();
      });
    });
    download.addEventListener("click", function () {
      var seen = {}, entries = [];
      load().forEach(function (id) {
        (bibtex[id] || []).forEach(function (entry) { if (!seen[entry]) { seen[entry] = true; entries.push(entry.trim()); } });
      });
      var blob = new Blob([entries.join("\n\n") + "\n"], { type: "application/x-bibtex" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "peft-atlas.bib";
      document.body.appendChild(link); link.click(); link.remove();
    });
    refresh();
  }

  function setUp() { setUpCard(); setUpFinder(); }
  if (typeof document$ !== "undefined") document$.subscribe(setUp);
  else document.addEventListener("DOMContentLoaded", setUp);
})();
