// docsach desk: keep the scanner field focused, and answer each scan with a sound and a colour.
// Progressive enhancement only: every page works without this script.
(function () {
  "use strict";
  var code = document.getElementById("code");
  if (code) {
    code.focus();
    // A barcode scanner types fast and ends with Enter; the form submits by itself. Clicking
    // elsewhere (e.g. a Renew button) must not leave the next scan typed into nowhere.
    document.addEventListener("keydown", function (event) {
      var target = event.target;
      if (target === code || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
      if (event.key.length === 1 && !event.ctrlKey && !event.metaKey && !event.altKey) code.focus();
    });
  }
  var result = document.getElementById("result");
  if (result) {
    var outcome = result.getAttribute("data-outcome");
    document.body.classList.add(outcome === "refused" ? "flash-refused" : "flash-ok");
    beep(outcome);
  }
  function beep(outcome) {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    try {
      var ctx = new Ctx();
      var tones = outcome === "refused" ? [[220, 0, 0.35]] : outcome === "waiting" ? [[660, 0, 0.12]]
        : [[880, 0, 0.09], [1320, 0.11, 0.12]];
      tones.forEach(function (tone) {
        var osc = ctx.createOscillator(), gain = ctx.createGain();
        osc.type = outcome === "refused" ? "square" : "sine";
        osc.frequency.value = tone[0];
        gain.gain.value = 0.08;
        osc.connect(gain); gain.connect(ctx.destination);
        osc.start(ctx.currentTime + tone[1]); osc.stop(ctx.currentTime + tone[1] + tone[2]);
      });
    } catch (e) { /* no sound card: the colour still tells */ }
  }
  // A catalog import: follow its progress until it is done.
  var job = document.getElementById("import");
  if (job && job.getAttribute("data-state") !== "done" && job.getAttribute("data-state") !== "failed") {
    var poll = function () {
      fetch(job.getAttribute("data-progress-url"), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (p) {
          document.getElementById("import-bar").value = p.percent;
          document.getElementById("import-percent").textContent = p.percent + " %";
          var text = document.getElementById("import-text");
          text.textContent = p.text;
          if (p.state === "done" || p.state === "failed") {
            text.className = "message " + (p.state === "done" ? "ok" : "refused");
            if (p.rejected) document.getElementById("import-rejected").hidden = false;
          } else {
            setTimeout(poll, 400);
          }
        })
        .catch(function () { setTimeout(poll, 2000); });
    };
    setTimeout(poll, 200);
  }
  // "Select all" on the overdue list.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=loan]:not(:disabled)").forEach(function (box) { box.checked = all.checked; });
    });
  }
})();
