// Warren console: refreshes the live part of the page (main#live) every few seconds without a
// full reload, by fetching the same page and swapping its live part in. It never runs
// anything from what it fetches (the new part is parsed as inert HTML and moved in), pauses
// while the tab is hidden or the operator is using a form in the live part (a checked box, a
// focused field), and stops if the session has ended. Nothing else on the pages needs it.
"use strict";
(function () {
  const body = document.body;
  const every = Number(body.dataset.refreshMs || 0);
  const live = document.getElementById("live");
  const stamp = document.getElementById("updated");
  if (!every || !live) {
    return;
  }
  let stopped = false;

  function busy() {
    const active = document.activeElement;
    if (active && live.contains(active) && active.matches("input, select, textarea")) {
      return true;
    }
    return live.querySelector("input[type=checkbox]:checked") !== null;
  }

  async function refresh() {
    if (stopped || document.hidden || busy()) {
      return;
    }
    let answer;
    try {
      answer = await fetch(window.location.href, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "X-Warren-Refresh": "1" },
      });
    } catch (e) {
      if (stamp) stamp.textContent = "Cannot reach the server; retrying";
      return;
    }
    if (answer.redirected || answer.status === 401) {
      stopped = true;
      if (stamp) stamp.textContent = "Session ended: reload to log in";
      return;
    }
    if (!answer.ok) {
      if (stamp) stamp.textContent = "The server answered " + answer.status + "; retrying";
      return;
    }
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.getElementById("live");
    if (!fresh || busy()) {
      return;
    }
    // Copied out first: adopting a node takes it out of `fresh.childNodes`, a live list.
    const nodes = Array.from(fresh.childNodes);
    live.replaceChildren(...nodes.map((n) => document.adoptNode(n)));
    if (stamp) stamp.textContent = "Updated " + new Date().toLocaleTimeString();
  }

  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
