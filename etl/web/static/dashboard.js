// The dashboard's live parts: progress pushed by server-sent events, no reloads, no build step.
(function () {
  "use strict";
  // What the page is, as its template wrote it (JSON data, not a script: the Content-Security-Policy
  // runs no inline script), and widths set here (it applies no inline style either).
  const data = document.getElementById("etl-page");
  const page = data ? JSON.parse(data.textContent) : {};
  for (const el of document.querySelectorAll("[data-width]")) el.style.width = el.dataset.width;

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  // The API computes every figure and formats it (`run.display`, as `etl status` does): the
  // page only shows it.
  function showRun(run) {
    const shown = run.display;
    const fill = document.getElementById("fill");
    if (fill) fill.style.width = shown.percent;
    text("percent", shown.percent);
    text("rows", shown.rows);
    text("rows-total", shown.rows_total);
    const of = document.getElementById("rows-of");
    if (of) of.hidden = !shown.rows_total;
    text("written", shown.written);
    text("rate", shown.rate);
    text("eta", shown.eta);
    text("chunks", shown.chunks);
    text("retries", shown.retries);
    const retries = document.getElementById("retries-part");
    if (retries) retries.hidden = !run.retries;
    const state = document.getElementById("state");
    if (state) {
      state.textContent = run.state;
      state.className = "state state-" + run.state;
    }
    const grid = document.getElementById("grid");
    if (grid && run.chunks) {
      if (grid.children.length !== run.chunks.length) {
        grid.innerHTML = "";
        for (const c of run.chunks) {
          const a = document.createElement("a");
          a.href = "#chunk-" + c.index;
          a.dataset.index = c.index;
          grid.appendChild(a);
        }
      }
      for (const c of run.chunks) {
        const cell = grid.children[c.index];
        cell.className = "cell chunk-" + c.state;
        cell.title = "chunk " + c.index + " · " + c.label + " · " + c.state + (c.attempts > 1 ? " · " + c.attempts + " attempts" : "");
      }
    }
  }

  let logFetched = 0;
  function refreshLog() {
    const now = Date.now();
    if (now - logFetched < 2000) return;
    logFetched = now;
    fetch("/api/runs/" + encodeURIComponent(page.id) + "/log").then((r) => (r.ok ? r.json() : null)).then((data) => {
      if (!data) return;
      const log = document.getElementById("log");
      log.textContent = data.lines.join("\n") + "\n";
      log.hidden = false;
      document.getElementById("no-log").hidden = true;
      log.scrollTop = log.scrollHeight;
    });
  }

  if (page.kind === "run" && !page.finished) {
    const events = new EventSource("/api/runs/" + encodeURIComponent(page.id) + "/events");
    events.addEventListener("progress", (e) => {
      showRun(JSON.parse(e.data));
      refreshLog();
    });
    events.addEventListener("end", () => {
      events.close();
      // The run is over: reload once for its final actions, errors and log.
      setTimeout(() => window.location.reload(), 300);
    });
    events.addEventListener("gone", () => events.close());
  }

  if (page.kind === "index") {
    const events = new EventSource("/api/events");
    events.addEventListener("summary", (e) => {
      const summary = JSON.parse(e.data);
      for (const [state, n] of Object.entries(summary.counts)) {
        const el = document.querySelector('[data-count="' + state + '"]');
        if (el) el.textContent = n;
      }
      text("workers-count", summary.workers);
      document.getElementById("stalled").hidden = !summary.stalled;
    });
    events.addEventListener("progress", (e) => {
      const run = JSON.parse(e.data);
      const row = document.querySelector('tr[data-run="' + run.id + '"]');
      if (!row) return;
      const state = row.querySelector('[data-field="state"]');
      state.textContent = run.state;
      state.className = "state state-" + run.state;
      const fraction = row.querySelector('[data-field="fraction"]');
      fraction.value = run.fraction;
      fraction.title = run.display.percent;
      row.querySelector('[data-field="rows"]').textContent = run.display.rows;
      row.querySelector('[data-field="rows_written"]').textContent = run.display.written;
      row.querySelector('[data-field="chunks"]').textContent = run.display.chunks;
    });
  }
})();
