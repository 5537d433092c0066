// The marketplace: every registered agent, live from WatchAgents; discovery with reasons per match.
import { api, apiJson, clear, el, enumName, explainError, header, json, notice, scopes } from "./common.js";

const instances = new Map(); // instance_id -> AgentInstance
const policies = new Map(); // "namespace/name" -> RoutingPolicy
let revision = 0;
let snapshotDone = false;

const agentsBox = document.getElementById("agents");
const live = document.getElementById("live");

function key(card) {
  return `${card.namespace || ""}/${card.name || ""}`;
}

function stateName(instance) {
  return enumName(instance.state, "SERVING_STATE_");
}

function skillView(skill) {
  return el(
    "details",
    { class: "skill" },
    el("summary", {}, el("code", {}, skill.name || ""), " ", skill.description || ""),
    (skill.tags || []).length ? el("p", { class: "tags" }, "tags: ", (skill.tags || []).join(", ")) : null,
    el("div", { class: "schemas" },
      el("div", {}, el("h5", {}, "input schema"), json(skill.input_schema || {})),
      el("div", {}, el("h5", {}, "output schema"), json(skill.output_schema || {})))
  );
}

function pills(values) {
  return values.length ? values.map((v) => el("span", { class: "pill" }, v)) : ["—"];
}

function agentView(agentKey, group) {
  const newest = group[group.length - 1].card || {};
  const weights = (policies.get(agentKey) || {}).weights || {};
  const versions = [...new Set(group.map((i) => (i.card || {}).version || ""))].sort();
  const card = el(
    "article",
    { class: "agent", "data-agent": agentKey },
    el("h3", {}, el("span", { class: "namespace" }, newest.namespace || ""), "/",
      el("span", { class: "name" }, newest.name || "")),
    el("p", { class: "purpose" }, newest.purpose || ""),
    el("p", { class: "description" }, newest.description || ""),
    el("dl", {},
      el("dt", {}, "owner"), el("dd", { class: "owner" }, newest.owner || "—"),
      el("dt", {}, "policies"), el("dd", { class: "policies" },
        ...pills(newest.policies || [])),
      el("dt", {}, "labels"), el("dd", {},
        ...pills(Object.entries(newest.labels || {}).map(([k, v]) => `${k}=${v}`)))),
    el("table", { class: "versions" },
      el("thead", {}, el("tr", {}, el("th", {}, "version"), el("th", {}, "routing weight"), el("th", {}, "instances"))),
      el("tbody", {}, ...versions.map((version) =>
        el("tr", {},
          el("td", {}, version),
          el("td", {}, version in weights ? String(weights[version]) : Object.keys(weights).length ? "0" : "—"),
          el("td", {}, ...group.filter((i) => (i.card || {}).version === version).map((i) =>
            el("span", { class: "instance state-" + stateName(i).toLowerCase(), title: i.instance_id || "" },
              stateName(i), " ", (i.card || {}).endpoint || "", i.load ? ` load ${Number(i.load).toFixed(2)}` : "")))))))
    ,
    el("h4", {}, "skills"),
    ...((newest.skills || []).map(skillView))
  );
  return card;
}

function render() {
  const groups = new Map();
  for (const instance of instances.values()) {
    const k = key(instance.card || {});
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(instance);
  }
  const keys = [...groups.keys()].sort();
  for (const group of groups.values()) {
    group.sort((a, b) => String((a.card || {}).version).localeCompare(String((b.card || {}).version)));
  }
  clear(agentsBox);
  if (!keys.length) agentsBox.append(notice("info", "No agent is registered."));
  for (const k of keys) agentsBox.append(agentView(k, groups.get(k)));
  document.getElementById("agent-count").textContent = `(${keys.length})`;
}

function apply(event) {
  revision = Math.max(revision, Number(event.revision || 0));
  const type = enumName(event.type, "AGENT_EVENT_TYPE_");
  const instance = event.instance || {};
  switch (type) {
    case "SNAPSHOT":
    case "REGISTERED":
    case "STATE_CHANGED":
      if (instance.instance_id) instances.set(instance.instance_id, instance);
      break;
    case "EXPIRED":
    case "DEREGISTERED":
      instances.delete(instance.instance_id);
      break;
    case "ROUTING_CHANGED":
      if (event.routing_policy) {
        policies.set(`${event.routing_policy.namespace || ""}/${event.routing_policy.name || ""}`, event.routing_policy);
      }
      break;
    case "SNAPSHOT_END":
      snapshotDone = true;
      break;
  }
  if (snapshotDone) render();
}

// WatchAgents as server-sent events, read with fetch (EventSource cannot send the Authorization header).
async function watch() {
  for (;;) {
    let response;
    try {
      response = await api("/agents/watch");
    } catch (error) {
      if (error.status === 401) return;
      live.textContent = "reconnecting…";
      await pause(2000);
      continue;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      clear(agentsBox).append(explainError({ status: response.status, message: body.error || "" }, "agents:read"));
      live.textContent = "";
      if (response.status === 403) return;
      await pause(5000);
      continue;
    }
    // A new stream starts with a fresh snapshot.
    instances.clear();
    policies.clear();
    snapshotDone = false;
    live.textContent = "live";
    live.className = "live on";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (frame.startsWith("event: end")) break;
          if (data) apply(JSON.parse(data));
        }
      }
    } catch (error) {
      // the stream broke: watch again
    }
    live.textContent = "reconnecting…";
    live.className = "live";
    await pause(1000);
  }
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function candidateView(candidate) {
  const card = (candidate.instance || {}).card || {};
  return el(
    "li",
    { class: "candidate", "data-agent": key(card) },
    el("strong", {}, `${card.namespace || ""}/${card.name || ""}`),
    ` @${card.version || ""}`,
    el("span", { class: "score" }, ` score ${Number(candidate.score || 0).toFixed(3)}`),
    candidate.matched_skill ? el("span", { class: "pill" }, candidate.matched_skill) : null,
    el("ul", { class: "reasons" }, ...(candidate.reasons || []).map((r) => el("li", { class: "reason" }, r)))
  );
}

async function search(event) {
  event.preventDefault();
  const results = clear(document.getElementById("results"));
  const params = new URLSearchParams();
  for (const field of ["pattern", "intent", "skill", "purpose", "policies"]) {
    const value = document.getElementById("q-" + field).value.trim();
    if (value) params.set(field, value);
  }
  try {
    const reply = await apiJson("/agents/discover?" + params.toString());
    const candidates = reply.candidates || [];
    results.append(
      el("p", { class: "summary", id: "result-summary" },
        `${candidates.length} match(es); ${reply.visible_count || 0} visible, ${reply.matched_count || 0} matched`),
      el("ol", { class: "candidates" }, ...candidates.map(candidateView))
    );
  } catch (error) {
    if (error.status !== 401) results.append(explainError(error, "agents:read"));
  }
}

header("/");
if (!scopes().has("agents:read")) {
  document.getElementById("search-section").hidden = true;
}
document.getElementById("search").addEventListener("submit", search);
document.getElementById("search-clear").addEventListener("click", () => {
  document.getElementById("search").reset();
  clear(document.getElementById("results"));
});
watch();
