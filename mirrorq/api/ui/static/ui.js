// The dashboard's one script: fetch the page's live part again every few seconds and swap
// it in (no reload); a lost session goes back to the login form; an API that does not
// answer is said so, the figures kept.
"use strict";
(function () {
  const live = document.getElementById("live");
  const stamp = document.getElementById("updated");
  const offline = document.getElementById("offline");
  if (!live || !live.dataset.live) return;
  const every = Number((stamp && stamp.dataset.pollMs) || 3000);
  let tag = null; // the ETag of the part shown: an unchanged part comes back 304, empty
  let busy = false;

  function time() {
    return new Date().toISOString().slice(11, 19) + " UTC";
  }

  async function poll() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const headers = { Accept: "text/html" };
      if (tag) headers["If-None-Match"] = tag;
      const answer = await fetch(live.dataset.live, {
        credentials: "same-origin",
        cache: "no-store",
        headers: headers,
      });
      if (answer.status === 401) {
        window.location.assign("/ui/login");
        return;
      }
      if (answer.status !== 304) {
        if (!answer.ok) throw new Error("HTTP " + answer.status);
        const text = await answer.text();
        tag = answer.headers.get("ETag");
        live.innerHTML = text;
      }
      if (offline) offline.hidden = true;
      if (stamp) stamp.textContent = "Updated " + time() + " (live, every " + every / 1000 + " s).";
    } catch (error) {
      if (offline) offline.hidden = false;
    } finally {
      busy = false;
    }
  }

  setInterval(poll, every);
  document.addEventListener("visibilitychange", poll);
})();
