// The Tessera admin console: a page per hash route, everything read from
// the node's HTTP API (with the bearer token the user gave, if any).
"use strict";

const view = document.getElementById("view");
const statusLine = document.getElementById("status");

function token() {
  return sessionStorage.getItem("tessera-token") || "";
}

document.getElementById("token").value = token();
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("tessera-token", document.getElementById("token").value.trim());
  route();
});

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.kind = body && body.error && body.error.kind;
  }
}

async function api(path) {
  const headers = { accept: "application/json" };
  if (token()) headers.authorization = `Bearer ${token()}`;
  const r = await fetch(path, { headers });
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    body = null;
  }
  if (!r.ok && r.status !== 202) throw new ApiError(r.status, body);
  return body;
}

function esc(v) {
  return String(v).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function json(v) {
  return `<pre>${esc(JSON.stringify(v, null, 2))}</pre>`;
}

function enc(s) {
  return encodeURIComponent(s);
}

function failure(e) {
  if (e.status === 401 || e.status === 403) {
    return `<p class="error">${esc(e.message)} — this page needs a token with the <code>admin</code> scope (field at the top right).</p>`;
  }
  return `<p class="error">${esc(e.message)}</p>`;
}

function setActive(name) {
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === name);
}

// --- cluster --------------------------------------------------------------

const PALETTE = ["#2b6cb0", "#2f855a", "#b7791f", "#9b2c2c", "#6b46c1", "#2c7a7b", "#c05621", "#4a5568"];

async function clusterPage() {
  setActive("cluster");
  const [c, health] = await Promise.all([api("/v1/cluster"), fetch("/readyz").then((r) => r.status)]);
  let html = `<h1>Cluster</h1><p>This node: <b id="node-id">${esc(c.node_id)}</b> · ready: ${
    health === 200 ? '<span class="ok">yes</span>' : "no"
  } · shards per type: ${esc(c.shards)}</p>`;
  if (!c.clustered) {
    html += `<p class="muted">Standalone: this node owns every shard of ${esc((c.entity_types || []).join(", "))}.</p>`;
    view.innerHTML = html;
    return;
  }
  const members = c.members || [];
  const colour = {};
  members.forEach((m, i) => (colour[m.node_id] = PALETTE[i % PALETTE.length]));
  html += `<h2>Members (${members.length})</h2><table id="members"><tr><th>node</th><th>HTTP</th><th class="num">leases</th><th>roles / types</th><th>heartbeat</th></tr>`;
  for (const m of members) {
    const held = (c.leases || []).filter((l) => l.owner === m.node_id).length;
    html += `<tr><td><span style="color:${colour[m.node_id]}">■</span> ${esc(m.node_id)}${
      c.leader === m.node_id ? " <i>(leader)</i>" : ""
    }</td><td>${esc(m.http || "")}</td><td class="num">${held}</td><td>${esc((m.entity_types || []).join(", "))}</td><td>${esc(
      new Date(m.heartbeat_ms).toISOString(),
    )}</td></tr>`;
  }
  html += "</table>";
  const types = [...new Set((c.leases || []).map((l) => l.entity_type))].sort();
  html += `<h2>Shard map</h2><p class="legend">${members
    .map((m) => `<span style="background:${colour[m.node_id]}">${esc(m.node_id)}</span>`)
    .join("")}<span style="background:#cbd5e0;color:#1d2329">unowned</span></p>`;
  for (const t of types) {
    html += `<h3>${esc(t)}</h3><div class="grid">`;
    for (let s = 0; s < c.shards; s++) {
      const l = (c.leases || []).find((x) => x.entity_type === t && x.shard === s);
      const bg = l ? colour[l.owner] || "#4a5568" : "#cbd5e0";
      html += `<div class="cell" style="background:${bg}" title="${esc(t)}/${s}: ${esc(l ? `${l.owner} epoch ${l.epoch}` : "unowned")}">${s}</div>`;
    }
    html += "</div>";
  }
  view.innerHTML = html;
}

// --- entities -------------------------------------------------------------

async function typesPage() {
  setActive("entities");
  const reg = await api("/v1/registry");
  let html = `<h1>Entity types</h1><table id="types"><tr><th>type</th><th>commands</th><th class="num">event version</th></tr>`;
  for (const e of reg.entities) {
    html += `<tr><td><a href="#/entities/${enc(e.type)}">${esc(e.type)}</a></td><td>${esc(e.commands.join(", "))}</td><td class="num">${esc(
      e.event_version,
    )}</td></tr>`;
  }
  html += `</table><h2>Functions</h2><p>${esc(reg.functions.map((f) => f.name).join(", ") || "none")}</p>`;
  view.innerHTML = html;
}

async function entitiesPage(type, params) {
  setActive("entities");
  const prefix = params.get("q") || "";
  const after = params.get("after") || "";
  let url = `/v1/entities/${enc(type)}?limit=100&prefix=${enc(prefix)}`;
  if (after) url += `&after=${enc(after)}`;
  const page = await api(url);
  let html = `<h1>${esc(type)}</h1><form class="row" id="search"><input id="q" placeholder="id starts with…" value="${esc(
    prefix,
  )}"><button type="submit">Search</button></form>`;
  html += `<table id="entities"><tr><th>id</th><th class="num">last seq</th><th class="num">deleted to</th></tr>`;
  for (const e of page.entities) {
    html += `<tr><td><a href="#/entity/${enc(type)}/${enc(e.id)}">${esc(e.id)}</a></td><td class="num">${e.last_seq}</td><td class="num">${
      e.deleted_to || ""
    }</td></tr>`;
  }
  html += "</table>";
  if (!page.entities.length) html += `<p class="muted">No entity${prefix ? ` whose id starts with “${esc(prefix)}”` : ""}.</p>`;
  if (page.next_after) {
    html += `<p><a id="next" href="#/entities/${enc(type)}?q=${enc(prefix)}&after=${enc(page.next_after)}">next page →</a></p>`;
  }
  view.innerHTML = html;
  document.getElementById("search").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/entities/${enc(type)}?q=${enc(document.getElementById("q").value)}`;
  });
}

/// The differences between two JSON values, as (path, kind, before, after).
function diff(a, b, path = "", out = []) {
  const isObj = (v) => v !== null && typeof v === "object";
  if (isObj(a) && isObj(b) && Array.isArray(a) === Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of [...keys].sort()) {
      const p = Array.isArray(a) ? `${path}[${k}]` : `${path}.${k}`;
      if (!(k in a)) out.push([p, "added", undefined, b[k]]);
      else if (!(k in b)) out.push([p, "removed", a[k], undefined]);
      else diff(a[k], b[k], p, out);
    }
  } else if (JSON.stringify(a) !== JSON.stringify(b)) {
    out.push([path || "(state)", "changed", a, b]);
  }
  return out;
}

async function entityPage(type, id, params) {
  setActive("entities");
  const base = `/v1/entities/${enc(type)}/${enc(id)}`;
  const [current, journal] = await Promise.all([api(base), api(`${base}/events?limit=500`)]);
  const last = current.seq;
  const at = Number(params.get("at") || last);
  const from = Number(params.get("from") || Math.max(0, last - 1));
  const to = Number(params.get("to") || last);
  const [atState, fromState, toState] = await Promise.all([
    at === last ? current : api(`${base}?at=${at}`),
    api(`${base}?at=${from}`),
    api(`${base}?at=${to}`),
  ]);
  let html = `<h1><a href="#/entities/${enc(type)}">${esc(type)}</a> / <span id="entity-id">${esc(id)}</span></h1>
    <p>last seq <b id="last-seq">${last}</b>${current.timers && current.timers.length ? ` · ${current.timers.length} pending timer(s)` : ""}</p>`;
  html += `<div class="columns"><div><h2>Journal (${journal.events.length} events${journal.next_from ? ", first 500" : ""})</h2><div class="timeline" id="timeline">`;
  for (const e of journal.events) {
    const internal = e.type.startsWith("tessera.");
    html += `<div class="event${internal ? " internal" : ""}" data-seq="${e.seq}"><div class="head"><span class="seq">#${e.seq}</span><span>${esc(
      e.type,
    )} v${e.version}</span><span class="muted">${esc(e.time)}</span><a href="#/entity/${enc(type)}/${enc(id)}?at=${e.seq}">state here</a></div><pre>${esc(
      JSON.stringify(e.event),
    )}</pre><div class="muted">invocation ${esc(e.invocation_id || "–")}</div></div>`;
  }
  html += `</div></div><div><h2>State at seq</h2><form class="row" id="at-form"><input id="at" type="number" min="0" max="${last}" value="${at}"><button type="submit">Show</button></form><div id="state">${json(
    atState.state,
  )}</div>`;
  const changes = diff(fromState.state, toState.state);
  html += `<h2>Diff between seqs</h2><form class="row" id="diff-form"><input id="from" type="number" min="0" max="${last}" value="${from}"> → <input id="to" type="number" min="0" max="${last}" value="${to}"><button type="submit">Compare</button></form><table class="diff" id="diff"><tr><th>path</th><th>change</th><th>at ${from}</th><th>at ${to}</th></tr>`;
  for (const [p, kind, a, b] of changes) {
    const show = (v) => (v === undefined ? "" : esc(JSON.stringify(v)));
    html += `<tr class="${kind}"><td><code>${esc(p)}</code></td><td class="${kind}">${kind}</td><td>${show(a)}</td><td>${show(b)}</td></tr>`;
  }
  if (!changes.length) html += `<tr><td colspan="4" class="muted">no difference</td></tr>`;
  html += "</table></div></div>";
  view.innerHTML = html;
  const go = (q) => (location.hash = `#/entity/${enc(type)}/${enc(id)}?${q}`);
  document.getElementById("at-form").addEventListener("submit", (e) => {
    e.preventDefault();
    go(`at=${document.getElementById("at").value}&from=${from}&to=${to}`);
  });
  document.getElementById("diff-form").addEventListener("submit", (e) => {
    e.preventDefault();
    go(`at=${at}&from=${document.getElementById("from").value}&to=${document.getElementById("to").value}`);
  });
}

// --- projections, invocations, autoscaler -----------------------------------

async function projectionsPage() {
  setActive("projections");
  const p = await api("/v1/projections");
  let html = `<h1>Projections</h1><table id="projections"><tr><th>name</th><th>entity types</th><th class="num">lag (events)</th><th class="num">units here</th><th class="num">errors</th></tr>`;
  for (const x of p.projections) {
    html += `<tr><td>${esc(x.name)}</td><td>${esc(x.entity_types.join(", "))}</td><td class="num">${x.lag}</td><td class="num">${x.running_here}</td><td class="num">${x.errors}</td></tr>`;
  }
  html += "</table>";
  for (const x of p.projections.filter((x) => x.units.some((u) => u.lag > 0 || u.error))) {
    html += `<h2>${esc(x.name)}: units behind or failing</h2><table><tr><th>unit</th><th class="num">checkpoint</th><th class="num">feed last</th><th class="num">lag</th><th>error</th></tr>`;
    for (const u of x.units.filter((u) => u.lag > 0 || u.error)) {
      html += `<tr><td>${esc(u.entity_type)}/${u.shard}</td><td class="num">${u.checkpoint}</td><td class="num">${u.feed_last}</td><td class="num">${u.lag}</td><td>${esc(
        u.error || "",
      )}</td></tr>`;
    }
    html += "</table>";
  }
  view.innerHTML = html;
}

async function invocationsPage(id) {
  setActive("invocations");
  let html = `<h1>Async invocations</h1><form class="row" id="inv-form"><input id="inv" size="44" placeholder="invocation id" value="${esc(
    id || "",
  )}"><button type="submit">Look up</button></form><div id="invocation">`;
  if (id) {
    try {
      const r = await api(`/v1/invocations/${enc(id)}`);
      html += `<p>status <b>${esc(r.status)}</b> · ${esc(r.target || "")}</p>${json(r)}`;
    } catch (e) {
      html += e.status === 404 ? `<p class="muted">No invocation ${esc(id)} (unknown or expired).</p>` : failure(e);
    }
  }
  view.innerHTML = html + "</div>";
  document.getElementById("inv-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/invocations/${enc(document.getElementById("inv").value.trim())}`;
  });
}

function plot(decisions) {
  const W = 860, H = 220, L = 40, B = 24;
  if (!decisions.length) return '<p class="muted">No decisions yet (the autoscaler runs on the cluster leader).</p>';
  const t0 = decisions[0].at_ms, t1 = Math.max(decisions[decisions.length - 1].at_ms, t0 + 1);
  const max = Math.max(1, ...decisions.map((d) => Math.max(d.to, d.live)));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 10);
  const y = (v) => H - B - (v / max) * (H - B - 10);
  let path = "", live = "";
  decisions.forEach((d, i) => {
    path += `${i ? "L" : "M"}${x(d.at_ms).toFixed(1)},${y(d.to).toFixed(1)} `;
    live += `${i ? "L" : "M"}${x(d.at_ms).toFixed(1)},${y(d.live).toFixed(1)} `;
  });
  return `<svg id="decisions-plot" width="${W}" height="${H}" role="img"><line x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}" stroke="#cbd5e0"/>
    <text x="4" y="${y(max) + 4}">${max}</text><text x="4" y="${H - B}">0</text>
    <path d="${live}" fill="none" stroke="#a0aec0" stroke-dasharray="4 3"/><path d="${path}" fill="none" stroke="#2b6cb0" stroke-width="2"/>
    <text x="${L}" y="${H - 6}">${esc(new Date(t0).toISOString())}</text><text x="${W - 200}" y="${H - 6}">${esc(new Date(t1).toISOString())}</text>
    <text x="${W - 210}" y="14">— target nodes   - - live nodes</text></svg>`;
}

async function autoscalerPage() {
  setActive("autoscaler");
  const a = await api("/v1/autoscaler");
  const decisions = a.decisions || [];
  let html = `<h1>Autoscaler</h1><p>node ${esc(a.node_id)} · ${a.leader ? "runs the autoscaler (leader)" : "not the leader"}${
    a.members != null ? ` · ${a.members} members` : ""
  }</p>${plot(decisions)}`;
  html += `<h2>Decisions (${decisions.length})</h2><table id="decisions"><tr><th>time</th><th>group</th><th class="num">from</th><th class="num">to</th><th class="num">live</th><th>reason</th></tr>`;
  for (const d of decisions.slice().reverse()) {
    html += `<tr><td>${esc(new Date(d.at_ms).toISOString())}</td><td>${esc(d.group)}</td><td class="num">${d.from}</td><td class="num">${d.to}</td><td class="num">${d.live}</td><td>${esc(
      d.reason,
    )}</td></tr>`;
  }
  view.innerHTML = html + "</table>";
}

// --- routing ----------------------------------------------------------------

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  statusLine.textContent = "";
  try {
    if (parts.length === 0) await clusterPage();
    else if (parts[0] === "entities" && parts.length === 1) await typesPage();
    else if (parts[0] === "entities") await entitiesPage(parts[1], params);
    else if (parts[0] === "entity" && parts.length >= 3) await entityPage(parts[1], parts.slice(2).join("/"), params);
    else if (parts[0] === "projections") await projectionsPage();
    else if (parts[0] === "invocations") await invocationsPage(parts.slice(1).join("/"));
    else if (parts[0] === "autoscaler") await autoscalerPage();
    else view.innerHTML = `<p class="error">No page ${esc(hash)}.</p>`;
    statusLine.textContent = `updated ${new Date().toISOString()}`;
    document.body.dataset.page = parts[0] || "cluster";
  } catch (e) {
    view.innerHTML = failure(e);
    document.body.dataset.page = "error";
  }
}

window.addEventListener("hashchange", route);
route();
