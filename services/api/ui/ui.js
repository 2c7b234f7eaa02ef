// fum's dashboard: reads the /v1 API of the api that serves it (same origin), nothing else.
// Every value shown is put in the page as text (textContent), never as HTML: function
// names, results and logs come from function code, which is not trusted.
"use strict";

const REFRESH_MS = 1000;
let timer = null;

function apiKey() {
  return sessionStorage.getItem("fum-api-key");
}

async function api(path) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const answer = await fetch(path, { headers, credentials: "omit" });
  if (answer.status === 401) {
    document.getElementById("key-form").hidden = false;
    throw new Error("this api asks for an API key");
  }
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error ? body.error.message : answer.statusText);
  return body;
}

// a DOM element with text and children; attributes as properties
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "onclick") node.addEventListener("click", value);
    else node[name] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function table(headings, rows, onRow) {
  const head = el("tr", {}, ...headings.map((h) => el("th", {}, h)));
  const body = rows.map((row) => {
    const tr = el("tr", row.props || {}, ...row.cells.map((c) => el("td", {}, c)));
    if (onRow) {
      tr.classList.add("clickable");
      tr.addEventListener("click", () => onRow(row));
    }
    return tr;
  });
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function counts(map) {
  const parts = Object.entries(map || {}).map(([name, n]) => `${name}: ${n}`);
  return parts.length ? parts.join(", ") : "—";
}

function json(value) {
  return value === null || value === undefined ? "—" : JSON.stringify(value);
}

function status(text) {
  return el("span", { className: `status-${text}` }, text);
}

const views = {
  async nodes() {
    const { items } = await api("/v1/nodes");
    return el(
      "section",
      { id: "nodes" },
      el("h2", {}, `Nodes (${items.length})`),
      table(
        ["node", "driver", "preload", "capacity", "busy", "queued", "idle (by function)", "generic (by runtime)", "heard"],
        items.map((n) => ({
          props: { dataset: { node: n.nodeId } },
          cells: [n.nodeId, n.driver, n.preload, n.capacity, n.busy, n.queued, counts(n.idle), counts(n.generic), n.heardAt],
        })),
      ),
    );
  },

  async functions() {
    const { items } = await api("/v1/functions?limit=500");
    return el(
      "section",
      { id: "functions" },
      el("h2", {}, `Functions (${items.length})`),
      table(
        ["name", "runtime", "build", "limits", "size", "updated"],
        items.map((f) => ({
          props: { dataset: { function: f.name } },
          cells: [f.name, f.runtime, f.build ? f.build.status : "—", limits(f.limits), f.size, f.updatedAt],
        })),
      ),
    );
  },

  async calls() {
    const { items } = await api("/v1/calls?limit=50");
    return el(
      "section",
      { id: "calls" },
      el("h2", {}, "Calls (the latest 50, live)"),
      table(
        ["call", "function", "status", "start", "node", "wait ms", "run ms", "created"],
        items.map((c) => ({
          call: c.callNum,
          props: { dataset: { call: c.callNum } },
          cells: [c.callNum, c.funcName, status(c.status), c.start || "—", c.nodeId ?? "—", ms(c.waitMs), ms(c.durationMs), c.createdAt],
        })),
        (row) => { location.hash = `#call/${row.call}`; },
      ),
    );
  },

  async apps() {
    const { items } = await api("/v1/apps");
    return el(
      "section",
      { id: "apps" },
      el("h2", {}, `Workflow apps (${items.length})`),
      table(
        ["app", "start", "functions"],
        items.map((a) => ({ app: a.name, props: { dataset: { app: a.name } }, cells: [a.name, a.start, a.functions.length] })),
        (row) => { location.hash = `#app/${encodeURIComponent(row.app)}`; },
      ),
    );
  },

  async app(name) {
    const app = await api(`/v1/apps/${encodeURIComponent(name)}`);
    const { items } = await api(`/v1/apps/${encodeURIComponent(name)}/sessions?limit=50`);
    return el(
      "section",
      { id: "app", dataset: { app: app.name } },
      el("h2", {}, `App ${app.name}`),
      graph(stepColumns(app), (step) => el("div", { className: "node" }, step.name, el("div", { className: "muted" }, step.next.length ? `→ ${step.next.join(", ")}` : "ends"))),
      el("h3", {}, "Sessions (the latest 50)"),
      table(
        ["session", "status", "created", "ms"],
        items.map((x) => ({ id: x.id, props: { dataset: { session: x.id } }, cells: [x.id, status(x.status), x.createdAt, ms(x.durationMs)] })),
        (row) => { location.hash = `#session/${encodeURIComponent(name)}/${encodeURIComponent(row.id)}`; },
      ),
    );
  },

  async session(name, id) {
    const app = await api(`/v1/apps/${encodeURIComponent(name)}`);
    const session = await api(`/v1/apps/${encodeURIComponent(name)}/sessions/${encodeURIComponent(id)}`);
    // a step's instances are "<Name>" or "<Name>-unumIndex-<i>": one column per step
    const byStep = {};
    for (const i of session.instances || []) {
      (byStep[i.name.split("-unumIndex-")[0]] ||= []).push(i);
    }
    const columns = stepColumns(app).map((steps) => steps.flatMap((s) => byStep[s.name] || []));
    return el(
      "section",
      { id: "session", dataset: { session: session.id } },
      el("h2", {}, `Session ${session.id}`),
      el("dl", {}, el("dt", {}, "status"), el("dd", {}, status(session.status)), el("dt", {}, "result"), el("dd", {}, json(session.result)), el("dt", {}, "error"), el("dd", {}, session.error || "—")),
      graph(columns, (i) => el("a", { className: `node status-${i.status}`, href: `#call/${i.callNum}`, dataset: { instance: i.name } }, i.name, el("div", { className: "muted" }, `call ${i.callNum} · ${i.status}`))),
    );
  },

  async executions() {
    const { items } = await api("/v1/executions?limit=50");
    return el(
      "section",
      { id: "executions" },
      el("h2", {}, "Durable executions (the latest 50)"),
      table(
        ["execution", "name", "status", "runs", "created", "finished"],
        items.map((x) => ({ id: x.id, props: { dataset: { execution: x.id } }, cells: [x.id, x.name, status(x.status), x.runs, x.createdAt, x.finishedAt || "—"] })),
        (row) => { location.hash = `#execution/${encodeURIComponent(row.id)}`; },
      ),
    );
  },

  async execution(id) {
    const x = await api(`/v1/executions/${encodeURIComponent(id)}`);
    return el(
      "section",
      { id: "execution", dataset: { execution: x.id } },
      el("h2", {}, `Execution ${x.name} (${x.id})`),
      el("dl", {}, ...[["status", status(x.status)], ["coordinator runs", x.runs], ["result", x.result && x.result.repr !== undefined ? x.result.repr : json(x.result)], ["error", x.error || "—"]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h3", {}, "History"),
      table(
        ["step", "kind", "function", "run", "status", "calls"],
        x.steps.map((s) => ({ props: { dataset: { step: s.seq } }, cells: [s.seq, s.kind, s.function, s.run, status(s.status), s.calls.map((c) => `${c.callNum} ${c.status}`).join(", ")] })),
      ),
      el("h3", {}, "Coordinator runs"),
      table(["call", "status"], x.runCalls.map((c) => ({ props: { dataset: { run: c.callNum } }, cells: [c.callNum, status(c.status)] }))),
    );
  },

  async keeper(path = "/") {
    const node = await api(`/v1/keeper/nodes?path=${encodeURIComponent(path)}`);
    const child = (name) => (node.path === "/" ? `/${name}` : `${node.path}/${name}`);
    const s = node.stat;
    // the path's ancestors, each a link: / a / b
    const parts = node.path.split("/").filter(Boolean);
    const crumbs = [el("a", { href: "#keeper" }, "/")];
    parts.forEach((part, i) => {
      if (i) crumbs.push(" / ");
      crumbs.push(el("a", { href: `#keeper/${encodeURIComponent("/" + parts.slice(0, i + 1).join("/"))}` }, part));
    });
    const fields = [
      ["version", s.version], ["children's version", s.cversion], ["ACL version", s.aversion],
      ["ephemeral owner", s.ephemeralOwner || "— (persistent)"], ["data length", s.dataLength],
      ["children", s.numChildren], ["created", s.ctime], ["modified", s.mtime],
      ["czxid", s.czxid], ["mzxid", s.mzxid],
    ];
    const data = !node.readable
      ? "(not readable without credentials: its ACL)"
      : node.data === "" ? "(empty)" : `${node.data}${node.truncated ? " …" : ""}`;
    return el(
      "section",
      { id: "keeper", dataset: { path: node.path } },
      el("h2", {}, "Keeper ", ...crumbs),
      el("dl", { id: "stat" }, ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h3", {}, node.encoding === "base64" ? "Data (base64: not UTF-8)" : "Data"),
      el("pre", { id: "znode-data" }, data),
      el("h3", {}, `Children (${s.numChildren})`),
      table(
        ["name"],
        node.children.map((name) => ({ path: child(name), props: { dataset: { znode: child(name) } }, cells: [name] })),
        (row) => { location.hash = `#keeper/${encodeURIComponent(row.path)}`; },
      ),
    );
  },

  async call(num) {
    const call = await api(`/v1/calls/${encodeURIComponent(num)}`);
    const final = ["DONE", "ERROR", "TIMEOUT"].includes(call.status);
    const logs = final ? (await api(`/v1/calls/${encodeURIComponent(num)}/logs`)).logs : null;
    const fields = [
      ["function", call.funcName], ["status", status(call.status)], ["node", call.nodeId ?? "—"],
      ["attempts", call.attempts], ["start", call.start || "—"], ["set-up ms", ms(call.initMs)],
      ["wait ms", ms(call.waitMs)], ["run ms", ms(call.durationMs)], ["created", call.createdAt],
      ["started", call.startedAt || "—"], ["finished", call.finishedAt || "—"], ["caller", call.caller || "—"],
    ];
    return el(
      "section",
      { id: "call", dataset: { call: call.callNum } },
      el("h2", {}, `Call ${call.callNum}`),
      el("dl", {}, ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      el("h3", {}, "Params"), el("pre", { id: "params" }, json(call.params)),
      el("h3", {}, "Result"), el("pre", { id: "result" }, json(call.result)),
      call.error ? el("h3", {}, "Error") : "", call.error ? el("pre", { id: "call-error" }, call.error) : "",
      el("h3", {}, "Logs"), el("pre", { id: "logs" }, logs === null ? "(when the call ends)" : logs || "(none)"),
    );
  },
};

// An app's steps in columns: the Start, then each step after those before it (breadth
// first over Next); steps no path reaches come last.
function stepColumns(app) {
  const steps = Object.fromEntries(app.steps.map((s) => [s.name, s]));
  const placed = new Set();
  const columns = [];
  let front = steps[app.start] ? [steps[app.start]] : [];
  while (front.length) {
    front.forEach((s) => placed.add(s.name));
    columns.push(front);
    const next = new Map();
    for (const s of front) for (const n of s.next) if (steps[n] && !placed.has(n)) next.set(n, steps[n]);
    front = [...next.values()];
  }
  const rest = app.steps.filter((s) => !placed.has(s.name));
  if (rest.length) columns.push(rest);
  return columns;
}

function graph(columns, draw) {
  const parts = [];
  columns.forEach((column, i) => {
    if (i) parts.push(el("div", { className: "arrow" }, "→"));
    parts.push(el("div", { className: "column" }, ...column.map(draw)));
  });
  return el("div", { className: "graph" }, ...parts);
}

function limits(l) {
  return Object.entries(l || {}).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${v}`).join(" ") || "—";
}

function ms(value) {
  return value === null || value === undefined ? "—" : value.toFixed(1);
}

async function render() {
  clearTimeout(timer);
  const [name, ...args] = (location.hash.slice(1) || "nodes").split("/").map(decodeURIComponent);
  const view = views[name] || views.nodes;
  for (const a of document.querySelectorAll("nav a")) {
    const section = { app: "apps", session: "apps", call: "calls", execution: "executions" }[name] || name;
    a.classList.toggle("current", a.getAttribute("href") === `#${section}`);
  }
  const error = document.getElementById("error");
  try {
    const content = await view(...args);
    document.getElementById("view").replaceChildren(content);
    error.hidden = true;
  } catch (exc) {
    error.textContent = exc.message;
    error.hidden = false;
  }
  try {
    const health = await api("/healthz");
    document.getElementById("health").textContent = `${health.status} · ${health.nodes} node(s)`;
  } catch (exc) {
    document.getElementById("health").textContent = "api unreachable";
  }
  timer = setTimeout(render, REFRESH_MS);  // live: every view is read again each second
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("fum-api-key", document.getElementById("key").value);
  document.getElementById("key-form").hidden = true;
  render();
});
window.addEventListener("hashchange", render);
render();
