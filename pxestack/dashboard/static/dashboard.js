// pxestack dashboard: live updates over Server-Sent Events, filter and sort.
// No build step and no library: the page opens one EventSource; when a boot step arrives that
// concerns what the page shows, it fetches the page's live part again and swaps it in.
"use strict";

// A marker that survives live updates but not a page reload (the browser test checks it).
window.pxestackPageId = window.pxestackPageId || String(Math.random()).slice(2);
window.pxestackUpdates = 0;

(function () {
  const body = document.body;
  const live = document.getElementById("live");
  const liveUrl = body.dataset.live;
  const serial = body.dataset.serial || null;
  const macs = new Set((body.dataset.macs || "").split(" ").filter(Boolean));
  const state = document.getElementById("live-state");
  let sortKey = null;
  let sortDown = false;

  function text(row, key) {
    const cell = row.querySelector('[data-key="' + key + '"]');
    return cell ? cell.textContent.trim().toLowerCase() : "";
  }

  // Filter and sort the machines table (re-applied after every live update).
  function applyView() {
    const table = document.getElementById("machines");
    if (!table) return;
    const filter = document.getElementById("filter");
    const wanted = filter ? filter.value.trim().toLowerCase() : "";
    const stateFilter = document.getElementById("state-filter");
    const wantedState = stateFilter ? stateFilter.value : "";
    const tbody = table.tBodies[0];
    const rows = Array.from(tbody.querySelectorAll("tr[data-serial]"));
    for (const row of rows) {
      const matches = (!wanted || row.textContent.toLowerCase().includes(wanted)) &&
        (!wantedState || row.dataset.state === wantedState);
      row.hidden = !matches;
    }
    if (sortKey) {
      rows.sort(function (a, b) {
        const x = text(a, sortKey), y = text(b, sortKey);
        return (x < y ? -1 : x > y ? 1 : 0) * (sortDown ? -1 : 1);
      });
      for (const row of rows) tbody.appendChild(row);
    }
    for (const th of table.querySelectorAll("th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === sortKey);
      th.classList.toggle("down", th.dataset.sort === sortKey && sortDown);
    }
  }

  document.addEventListener("click", function (event) {
    const th = event.target.closest ? event.target.closest("th[data-sort]") : null;
    if (!th) return;
    sortDown = sortKey === th.dataset.sort ? !sortDown : false;
    sortKey = th.dataset.sort;
    applyView();
  });
  for (const id of ["filter", "state-filter"]) {
    const input = document.getElementById(id);
    if (input) input.addEventListener("input", applyView);
  }
  applyView();

  if (!live || !liveUrl || !window.EventSource) return;

  // Fetch the live part at most every 300 ms, however many steps arrive.
  let busy = false, again = false, timer = null;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(liveUrl, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) {
        if (answer.status === 401) { window.location.assign("/dashboard/login"); }
        return answer.ok ? answer.text() : Promise.reject(answer.status);
      })
      .then(function (html) {
        live.innerHTML = html;
        window.pxestackUpdates += 1;
        body.dataset.updates = String(window.pxestackUpdates);
        applyView();
      })
      .catch(function () { /* the next step tries again */ })
      .finally(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
  }
  function schedule() {
    if (timer === null) timer = setTimeout(function () { timer = null; refresh(); }, 300);
  }
  function concernsPage(step) {
    if (!serial) return true;
    return step.serial === serial || step.machine === serial || macs.has(step.mac);
  }

  const source = new EventSource("/dashboard/events?since=" + encodeURIComponent(body.dataset.since || "0"));
  source.addEventListener("open", function () {
    if (state) { state.textContent = "live"; state.classList.add("on"); }
  });
  source.addEventListener("error", function () {
    if (state) { state.textContent = "reconnecting"; state.classList.remove("on"); }
  });
  source.addEventListener("boot", function (message) {
    let step;
    try { step = JSON.parse(message.data); } catch (e) { return; }
    window.pxestackLastStep = step.seq;
    if (step.mac && serial && step.serial === serial) macs.add(step.mac);
    if (concernsPage(step)) schedule();
  });
  // Image-fetch progress: only the images page shows it.
  source.addEventListener("image", function () {
    if (body.dataset.view === "images") schedule();
  });
})();
