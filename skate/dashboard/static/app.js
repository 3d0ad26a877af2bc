// The skate dashboard page: fetches /api/* (the credential travels as an HttpOnly
// cookie) and redraws the open view every two seconds.  No framework, no build step.
"use strict";

const REFRESH_MS = 2000;
let view = "overview";

function esc(v) {
  return String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}
function short(id) { return id ? esc(String(id).slice(0, 12)) : ""; }
function badge(s) { return `<span class="badge ${esc(s)}">${esc(s)}</span>`; }
function bytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function dur(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? `${Math.round(ms)} ms` : ms < 120000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60000).toFixed(1)} min`;
}
function bar(frac, cls, text) {
  const pct = Math.max(0, Math.min(100, (frac || 0) * 100));
  return `<div class="bar ${cls}"><span style="width:${pct}%"></span></div><div class="muted">${esc(text)}</div>`;
}
function table(cols, rows, empty) {
  const head = cols.map(c => `<th>${esc(c)}</th>`).join("");
  const body = rows.length ? rows.join("") : `<tr class="empty"><td colspan="${cols.length}">${esc(empty)}</td></tr>`;
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}
async function api(name) {
  const r = await fetch(`/api/${name}`, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`${name}: HTTP ${r.status}`);
  return r.json();
}
function res(obj) {
  return Object.entries(obj || {}).map(([k, v]) => `${esc(k)}: ${+v.toFixed ? +v.toFixed(2) : esc(v)}`).join(", ");
}

const views = {
  async overview(el) {
    const [s, tasks] = await Promise.all([api("summary"), api("tasks?state=FAILED")]);
    const card = (label, big, sub) => `<div class="card"><div class="label">${esc(label)}</div><div class="big">${esc(big)}</div><div class="muted">${sub || ""}</div></div>`;
    const ts = s.tasks || {}; const as = s.actors || {};
    el.innerHTML = `<div class="cards">
      ${card("Nodes alive", `${s.nodes_alive} / ${s.nodes}`, "")}
      ${card("Tasks running", ts.RUNNING || 0, `${ts.FINISHED || 0} finished, ${ts.FAILED || 0} failed`)}
      ${card("Actors alive", as.ALIVE || 0, Object.entries(as).map(([k, v]) => `${v} ${esc(k.toLowerCase())}`).join(", "))}
      ${card("Jobs", s.jobs, "")}
      </div><h2>Recent failed tasks</h2>` + taskTable(tasks.slice(-10).reverse(), "No task failed.");
  },
  async nodes(el) {
    const nodes = await api("nodes");
    el.innerHTML = table(["Node", "Address", "State", "CPU (host)", "Memory (host)", "Object store", "Workers", "Resources used / total"],
      nodes.map(n => {
        const st = n.stats || {};
        const amount = (k, v) => /memory$/.test(k) ? bytes(v) : +v.toFixed(2);
        const used = Object.entries(n.resources_total).filter(([k]) => !k.startsWith("node:"))
          .map(([k, t]) => `${esc(k)} ${amount(k, t - (n.resources_available[k] || 0))} / ${amount(k, t)}`).join("<br>");
        return `<tr><td class="mono">${short(n.node_id)}${n.is_head ? " (head)" : ""}</td><td>${esc(n.ip)}</td><td>${badge(n.state)}${n.death_reason ? `<div class="muted">${esc(n.death_reason)}</div>` : ""}</td>
          <td>${st.cpu_percent !== undefined && st.cpu_percent !== null ? bar(st.cpu_percent / 100, "", `${st.cpu_percent.toFixed(0)}% of ${st.cpu_count} cores`) : ""}</td>
          <td>${st.mem_total ? bar(st.mem_used / st.mem_total, "mem", `${bytes(st.mem_used)} / ${bytes(st.mem_total)}`) : ""}</td>
          <td>${st.store_capacity ? bar(st.store_used / st.store_capacity, "store", `${bytes(st.store_used)} / ${bytes(st.store_capacity)}, ${st.store_objects} objects`) : ""}</td>
          <td>${st.workers ?? ""}${st.workers !== undefined ? ` (${st.idle_workers} idle)` : ""}</td><td>${used}</td></tr>`;
      }), "No nodes.");
  },
  async actors(el) {
    const actors = await api("actors");
    el.innerHTML = table(["Actor", "Class", "Name", "State", "Restarts", "Node", "PID", "Logs", "Death cause"],
      actors.map(a => `<tr><td class="mono">${short(a.actor_id)}</td><td>${esc(a.class_name)}</td><td>${esc(a.name)}</td>
        <td>${badge(a.state)}</td><td>${a.num_restarts || 0}</td><td class="mono">${short(a.node_id)}</td><td>${esc(a.pid)}</td>
        <td>${a.pid ? `<a href="/api/logs/${encodeURIComponent(a.pid)}" target="_blank">logs</a>` : ""}</td>
        <td>${a.death_cause ? `<pre class="tb">${esc(a.death_cause)}</pre>` : ""}</td></tr>`), "No actors.");
  },
  async tasks(el) {
    const tasks = await api("tasks");
    el.innerHTML = taskTable(tasks.slice().reverse(), "No tasks recorded yet.");
  },
  async jobs(el) {
    const jobs = await api("jobs");
    el.innerHTML = table(["Job", "Type", "Status", "Driver PID", "Namespace", "Started", "Ended"],
      jobs.map(j => `<tr><td class="mono">${esc(j.job_id)}</td><td>${esc(j.type)}</td><td>${badge(j.status)}</td><td>${esc(j.driver_pid)}</td>
        <td class="mono">${esc(j.namespace)}</td><td>${j.start_time ? new Date(j.start_time).toLocaleString() : ""}</td>
        <td>${j.end_time ? new Date(j.end_time).toLocaleString() : ""}</td></tr>`), "No jobs.");
  },
  async placement_groups(el) {
    const pgs = await api("placement_groups");
    el.innerHTML = table(["Placement group", "Name", "State", "Strategy", "Bundles"],
      pgs.map(p => `<tr><td class="mono">${short(p.placement_group_id)}</td><td>${esc(p.name)}</td><td>${badge(p.state)}</td><td>${esc(p.strategy)}</td><td>${esc(JSON.stringify(p.bundles))}</td></tr>`),
      "No placement groups.");
  },
  async timeline(el) {
    const tl = await api("timeline");
    const rows = {}; let t0 = Infinity; const t1 = tl.now_ms;
    for (const t of tl.tasks) { (rows[t.row] = rows[t.row] || []).push(t); t0 = Math.min(t0, t.start_ms); }
    t0 = Math.max(t0, t1 - 120000);
    const span = Math.max(t1 - t0, 1000); const left = 180;
    const names = Object.keys(rows).sort();
    el.innerHTML = `<p class="legend muted">Last ${dur(span)}, one row per worker; refreshes every ${REFRESH_MS / 1000} s.
      <span>${badge("FINISHED")}</span><span>${badge("RUNNING")}</span><span>${badge("FAILED")}</span></p>
      <div id="tl">${names.length ? "" : '<div class="muted" style="padding:14px;text-align:center">No tasks yet.</div>'}</div>`;
    const box = el.querySelector("#tl"); const width = box.clientWidth - left - 10;
    box.innerHTML += names.map(r => `<div class="row"><div class="lbl">${esc(r)}</div>` + rows[r].filter(t => t.end_ms >= t0).map(t => {
      const x = left + Math.max(t.start_ms - t0, 0) / span * width; const w = Math.max((t.end_ms - Math.max(t.start_ms, t0)) / span * width, 2);
      return `<div class="seg ${esc(t.state)}" style="left:${x}px;width:${w}px" title="${esc(t.name)} ${esc(t.state)} ${dur(t.end_ms - t.start_ms)}"></div>`;
    }).join("") + "</div>").join("");
  },
  async waiting(el) {
    const w = await api("waiting");
    const blocked = w.blocked.map(b => `<tr><td>${esc(b.who)} (pid ${esc(b.pid)})</td><td>${esc(b.call)}</td><td>${dur((b.seconds || 0) * 1000)}</td>
      <td>${esc(b.n)} object(s)${b.on.length ? ": " + b.on.map(t => `${esc(t.name || "task")} <span class="mono">${short(t.task_id)}</span> ${badge(t.state)}`).join(", ") : ""}</td></tr>`);
    const demands = w.demands.map(d => `<tr><td class="mono">${short(d.node_id)} (${esc(d.ip)})</td><td>${res(d.resources)}</td>
      <td>${d.infeasible ? badge("FAILED").replace("FAILED", "INFEASIBLE") + ' <span class="muted">no node has that much: waits for one that fits</span>' : badge("PENDING")}</td></tr>`);
    const calls = w.actor_calls.map(a => `<tr><td>${esc(a.class_name)} <span class="mono">${short(a.actor_id)}</span></td><td>${esc(a.caller)} (pid ${esc(a.caller_pid)})</td>
      <td>${esc(a.inflight)} sent, ${esc(a.queued)} not sent yet</td><td>${esc(a.state || "")}</td></tr>`);
    const running = w.running.map(t => `<tr><td>${esc(t.name)}</td><td class="mono">${short(t.task_id)}</td><td>${esc(t.worker_pid)}</td><td>${dur(t.duration_ms)}</td></tr>`);
    el.innerHTML = `<p class="muted">Pending: ${w.pending.length ? esc(w.pending.join(", ")) : "nothing"}.</p>
      <h2>Blocked get / wait calls</h2>${table(["Who", "Call", "Blocked for", "Waiting on"], blocked, "No call is blocked.")}
      <h2>Queued resource requests</h2>${table(["Node", "Resources", "State"], demands, "No request is waiting for resources.")}
      <h2>Actors with calls not answered yet</h2>${table(["Actor", "Caller", "Calls", "Actor state"], calls, "No actor has calls waiting.")}
      <h2>Longest-running tasks</h2>${table(["Task", "ID", "Worker PID", "Running for"], running, "No task is running.")}`;
  },
};

function taskTable(tasks, empty) {
  return table(["Task", "Name", "State", "Type", "Node", "Worker PID", "Duration", "Error"],
    tasks.map(t => {
      const row = `<tr class="task ${esc(t.state)}"><td class="mono">${short(t.task_id)}</td><td>${esc(t.name)}</td><td>${badge(t.state)}</td><td>${esc(t.type)}</td>
        <td class="mono">${short(t.node_id)}</td><td>${esc(t.worker_pid)}</td><td>${dur(t.duration_ms)}</td><td>${esc(t.error_type || "")}</td></tr>`;
      return t.error_message ? row + `<tr class="traceback"><td colspan="8"><pre class="tb">${esc(t.error_message)}</pre></td></tr>` : row;
    }), empty);
}

async function refresh() {
  try {
    const s = await api("summary");
    document.getElementById("session").textContent = `${s.session} · ${s.gcs_address}`;
    const hang = document.getElementById("hang");
    if (s.hang) {
      hang.hidden = false;
      hang.textContent = `Possible hang: nothing progressed for ${s.hang.seconds} s while work is pending (${s.hang.pending.join(", ")}). See the Waiting view.`;
    } else hang.hidden = true;
    const errs = document.getElementById("errors");
    errs.hidden = !s.errors.length; errs.textContent = s.errors.join("; ");
    await views[view](document.getElementById(`view-${view}`));
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("updated").textContent = `update failed: ${e.message}`;
  }
}

function show(name) {
  view = name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === name);
  for (const s of document.querySelectorAll("main section")) s.hidden = s.id !== `view-${name}`;
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  refresh();
}

document.getElementById("tabs").addEventListener("click", e => { if (e.target.dataset.view) show(e.target.dataset.view); });
show(views[location.hash.slice(1)] ? location.hash.slice(1) : "overview");
setInterval(refresh, REFRESH_MS);
