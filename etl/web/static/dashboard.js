// The dashboard's live parts: progress pushed by server-sent events, no reloads, no build step.
(function () {
  "use strict";
  const page = window.etlPage || {};
  const fmt = new Intl.NumberFormat("en-US");

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 10) return seconds.toFixed(1) + "s";
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + "s";
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + "m" + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }

  function text(id, value) {
    const el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function showRun(run) {
    const percent = (run.fraction * 100).toFixed(1);
    const fill = document.getElementById("fill");
    if (fill) fill.style.width = percent + "%";
    text("percent", percent + "%");
    text("rows", fmt.format(run.rows_read));
    if (run.rows_total) text("rows-total", fmt.format(run.rows_total));
    text("rate", fmt.format(Math.round(run.rows_per_second)));
    text("eta", duration(run.eta_seconds));
    text("chunks", run.chunks_done + "/" + run.chunks_total);
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
      row.querySelector('[data-field="fraction"]').value = run.fraction;
      row.querySelector('[data-field="rows_written"]').textContent = fmt.format(run.rows_written);
      row.querySelector('[data-field="chunks"]').textContent = run.chunks_done + "/" + run.chunks_total;
    });
  }
})();
