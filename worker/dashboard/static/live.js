// The overview's live part: fetched again every data-every ms and swapped in (no build step, no framework).
// Forms with data-confirm ask first. Served from 'self' only (the pages' Content-Security-Policy).
"use strict";
document.addEventListener("submit", (e) => {
  const text = e.target.dataset && e.target.dataset.confirm;
  if (text && !window.confirm(text)) e.preventDefault();
});
window.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (!live) return;
  const every = Number(live.dataset.every) || 2000;
  const refresh = async () => {
    // Never swap under a visitor typing into a pause form.
    const typing = document.activeElement && document.activeElement.tagName === "INPUT";
    if (!(typing && live.contains(document.activeElement))) {
      try {
        const r = await fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" });
        if (r.ok) {
          live.innerHTML = await r.text();
          live.dataset.updated = String(Date.now());
        } else if (r.status === 401) {
          window.location.reload();
        }
      } catch (err) {
        // NATS or the network is away for a moment: keep what is shown, try again.
      }
    }
    window.setTimeout(refresh, every);
  };
  window.setTimeout(refresh, every);
});
