// A task's explanation: everything ExplainTask returns, the plan drawn as a DAG, and pending approvals.
import { apiJson, clear, el, enumName, explainError, header, json, notice, scopes, svg, when } from "./common.js";

const main = document.getElementById("task");
const taskId = new URLSearchParams(location.search).get("id") || "";

const NODE_W = 200;
const NODE_H = 58;
const GAP_X = 70;
const GAP_Y = 26;

function agentName(agent) {
  if (!agent || !agent.name) return "";
  return `${agent.namespace || ""}/${agent.name}${agent.version ? "@" + agent.version : ""}`;
}

function stepState(step) {
  return enumName(step.state, "STEP_STATE_");
}

// Layers by longest path from the roots; a step's row is its order within its layer.
function layout(steps) {
  const byId = new Map(steps.map((s) => [s.step_id, s]));
  const layer = new Map();
  const visiting = new Set();
  function depth(id) {
    if (layer.has(id)) return layer.get(id);
    if (visiting.has(id)) return 0; // a cycle never comes from the planner; draw it flat rather than hang
    visiting.add(id);
    const deps = ((byId.get(id) || {}).depends_on || []).filter((d) => byId.has(d));
    const value = deps.length ? Math.max(...deps.map(depth)) + 1 : 0;
    layer.set(id, value);
    return value;
  }
  const rows = new Map();
  const position = new Map();
  for (const step of steps) {
    const x = depth(step.step_id);
    const y = rows.get(x) || 0;
    rows.set(x, y + 1);
    position.set(step.step_id, { x: 10 + x * (NODE_W + GAP_X), y: 10 + y * (NODE_H + GAP_Y) });
  }
  const width = 20 + (Math.max(0, ...layer.values()) + 1) * (NODE_W + GAP_X) - GAP_X;
  const height = 20 + Math.max(1, ...rows.values()) * (NODE_H + GAP_Y) - GAP_Y;
  return { position, width, height };
}

function dag(steps) {
  const { position, width, height } = layout(steps);
  const root = svg("svg", { id: "dag", class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  root.append(svg("title", {}, "Plan of task " + taskId));
  root.append(
    svg("defs", {},
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
        svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" })))
  );
  for (const step of steps) {
    const to = position.get(step.step_id);
    for (const dep of step.depends_on || []) {
      const from = position.get(dep);
      if (!from) continue;
      const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      root.append(svg("path", { class: "edge", d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, "marker-end": "url(#arrow)" }));
    }
  }
  for (const step of steps) {
    const { x, y } = position.get(step.step_id);
    const state = stepState(step);
    const node = svg("g", { class: "node state-" + state.toLowerCase(), "data-step": step.step_id, transform: `translate(${x},${y})`, tabindex: 0 },
      svg("rect", { width: NODE_W, height: NODE_H, rx: 8, ry: 8 }),
      svg("text", { x: 10, y: 20, class: "step-id" }, step.step_id),
      svg("text", { x: 10, y: 36, class: "step-agent" }, agentName(step.agent) || step.skill || ""),
      svg("text", { x: 10, y: 51, class: "step-state" }, state));
    node.append(svg("title", {}, `${step.step_id}: ${step.description || step.skill || ""} (${state})`));
    const open = () => {
      const target = document.getElementById("step-" + step.step_id);
      if (target) { target.open = true; target.scrollIntoView({ block: "start" }); }
    };
    node.addEventListener("click", open);
    node.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    root.append(node);
  }
  return root;
}

function legend() {
  const states = ["PENDING", "READY", "RUNNING", "WAITING_APPROVAL", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"];
  return el("p", { class: "legend" }, ...states.map((s) => el("span", { class: "state state-" + s.toLowerCase() }, s)));
}

function stepDetails(step, explanation) {
  const subs = (explanation.substitutions || []).filter((s) => s.step_id === step.step_id);
  const attempts = (explanation.attempts || []).filter((a) => a.step_id === step.step_id);
  const lastAttempt = attempts[attempts.length - 1] || {};
  const agent = step.agent && step.agent.name ? step.agent : lastAttempt.agent || {};
  const state = stepState(step);
  return el("details", { class: "step", id: "step-" + step.step_id, "data-step": step.step_id },
    el("summary", {}, el("code", {}, step.step_id), " ", el("span", { class: "state state-" + state.toLowerCase() }, state),
      " ", step.description || step.skill || ""),
    el("dl", {},
      el("dt", {}, "agent"), el("dd", { class: "step-agent" }, agentName(agent) || "—"),
      el("dt", {}, "version"), el("dd", {}, agent.version || "—"),
      el("dt", {}, "instance"), el("dd", {}, agent.instance_id || "—"),
      el("dt", {}, "skill"), el("dd", {}, step.skill || "—"),
      el("dt", {}, "depends on"), el("dd", {}, (step.depends_on || []).join(", ") || "—"),
      step.when ? [el("dt", {}, "when"), el("dd", {}, step.when)] : null,
      step.acceptance_rule ? [el("dt", {}, "acceptance"), el("dd", {}, step.acceptance_rule)] : null,
      step.error ? [el("dt", {}, "error"), el("dd", { class: "error" }, step.error)] : null),
    el("h4", {}, "inputs (after substitution)"),
    subs.length
      ? el("table", { class: "subs" },
          el("thead", {}, el("tr", {}, ...["field", "value", "source", "template", "attempt"].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...subs.map((s) => el("tr", {},
            el("td", {}, el("code", {}, s.field_path || "")),
            el("td", {}, json(s.value)),
            el("td", {}, s.source || "", s.source_step_id ? ` (step ${s.source_step_id})` : ""),
            el("td", {}, el("code", {}, s.template || "")),
            el("td", {}, String(s.attempt || ""))))))
      : el("p", { class: "muted" }, "no substitutions recorded"),
    el("details", {}, el("summary", {}, "input template"), json(step.input_template || {})),
    el("h4", {}, "output"),
    json(step.output || null),
    el("h4", {}, `attempts (${attempts.length})`),
    attemptsTable(attempts));
}

function attemptsTable(attempts) {
  if (!attempts.length) return el("p", { class: "muted" }, "none");
  return el("table", { class: "attempts" },
    el("thead", {}, el("tr", {}, ...["#", "agent", "state", "start", "end", "error", "models", "planner"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...attempts.map((a) => el("tr", {},
      el("td", {}, String(a.attempt || ""), a.replayed ? " (replayed)" : ""),
      el("td", {}, agentName(a.agent)),
      el("td", {}, enumName(a.state, "STEP_STATE_")),
      el("td", {}, when(a.start_time)),
      el("td", {}, when(a.end_time)),
      el("td", { class: "error" }, [a.error_code, a.error_message].filter(Boolean).join(": ")),
      el("td", {}, (a.model_usages || []).map((m) => `${m.model_name || ""}@${m.model_version || ""}`).join(", ")),
      el("td", {}, a.planner || "")))));
}

// The execution timeline: one bar per attempt on a shared time axis.
function timeline(attempts) {
  const timed = attempts.filter((a) => a.start_time).map((a) => ({
    a, start: Date.parse(a.start_time), end: Date.parse(a.end_time || a.start_time),
  }));
  if (!timed.length) return el("p", { class: "muted" }, "no attempt yet");
  timed.sort((p, q) => p.start - q.start);
  const t0 = timed[0].start;
  const span = Math.max(1, Math.max(...timed.map((t) => t.end)) - t0);
  const width = 720, label = 180, row = 22;
  const chart = svg("svg", { id: "timeline", class: "timeline", width: width + label, height: timed.length * row + 24 });
  timed.forEach((t, i) => {
    const x = label + ((t.start - t0) / span) * width;
    const w = Math.max(2, ((t.end - t.start) / span) * width);
    const state = enumName(t.a.state, "STEP_STATE_").toLowerCase();
    chart.append(
      svg("text", { x: 4, y: i * row + 15, class: "bar-label" }, `${t.a.step_id} #${t.a.attempt || 1}`),
      svg("rect", { x, y: i * row + 4, width: w, height: row - 8, class: "bar state-" + state },
        svg("title", {}, `${t.a.step_id} attempt ${t.a.attempt || 1}: ${t.end - t.start} ms`)));
  });
  chart.append(svg("text", { x: label, y: timed.length * row + 18, class: "axis" }, "0 ms"),
    svg("text", { x: label + width - 60, y: timed.length * row + 18, class: "axis" }, `${span} ms`));
  return chart;
}

function collaborators(choices) {
  if (!choices.length) return el("p", { class: "muted" }, "none recorded");
  return el("div", {}, ...choices.map((c) => el("div", { class: "choice" },
    el("h4", {}, el("code", {}, c.step_id || ""), ` attempt ${c.attempt || 1}: `, agentName(c.chosen) || "nobody"),
    el("p", { class: "reason" }, c.reason || ""),
    el("ol", { class: "candidates" }, ...(c.candidates || []).map((cand) => {
      const card = (cand.instance || {}).card || {};
      return el("li", {}, `${card.namespace || ""}/${card.name || ""}@${card.version || ""} score ${Number(cand.score || 0).toFixed(3)}`,
        el("ul", { class: "reasons" }, ...(cand.reasons || []).map((r) => el("li", {}, r))));
    })),
    el("details", {}, el("summary", {}, "query"), json(c.query || {})))));
}

function planVersions(explanation) {
  const versions = explanation.plan_versions || [];
  const rejections = explanation.plan_rejections || [];
  return el("div", {},
    versions.length
      ? el("table", { class: "plans" },
          el("thead", {}, el("tr", {}, ...["version", "plan", "strategy", "playbook", "steps", "reason", "created"].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...versions.map((p) => el("tr", {},
            el("td", {}, String(p.version || 1)), el("td", {}, el("code", {}, p.plan_id || "")),
            el("td", {}, enumName(p.strategy, "PLAN_STRATEGY_")), el("td", {}, p.playbook || ""),
            el("td", {}, String((p.steps || []).length)), el("td", {}, p.reason || ""), el("td", {}, when(p.create_time))))))
      : el("p", { class: "muted" }, "one plan version"),
    rejections.length
      ? el("div", {}, el("h4", {}, "rejected proposals"), ...rejections.map((r) =>
          el("div", { class: "rejection" }, el("p", {}, enumName(r.strategy, "PLAN_STRATEGY_"), ": ", r.reason || ""), json(r.proposed || {}))))
      : null);
}

function subtaskTree(subtasks) {
  if (!subtasks.length) return el("p", { class: "muted" }, "no sub-task");
  return el("ul", { class: "tree" }, ...subtasks.map((sub) => {
    const task = sub.task || {};
    const state = enumName(task.state, "TASK_STATE_");
    return el("li", {},
      el("a", { href: "/task?id=" + encodeURIComponent(task.task_id || "") }, task.task_id || ""),
      " ", el("span", { class: "state state-" + state.toLowerCase() }, state), " ", task.goal || "",
      task.parent_step_id ? el("span", { class: "muted" }, ` (from step ${task.parent_step_id})`) : null,
      (sub.subtasks || []).length ? subtaskTree(sub.subtasks) : null);
  }));
}

function approvals(list, reload) {
  if (!list.length) return el("p", { class: "muted" }, "no approval");
  const canDecide = scopes().has("approve");
  return el("table", { class: "approvals" },
    el("thead", {}, el("tr", {}, ...["step", "state", "reason", "requested", "deadline", "decided by", "comment", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...list.map((a) => {
      const state = enumName(a.state, "APPROVAL_STATE_");
      let action = null;
      if (state === "PENDING") {
        if (canDecide) {
          const comment = el("input", { type: "text", placeholder: "comment", class: "comment", "aria-label": "comment" });
          const decide = (verb) => async () => {
            try {
              await apiJson(`/tasks/${encodeURIComponent(taskId)}/steps/${encodeURIComponent(a.step_id)}/${verb}`, {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ comment: comment.value }),
              });
              reload();
            } catch (error) {
              action.append(explainError(error, "approve"));
            }
          };
          const yes = el("button", { type: "button", class: "approve" }, "Approve");
          const no = el("button", { type: "button", class: "reject" }, "Reject");
          yes.addEventListener("click", decide("approve"));
          no.addEventListener("click", decide("reject"));
          action = el("span", {}, comment, yes, no);
        } else {
          action = el("span", { class: "muted" }, "deciding needs the approve scope");
        }
      }
      return el("tr", { "data-step": a.step_id },
        el("td", {}, el("code", {}, a.step_id || "")), el("td", {}, state), el("td", {}, a.reason || ""),
        el("td", {}, when(a.request_time)), el("td", {}, when(a.deadline)), el("td", {}, a.decided_by || ""),
        el("td", {}, a.comment || ""), el("td", {}, action));
    })));
}

function section(title, id, ...content) {
  return el("section", { class: "card", id }, el("h3", {}, title), ...content);
}

function render(explanation) {
  const task = explanation.task || {};
  const plan = explanation.plan || {};
  const steps = plan.steps || [];
  const state = enumName(task.state, "TASK_STATE_");
  const pending = (explanation.approvals || []).filter((a) => enumName(a.state, "APPROVAL_STATE_") === "PENDING");
  const sections = [
    el("section", { class: "card", id: "summary" },
      el("h2", {}, "Task ", el("code", { id: "task-id" }, task.task_id || taskId), " ",
        el("span", { id: "task-state", class: "state state-" + state.toLowerCase() }, state)),
      el("p", { class: "goal" }, task.goal || ""),
      el("dl", {},
        el("dt", {}, "playbook"), el("dd", {}, task.playbook || plan.playbook || "—"),
        el("dt", {}, "submitted by"), el("dd", {}, task.submitted_by || ""),
        el("dt", {}, "on behalf of"), el("dd", {}, task.on_behalf_of || "—"),
        el("dt", {}, "trace"), el("dd", {}, el("code", {}, task.trace_id || "")),
        el("dt", {}, "created"), el("dd", {}, when(task.create_time)),
        el("dt", {}, "updated"), el("dd", {}, when(task.update_time)),
        task.parent_task_id ? [el("dt", {}, "parent"), el("dd", {}, el("a", { href: "/task?id=" + encodeURIComponent(task.parent_task_id) }, task.parent_task_id))] : null,
        task.error ? [el("dt", {}, "error"), el("dd", { class: "error" }, task.error)] : null),
      el("div", { class: "io" },
        el("div", {}, el("h4", {}, "input"), json(task.input || {})),
        el("div", {}, el("h4", {}, "output"), json(task.output || null)))),
    pending.length ? section(`Awaiting approval (${pending.length})`, "pending-approvals", approvals(pending, load)) : null,
    section(`Plan ${plan.version ? "v" + plan.version : ""} (${steps.length} steps, ${enumName(plan.strategy, "PLAN_STRATEGY_")})`, "plan",
      steps.length ? [legend(), el("div", { class: "dag-box" }, dag(steps))] : el("p", { class: "muted" }, "not planned yet")),
    section("Steps", "steps", ...steps.map((s) => stepDetails(s, explanation))),
    section("Timeline", "timeline-section", timeline(explanation.attempts || [])),
    section("Collaborators and why they were chosen", "collaborators", collaborators(explanation.collaborators || [])),
    section("Plan versions", "plan-versions", planVersions(explanation)),
    section("Sub-tasks", "subtasks", subtaskTree(explanation.subtasks || [])),
    section("Approvals", "approvals", approvals(explanation.approvals || [], load)),
  ];
  const open = new Set([...document.querySelectorAll("details.step[open]")].map((d) => d.id));
  clear(main).append(...sections.filter(Boolean));
  for (const id of open) {
    const details = document.getElementById(id);
    if (details) details.open = true;
  }
}

// Not refreshed: final tasks, and tasks waiting for a decision (an operator may be typing a comment).
const SETTLED = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "WAITING_APPROVAL"]);
let refresh = null;

async function load() {
  if (!taskId) {
    clear(main).append(notice("error", "No task id: open a task from the task list."));
    return;
  }
  try {
    const reply = await apiJson("/tasks/" + encodeURIComponent(taskId));
    const explanation = reply.explanation || {};
    render(explanation);
    // A task still in flight is read again every few seconds (steps change colour as they run).
    clearTimeout(refresh);
    if (!SETTLED.has(enumName((explanation.task || {}).state, "TASK_STATE_"))) refresh = setTimeout(load, 3000);
  } catch (error) {
    if (error.status !== 401) clear(main).append(explainError(error, "tasks:read"));
  }
}

header("/tasks");
load();
