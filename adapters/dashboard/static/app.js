// The dashboard page: polls /api/ once a second and redraws each table whose rows changed.
// Text goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 1000;
const MAX_ROWS = 300;
const shortId = (id) => (typeof id === "string" && id.length > 16 ? id.slice(0, 12) + "…" : id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function fmtAmount(name, v) {
  return name === "memory" || name === "object_store_memory" ? fmtBytes(v) : String(Math.round(v * 100) / 100);
}

function stateCell(state) {
  return el("td", {class: "state state-" + (state || ""), text: state || ""});
}

function resourcesCell(row) {
  const total = row.resources_total || {}, free = row.resources_available || {};
  const td = el("td");
  for (const name of Object.keys(total).sort()) {
    if (name.startsWith("node:")) continue;
    const used = name in free ? total[name] - free[name] : null;
    const track = el("span", {class: "bartrack"});
    if (used !== null && total[name] > 0) {
      track.append(el("span", {class: "bar", style: `width:${Math.min(100, 100 * used / total[name])}%`}));
    }
    td.append(el("div", {}, track, " " + name + " " +
      (used === null ? "" : fmtAmount(name, used) + " / ") + fmtAmount(name, total[name])));
  }
  return td;
}

function durationText(row) {
  const start = row.start_time_ms, end = row.end_time_ms;
  if (!start) return "";
  const ms = (end || Date.now()) - start;
  return (ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(2) + " s") + (end ? "" : " so far");
}

function errorCell(row) {
  const td = el("td");
  if (row.error_type) td.append(el("div", {class: "error", text: row.error_type}));
  if (row.error_message) td.append(el("pre", {class: "traceback", text: row.error_message}));
  return td;
}

function showLog(workerId) {
  document.getElementById("log-section").hidden = false;
  document.getElementById("log-worker").textContent = workerId;
  document.getElementById("log-section").dataset.worker = workerId;
  pollLog();
}

async function pollLog() {
  const section = document.getElementById("log-section");
  if (section.hidden) return;
  const id = section.dataset.worker;
  const answer = await fetch("/api/workers/" + encodeURIComponent(id) + "/log", {credentials: "same-origin"});
  const pre = document.getElementById("log");
  if (answer.status === 404) { pre.textContent = "(this worker printed nothing yet)"; return; }
  if (!answer.ok) return;
  const log = await answer.json();
  pre.textContent = log.lines.map((l) => l.text).join("");
}

// Each table: its columns, as [heading, function(row) -> cell text or a <td>].
const TABLES = {
  nodes: {id: (r) => r.node_id, cols: [
    ["node", (r) => shortId(r.node_id)], ["name", (r) => r.node_name || ""],
    ["address", (r) => r.address || r.node_ip || ""], ["head", (r) => (r.is_head_node ? "head" : "")],
    ["state", (r) => stateCell(r.state)], ["resources (used / total)", resourcesCell]]},
  actors: {id: (r) => r.actor_id, cols: [
    ["actor", (r) => shortId(r.actor_id)], ["class", (r) => r.class_name], ["name", (r) => r.name || ""],
    ["state", (r) => stateCell(r.state)], ["restarts", (r) => r.num_restarts ?? ""], ["pid", (r) => r.pid ?? ""],
    ["node", (r) => shortId(r.node_id)], ["death cause", (r) => (r.death_cause ? String(r.death_cause) : "")]]},
  tasks: {id: (r) => r.task_id + ":" + (r.attempt_number || 0), cols: [
    ["task", (r) => shortId(r.task_id)], ["name", (r) => r.name || r.func_or_class_name],
    ["type", (r) => r.type || ""], ["state", (r) => stateCell(r.state)], ["attempt", (r) => r.attempt_number ?? 0],
    ["duration", durationText], ["worker pid", (r) => r.worker_pid ?? ""], ["node", (r) => shortId(r.node_id)],
    ["error", errorCell]],
    order: (rows) => rows.slice().sort((a, b) =>
      ((a.end_time_ms ? 1 : 0) - (b.end_time_ms ? 1 : 0)) || ((b.end_time_ms || 0) - (a.end_time_ms || 0)))},
  objects: {id: (r) => r.object_id, cols: [
    ["object", (r) => shortId(r.object_id)], ["size", (r) => fmtBytes(r.object_size)],
    ["node", (r) => shortId(r.node_id)], ["shared memory", (r) => (r.shared_memory ? "yes" : "")],
    // filled where the store says so: a row's "spilled" (true, or where to) and "spilled_url"
    ["spilled", (r) => (r.spilled ? (r.spilled_url || (r.spilled === true ? "yes" : String(r.spilled))) : "")]]},
  placement_groups: {id: (r) => r.placement_group_id, cols: [
    ["group", (r) => shortId(r.placement_group_id)], ["name", (r) => r.name || ""],
    ["state", (r) => stateCell(r.state)], ["strategy", (r) => r.strategy || r.topology_strategy || ""],
    ["bundles", (r) => (Array.isArray(r.bundles) ? JSON.stringify(r.bundles.map((b) => b.unit_resources || b))
      : String(r.bundles ?? ""))],
    ["nodes", (r) => (Array.isArray(r.nodes) ? r.nodes.map(shortId).join(", ") : (r.nodes || ""))]]},
  // the drivers (each init() a job), as Ray's /api/jobs/ lists driver jobs
  drivers: {id: (r) => r.job_id, cols: [
    ["job", (r) => r.job_id], ["status", (r) => stateCell(r.status)],
    ["driver", (r) => (r.driver_info ? "pid " + r.driver_info.pid + " at " + r.driver_info.node_ip_address : "")],
    ["started", (r) => timeText(r.start_time)], ["ended", (r) => timeText(r.end_time)],
    ["actors alive", (r) => r.num_actors_alive ?? ""], ["tasks waiting/running", (r) => r.num_tasks_running ?? ""],
    ["tasks finished", (r) => r.num_tasks_finished ?? ""], ["tasks failed", (r) => r.num_tasks_failed ?? ""],
    ["entrypoint", (r) => r.entrypoint || ""]],
    order: (rows) => rows.slice().sort((a, b) => (b.start_time || 0) - (a.start_time || 0))},
  workers: {id: (r) => r.worker_id, cols: [
    ["worker", (r) => r.worker_id], ["type", (r) => r.worker_type], ["pid", (r) => r.pid ?? ""],
    ["alive", (r) => (r.is_alive ? "yes" : "no")], ["node", (r) => shortId(r.node_id)],
    ["log", (r) => el("td", {}, el("button", {type: "button", class: "show-log", text: "log",
                                             onclick: () => showLog(r.worker_id)}))]]},
};

// Jobs submitted with `anyray job submit` (Ray's REST /api/jobs/): shown where the head serves them.
const SUBMITTED = {id: (r) => r.submission_id || r.job_id, cols: [
  ["submission", (r) => r.submission_id || ""], ["job", (r) => r.job_id || ""], ["status", (r) => stateCell(r.status)],
  ["started", (r) => timeText(r.start_time)], ["ended", (r) => timeText(r.end_time)],
  ["entrypoint", (r) => r.entrypoint || ""], ["message", (r) => r.message || ""]]};

function timeText(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

const lastSeen = {};

function render(kind, rows, spec) {
  spec = spec || TABLES[kind];
  const table = document.getElementById(kind);
  document.getElementById(kind + "-count").textContent = "(" + rows.length + ")";
  if (spec.order) rows = spec.order(rows);
  const body = el("tbody");
  for (const row of rows.slice(0, MAX_ROWS)) {
    const tr = el("tr", {"data-id": String(spec.id(row))});
    if (row.state || row.status) tr.dataset.state = row.state || row.status;  // a job's is its status
    for (const [, cell] of spec.cols) {
      const value = cell(row);
      tr.append(value instanceof HTMLElement && value.tagName === "TD" ? value
        : el("td", {text: value === null || value === undefined ? "" : String(value)}));
    }
    body.append(tr);
  }
  if (!rows.length) body.append(el("tr", {}, el("td", {class: "empty", colspan: spec.cols.length, text: "none"})));
  const head = el("thead", {}, el("tr", {}, ...spec.cols.map(([title]) => el("th", {text: title}))));
  table.replaceChildren(head, body);
}

async function pollSubmitted() {
  // absent (404) until the head serves job submission; its driver jobs are in the drivers table already
  const answer = await fetch("/api/jobs/", {credentials: "same-origin"});
  const rows = answer.ok ? await answer.json() : [];
  const submitted = Array.isArray(rows) ? rows.filter((r) => r.type === "SUBMISSION") : [];
  document.getElementById("submitted-part").hidden = !submitted.length;
  if (submitted.length) render("submitted", submitted, SUBMITTED);
}

async function poll() {
  try {
    const info = await fetch("/api/info", {credentials: "same-origin"});
    if (info.status === 401) { window.location.assign("/login"); return; }
    const about = await info.json();
    document.getElementById("info").textContent =
      about.backend + (about.address ? " at " + about.address : "") + (about.job_id ? ", job " + about.job_id : "");
    const problems = [];
    await Promise.all(Object.keys(TABLES).map(async (kind) => {
      const answer = await fetch("/api/" + kind, {credentials: "same-origin"});
      const text = await answer.text();
      if (!answer.ok) { problems.push(kind + ": " + text); return; }
      if (kind === "tasks" || lastSeen[kind] !== text) {  // tasks: durations of running ones move
        lastSeen[kind] = text;
        render(kind, JSON.parse(text));
      }
    }));
    await pollSubmitted();
    await pollLog();
    document.getElementById("problem").textContent = problems.join("; ");
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (err) {
    document.getElementById("problem").textContent = "cannot reach the dashboard: " + err;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("log-close").addEventListener("click", () => {
    document.getElementById("log-section").hidden = true;
  });
  poll();
});
