// docsach chat bubble for the school's website: <script src="https://DOCSACH/static/embed.js" defer></script>
// Adds a round button; pressing it opens the docsach web chat in a frame (or a new tab on small screens).
(function () {
  "use strict";
  var me = document.currentScript || document.querySelector('script[src*="/static/embed.js"]');
  if (!me) return;
  var base = new URL(me.src).origin;
  var open = false, frame = null;
  var button = document.createElement("button");
  button.type = "button";
  button.setAttribute("aria-label", "docsach");
  button.textContent = "📚";
  button.style.cssText = "position:fixed;right:16px;bottom:16px;width:56px;height:56px;border-radius:50%;" +
    "border:0;background:#1d6b4f;color:#fff;font-size:26px;box-shadow:0 2px 8px #0004;cursor:pointer;z-index:2147483646";
  button.addEventListener("click", function () {
    if (window.innerWidth < 480) { window.open(base + "/chat", "_blank", "noopener"); return; }
    if (!frame) {
      frame = document.createElement("iframe");
      frame.src = base + "/chat";
      frame.title = "docsach";
      frame.style.cssText = "position:fixed;right:16px;bottom:84px;width:380px;height:600px;max-height:80vh;" +
        "border:0;border-radius:12px;box-shadow:0 4px 16px #0005;z-index:2147483646;background:#fff";
      document.body.appendChild(frame);
    }
    open = !open;
    frame.style.display = open ? "block" : "none";
  });
  document.body.appendChild(button);
})();
