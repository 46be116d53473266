// Filter the error browser by text (input, gold or any answer); no library needed.
(function () {
  var box = document.getElementById("error-filter");
  if (!box) { return; }
  box.addEventListener("input", function () {
    var q = box.value.toLowerCase();
    var rows = document.querySelectorAll("#errors tbody tr");
    var shown = 0;
    rows.forEach(function (tr) {
      var hit = tr.textContent.toLowerCase().indexOf(q) !== -1;
      tr.hidden = !hit;
      if (hit) { shown += 1; }
    });
    document.getElementById("error-count").textContent = shown;
  });
})();
