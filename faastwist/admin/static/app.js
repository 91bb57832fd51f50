/* faastwist console: one page over the admin REST API; no build step, no dependencies.
 * The list shows one page of PAGE_SIZE functions (limit + continue, name order) and a
 * name-prefix search, and polls that page every POLL_MS, never the whole list: with
 * 10,000 functions a full list is megabytes. The open function's detail refreshes with
 * it (fetched on its own when it is not on the page). */
"use strict";

const POLL_MS = 1500;
const PAGE_SIZE = 50;
const TEMPLATE = [
  "name: echo",
  "command: [python3, -u, -m, http.server, \"${PORT}\"]",
  "minReplica: 0",
  "maxReplica: 2",
  "autoScaleType: concurrency",
  "autoScaleValue: \"10\"",
  "",
].join("\n");

const state = {
  config: null,
  selected: null,        // name of the function in the detail view
  editing: null,         // null: create; a name: update that function
  records: new Map(),    // name -> {spec, status}: the page shown
  detail: null,          // {spec, status} of the selected function when not on the page
  prefix: "",            // the search
  tokens: [""],          // continue token of each page up to the current one
  next: "",              // continue token of the page after this one
  remaining: 0,
  polling: false,
  logsAt: 0,
};

const $ = (id) => document.getElementById(id);

/* The admin token lives in this tab's sessionStorage only: gone when the tab closes,
 * never shared with other tabs or written to disk by the page. */
function token() { return sessionStorage.getItem("faastwist.token") || ""; }

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

/* One admin API call; resolves to parsed JSON, rejects with the server's message. */
async function api(method, path, body, contentType) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  if (body !== undefined) headers["Content-Type"] = contentType || "application/yaml";
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch (err) {
    throw new ApiError("cannot reach the admin API: " + err.message, 0);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (err) { data = text; }
  }
  if (!response.ok) {
    const message = data && typeof data === "object" && data.message
      ? data.message : (typeof data === "string" && data ? data.slice(0, 500)
                        : "HTTP " + response.status + " " + response.statusText);
    throw new ApiError(message, response.status);
  }
  return data;
}

function fnPath(name, action) {
  let path = state.config.apiBase;
  if (name) path += "/" + encodeURIComponent(name);
  if (action) path += "/" + action;
  return path;
}

/* ---- small YAML emitter, so the editor shows the spec the way operators write it ---- */
const PLAIN = /^[A-Za-z_/.$][A-Za-z0-9_./:$-]*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|y|n|~)$/i;

function yamlScalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  const text = String(value);
  if (PLAIN.test(text) && !RESERVED.test(text) && !/^[0-9.+-]/.test(text)) return text;
  return JSON.stringify(text);  // a JSON string is a valid YAML double-quoted scalar
}

const isScalar = (v) => v === null || typeof v !== "object";

/* One-line form (scalars, empty collections, lists of scalars), or null for a block. */
function inlineYaml(value) {
  if (Array.isArray(value)) {
    return value.every(isScalar) ? "[" + value.map(yamlScalar).join(", ") + "]" : null;
  }
  if (value && typeof value === "object") return Object.keys(value).length ? null : "{}";
  return yamlScalar(value);
}

function blockYaml(value, indent) {
  const lines = [];
  const nested = (prefix, item) => {
    const sub = blockYaml(item, indent + "  ");
    sub[0] = prefix + sub[0].slice(indent.length + 2);
    lines.push(...sub);
  };
  if (Array.isArray(value)) {
    for (const item of value) {
      const line = inlineYaml(item);
      if (line !== null) lines.push(indent + "- " + line);
      else if (Array.isArray(item)) { lines.push(indent + "-"); lines.push(...blockYaml(item, indent + "  ")); }
      else nested(indent + "- ", item);
    }
  } else {
    for (const key of Object.keys(value)) {
      const line = inlineYaml(value[key]);
      if (line !== null) lines.push(indent + yamlScalar(key) + ": " + line);
      else { lines.push(indent + yamlScalar(key) + ":"); lines.push(...blockYaml(value[key], indent + "  ")); }
    }
  }
  return lines;
}

function dumpYaml(value) {
  const line = inlineYaml(value);
  return (line !== null ? line : blockYaml(value, "").join("\n")) + "\n";
}

/* ---- rendering helpers ---- */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) {
  const value = (status && status.state) || "unknown";
  const text = status && status.startPending ? value + " (starting)" : value;
  return el("span", { class: "badge state-" + value, "data-state": value }, text);
}

function age(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) return seconds + "s";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return minutes + "m";
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return hours + "h";
  return Math.floor(hours / 24) + "d";
}

// epoch seconds from an RFC 3339 time (what the API answers) or a number (older servers)
function seconds(value) {
  if (typeof value === "number") return value > 0 ? value : null;
  if (typeof value !== "string" || !value) return null;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function stamp(status) {
  for (const key of ["created", "createdAt", "updated"]) {
    const at = seconds(status[key]);
    if (at !== null) return at;
  }
  return null;
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function banner(message) {
  const node = $("banner");
  node.textContent = message || "";
  node.hidden = !message;
}

function kv(target, entries) {
  const node = $(target);
  node.replaceChildren();
  for (const [key, value] of entries) {
    node.append(el("dt", {}, key), el("dd", {}, value === "" || value === undefined ? "-" : value));
  }
}

/* The template and build digest of a function `faastwist up` deployed (its annotations
 * faastwist.io/lang and faastwist.io/digest), or null. */
function templateOf(spec) {
  const annotations = (spec && spec.annotations) || {};
  const lang = annotations["faastwist.io/lang"];
  if (typeof lang !== "string" || !lang) return null;
  const digest = annotations["faastwist.io/digest"];
  return { lang, digest: typeof digest === "string" ? digest : "" };
}

/* ---- the list ---- */
function recordsOf(data) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data.items)) return data.items;
  if (data && Array.isArray(data.functions)) return data.functions;
  return [];
}

function renderList() {
  const body = $("functions").tBodies[0];
  const now = Date.now() / 1000;
  const names = Array.from(state.records.keys()).sort();
  body.replaceChildren(...names.map((name) => {
    const { spec, status } = state.records.get(name);
    const running = (status.extData || {}).replicas;
    const bounds = (spec.minReplica || 0) + ".." + (spec.maxReplica || "*");
    const replicas = running !== undefined && running !== "" ? running + "/" + bounds : bounds;
    const command = (spec.command || []).slice();
    if (command.length) command[0] = command[0].split("/").pop() || command[0];
    const image = spec.image || command.join(" ") || "-";
    const at = stamp(status);
    const built = templateOf(spec);
    const row = el("tr", { "data-name": name, class: name === state.selected ? "selected" : "" },
      el("td", { class: "name" }, el("a", { href: "#" + encodeURIComponent(name) }, name)),
      el("td", {}, badge(status)),
      el("td", {}, status.event || "-"),
      el("td", {}, replicas),
      el("td", { class: "template", title: built ? "digest " + built.digest : "",
                 "data-lang": built ? built.lang : "", "data-digest": built ? built.digest : "" },
         built ? built.lang : "-",
         built && built.digest ? el("span", { class: "digest muted" }, " " + built.digest.slice(0, 12)) : ""),
      el("td", { class: "image", title: image }, image),
      el("td", {}, at ? age(now - at) : "-"));
    return row;
  }));
  $("list-empty").hidden = names.length > 0 || !!state.prefix;
}

function listQuery() {
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const token = state.tokens[state.tokens.length - 1];
  if (token) query.set("continue", token);
  else if (state.prefix) query.set("prefix", state.prefix);
  return "?" + query.toString();
}

function renderPager() {
  const page = state.tokens.length;
  const shown = state.records.size;
  $("page-info").textContent = shown
    ? "page " + page + (state.remaining ? " \u00b7 " + state.remaining + " more" : "") : "";
  $("btn-prev").disabled = page <= 1;
  $("btn-next").disabled = !state.next;
}

function turn(step) {
  if (step > 0 && state.next) state.tokens.push(state.next);
  else if (step < 0 && state.tokens.length > 1) state.tokens.pop();
  else return;
  refresh();
}

function search(prefix) {
  state.prefix = prefix.trim().toLowerCase();
  state.tokens = [""];
  refresh();
}

async function refresh() {
  if (state.polling) return;
  state.polling = true;
  try {
    let data;
    try {
      data = await api("GET", fnPath() + listQuery());
    } catch (err) {
      if (err.status !== 410) throw err;
      state.tokens = [""];   // the listing expired: back to the first page
      data = await api("GET", fnPath() + listQuery());
    }
    state.records = new Map(recordsOf(data).map((r) => [r.spec.name, r]));
    const meta = (data && data.metadata) || {};
    state.next = meta.continue || "";
    state.remaining = meta.remainingItemCount || 0;
    if (state.selected && !state.records.has(state.selected)) {
      try { state.detail = await api("GET", fnPath(state.selected)); }
      catch (err) { state.detail = null; }
    }
    showError("list-error", "");
    renderList();
    renderPager();
    if (state.selected) renderDetail();
  } catch (err) {
    showError("list-error", err.message);
    if (err.status === 401 || err.status === 403) askForToken(err.status);
  } finally {
    state.polling = false;
  }
}

function askForToken(status) {
  banner(status === 403
    ? "This token may only read: paste an admin token under 'token' to change anything."
    : "The admin API wants a token: paste it under 'token' (on the node's machine it is in "
      + "the file named by admin.auth.tokensFile plus '.admin', e.g. data/admin-tokens.admin).");
  $("token-details").open = true;
  $("token-input").focus();
}

async function loadInfo() {
  try {
    const info = await api("GET", state.config.infoPath);
    const parts = [];
    if (info.version) parts.push("v" + info.version);
    if (info.provider) parts.push("provider " + info.provider);
    const uptime = typeof info.uptimeSeconds === "number" ? info.uptimeSeconds : info.uptime;
    if (typeof uptime === "number") parts.push("up " + age(uptime));
    if (info.node) parts.push("node " + info.node);
    if (info.leader !== undefined) parts.push(info.leader ? "leader" : "follower");
    if (info.leaderNode && !info.leader) {
      parts.push("leader " + info.leaderNode.id +
                 (info.leaderNode.admin ? " (admin " + info.leaderNode.admin + ")" : ""));
    }
    if (Array.isArray(info.nodes) && info.nodes.length) {
      parts.push(info.nodes.length + " nodes: " + info.nodes.map((n) => n.id).join(", "));
    }
    $("server-info").textContent = parts.join(" \u00b7 ") || "connected";
  } catch (err) {
    $("server-info").textContent = "server info unavailable: " + err.message;
  }
}

/* ---- the detail view ---- */
function select(name) {
  state.selected = name;
  showError("detail-error", "");
  notice("");
  $("invoke-result").hidden = true;
  $("detail").hidden = !name;
  if (name) {
    if (location.hash !== "#" + encodeURIComponent(name)) location.hash = encodeURIComponent(name);
    if (!recordOf(name) && state.config) refresh();   // not on this page: fetch it
    renderDetail();
    loadLogs();
  } else if (location.hash) {
    history.replaceState(null, "", location.pathname);
  }
  renderList();
}

function notice(message) {
  const node = $("detail-notice");
  node.textContent = message || "";
  node.hidden = !message;
}

/* The record of a function: from the page shown, else the one fetched for the detail. */
function recordOf(name) {
  return state.records.get(name) ||
    (state.detail && state.detail.spec && state.detail.spec.name === name
      ? state.detail : undefined);
}

function renderDetail() {
  const record = recordOf(state.selected);
  $("detail-name").textContent = state.selected;
  if (!record) {
    $("detail-badge").replaceWith(Object.assign(badge({ state: "gone" }), { id: "detail-badge" }));
    return;
  }
  const { spec, status } = record;
  const updated = seconds(status.updated);
  $("detail-badge").replaceWith(Object.assign(badge(status), { id: "detail-badge" }));
  kv("detail-status", [
    ["state", status.state],
    ["event", status.event],
    ["message", status.message],
    ["start requested", status.startPending ? "yes" : "no"],
    ["updated", updated !== null ? new Date(updated * 1000).toLocaleString() : ""],
  ]);
  const built = templateOf(spec);
  $("detail-template-box").hidden = !built;
  if (built) kv("detail-template", [["lang", built.lang], ["digest", built.digest]]);
  const ext = Object.entries(status.extData || {});
  kv("detail-ext", ext.length ? ext : [["(none)", ""]]);
  const text = dumpYaml(spec);
  if ($("detail-spec").textContent !== text) $("detail-spec").textContent = text;
  if (Date.now() - state.logsAt > 5000) loadLogs();
}

async function loadLogs() {
  const name = state.selected;
  if (!name) return;
  state.logsAt = Date.now();
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  try {
    const response = await fetch(fnPath(name, "logs") + "?tail=100", { headers, cache: "no-store" });
    const text = await response.text();
    if (name !== state.selected) return;
    if (!response.ok) {
      let message = text;
      try { message = JSON.parse(text).message || text; } catch (err) { /* plain text */ }
      $("detail-logs").textContent = "(logs unavailable: " + message + ")";
      return;
    }
    const lines = text.split("\n").filter(Boolean).map((line) => {
      try {
        const entry = JSON.parse(line);
        return (entry.timestamp || "") + " " + (entry.instance || "") + " " + (entry.text || "");
      } catch (err) { return line; }
    });
    $("detail-logs").textContent = lines.length ? lines.join("\n") : "(no log lines yet)";
  } catch (err) {
    $("detail-logs").textContent = "(logs unavailable: " + err.message + ")";
  }
}

async function lifecycle(action, method, done) {
  const name = state.selected;
  showError("detail-error", "");
  notice("");
  try {
    const data = await api(method, fnPath(name, action));
    if (data && data.spec && data.status) state.records.set(name, data);
    notice(done);
  } catch (err) {
    showError("detail-error", err.message);
  }
  await refresh();
}

let deleteArmed = null;
function onDelete() {
  const button = $("btn-delete");
  if (!deleteArmed) {
    button.textContent = "Really delete?";
    deleteArmed = setTimeout(() => { button.textContent = "Delete"; deleteArmed = null; }, 4000);
    return;
  }
  clearTimeout(deleteArmed);
  deleteArmed = null;
  button.textContent = "Delete";
  const name = state.selected;
  showError("detail-error", "");
  api("DELETE", fnPath(name)).then(() => {
    state.records.delete(name);
    select(null);
    banner("function " + name + " deleted");
    setTimeout(() => banner(""), 4000);
    return refresh();
  }, (err) => showError("detail-error", err.message));
}

/* ---- create / update ---- */
function openEditor(name) {
  state.editing = name;
  $("create-panel").hidden = false;
  $("editor-title").textContent = name ? "Update " + name : "Create a function";
  $("editor-submit").textContent = name ? "Update" : "Create";
  $("editor-yaml").value = name && recordOf(name)
    ? dumpYaml(recordOf(name).spec) : TEMPLATE;
  showError("editor-error", "");
  $("editor-yaml").focus();
}

async function submitEditor(event) {
  event.preventDefault();
  const text = $("editor-yaml").value;
  const kind = /^\s*[{[]/.test(text) ? "application/json" : "application/yaml";
  showError("editor-error", "");
  try {
    const data = state.editing
      ? await api("PUT", fnPath(state.editing), text, kind)
      : await api("POST", fnPath(), text, kind);
    const name = (data && data.spec && data.spec.name) || state.editing;
    $("create-panel").hidden = true;
    await refresh();
    if (name) select(name);
    notice("function " + name + (state.editing ? " updated" : " created"));
    state.editing = null;
  } catch (err) {
    showError("editor-error", err.message);
  }
}

/* ---- the function store: OpenFaaS's catalogue at /system/store, deployed through
 * /system/functions with the body faas-cli's `store deploy` sends ---- */
function storeDeployment(entry) {
  if (!entry.fprocess) {
    throw new ApiError("store entry " + entry.name + " has no fprocess: it needs its " +
                       "container image, and this provider runs processes, not images", 400);
  }
  const images = entry.images || {};
  const body = { service: entry.name, envProcess: entry.fprocess,
                 image: images.x86_64 || Object.values(images)[0] || "store/" + entry.name };
  if (entry.environment && Object.keys(entry.environment).length) body.envVars = entry.environment;
  if (entry.labels && Object.keys(entry.labels).length) body.labels = entry.labels;
  if (entry.annotations && Object.keys(entry.annotations).length) body.annotations = entry.annotations;
  if (entry.readOnlyRootFilesystem) body.readOnlyRootFilesystem = true;
  return body;
}

async function deployFromStore(entry) {
  showError("store-error", "");
  try {
    await api("POST", "/system/functions", JSON.stringify(storeDeployment(entry)),
              "application/json");
  } catch (err) {
    showError("store-error", "cannot deploy " + entry.name + " here: " + err.message);
    return;
  }
  $("store-panel").hidden = true;
  await refresh();
  select(entry.name);
  notice("function " + entry.name + " deployed from the store");
}

async function openStore() {
  $("store-panel").hidden = false;
  showError("store-error", "");
  const body = $("store-list").tBodies[0];
  body.replaceChildren();
  let catalogue;
  try {
    catalogue = await api("GET", "/system/store");
  } catch (err) {
    showError("store-error", err.message);
    return;
  }
  body.replaceChildren(...(catalogue.functions || []).map((entry) => {
    const button = el("button", { type: "button", class: "link" }, "Deploy");
    button.addEventListener("click", () => deployFromStore(entry));
    return el("tr", { "data-name": entry.name },
      el("td", { class: "name", title: entry.title || "" }, entry.name),
      el("td", { class: "image" }, entry.fprocess || "(image only)"),
      el("td", {}, entry.description || ""),
      el("td", {}, button));
  }));
}

/* ---- invoke (relayed to the gate by /console/invoke/{name}/...) ---- */
async function invoke(event) {
  event.preventDefault();
  const name = state.selected;
  const method = $("invoke-method").value;
  let path = $("invoke-path").value.trim() || "/";
  if (!path.startsWith("/")) path = "/" + path;
  const headers = { "X-Faastwist-Console": "1" };
  for (const line of $("invoke-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at < 1) { showError("detail-error", "header line without ':': " + line); return; }
    let key = line.slice(0, at).trim();
    // the relay's own Authorization is the admin token; the function's travels apart
    if (key.toLowerCase() === "authorization") key = "X-Faastwist-Forward-Authorization";
    headers[key] = line.slice(at + 1).trim();
  }
  if (token()) headers.Authorization = "Bearer " + token();
  const body = ["GET", "HEAD"].includes(method) ? undefined : $("invoke-body").value;
  showError("detail-error", "");
  $("invoke-send").disabled = true;
  const started = performance.now();
  try {
    const response = await fetch("invoke/" + encodeURIComponent(name) + path,
                                 { method, headers, body, cache: "no-store" });
    const text = await response.text();
    const elapsed = performance.now() - started;
    $("invoke-status").textContent = response.status + " " + response.statusText;
    $("invoke-status").className = "status-code " + (response.ok ? "ok" : "bad");
    const relay = response.headers.get("x-faastwist-relay-ms");
    $("invoke-time").textContent = elapsed.toFixed(1) + " ms" + (relay ? " (gate " + relay + " ms)" : "");
    const lines = [];
    response.headers.forEach((value, key) => { if (key !== "x-faastwist-relay-ms") lines.push(key + ": " + value); });
    $("invoke-response-headers").textContent = lines.join("\n");
    $("invoke-response").textContent = text;
    $("invoke-result").hidden = false;
  } catch (err) {
    showError("detail-error", "invoke failed: " + err.message);
  } finally {
    $("invoke-send").disabled = false;
  }
}

/* ---- wiring ---- */
function fromHash() {
  const name = decodeURIComponent(location.hash.replace(/^#/, ""));
  if (name !== (state.selected || "")) select(name || null);
}

async function boot() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    state.config = await response.json();
  } catch (err) {
    banner("cannot load the console's config.json: " + err.message);
    return;
  }
  $("controller-name").textContent = "in " + state.config.controller;
  $("token-input").value = token();
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("faastwist.token", $("token-input").value.trim());
    $("token-details").open = false;
    banner("");
    refresh();
    loadInfo();
  });
  $("btn-new").addEventListener("click", () => openEditor(null));
  $("btn-store").addEventListener("click", openStore);
  $("btn-store-close").addEventListener("click", () => { $("store-panel").hidden = true; });
  $("btn-edit").addEventListener("click", () => openEditor(state.selected));
  $("btn-editor-close").addEventListener("click", () => { $("create-panel").hidden = true; });
  $("editor-form").addEventListener("submit", submitEditor);
  $("btn-start").addEventListener("click", () => lifecycle("start", "PUT", "start requested"));
  $("btn-stop").addEventListener("click", () => lifecycle("stop", "PUT", "stopped"));
  $("btn-delete").addEventListener("click", onDelete);
  $("btn-detail-close").addEventListener("click", () => select(null));
  $("btn-logs").addEventListener("click", loadLogs);
  $("invoke-form").addEventListener("submit", invoke);
  $("btn-prev").addEventListener("click", () => turn(-1));
  $("btn-next").addEventListener("click", () => turn(1));
  let typing = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => search(e.target.value), 250);
  });
  window.addEventListener("hashchange", fromHash);
  await Promise.all([refresh(), loadInfo()]);
  fromHash();
  setInterval(refresh, POLL_MS);
  setInterval(loadInfo, 15000);
  document.body.setAttribute("data-ready", "true");
}

boot();
