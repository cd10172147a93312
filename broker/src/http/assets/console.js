// Ferry console: live refresh of each page's <main>, local times, and
// the abort confirmation. No dependencies; served by the broker itself.
"use strict";

function formatTimes(root) {
  for (const el of root.querySelectorAll("time[data-ms]")) {
    const ms = Number(el.dataset.ms);
    if (ms > 0) {
      const d = new Date(ms);
      el.textContent = d.toLocaleString();
      el.dateTime = d.toISOString();
    }
  }
  for (const el of root.querySelectorAll("[data-duration-ms]")) {
    let s = Math.floor(Number(el.dataset.durationMs) / 1000);
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= size) { parts.push(Math.floor(s / size) + unit); s %= size; }
    }
    parts.push(s + "s");
    el.textContent = parts.slice(0, 2).join(" ");
  }
}

// Replaces <main> with a fresh copy of the page every few seconds, unless
// the reader is typing in a form on it.
async function refresh(main) {
  const active = document.activeElement;
  if (active && main.contains(active) && active.matches("input, select, textarea")) return;
  try {
    const resp = await fetch(location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" });
    if (!resp.ok && resp.status !== 404) return;
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    const fresh = doc.querySelector("main");
    if (fresh) {
      main.innerHTML = fresh.innerHTML;
      formatTimes(main);
      document.body.dataset.refreshed = String(Date.now());
    }
  } catch (e) {
    document.body.dataset.refreshError = String(e);
  }
}

document.addEventListener("click", async (ev) => {
  const button = ev.target.closest("button[data-abort]");
  if (!button) return;
  const id = button.dataset.abort;
  if (!window.confirm("Abort the open transaction of " + id + "? Its records become invisible to read_committed consumers.")) return;
  button.disabled = true;
  const resp = await fetch("/api/v1/transactions/" + encodeURIComponent(id) + "/abort",
    { method: "POST", credentials: "same-origin" });
  if (!resp.ok) {
    let message = resp.statusText;
    try { message = (await resp.json()).message; } catch (e) { /* not JSON */ }
    window.alert("The abort failed: " + message);
    button.disabled = false;
    return;
  }
  const main = document.querySelector("main");
  if (main) await refresh(main);
});

document.addEventListener("DOMContentLoaded", () => {
  formatTimes(document);
  const main = document.querySelector("main[data-refresh]");
  if (main) setInterval(() => refresh(main), Number(main.dataset.refresh) || 2000);
});
