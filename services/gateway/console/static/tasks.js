// The task list: each task links to its explanation page.
import { apiJson, clear, el, enumName, explainError, header, notice, when } from "./common.js";

const box = document.getElementById("tasks");

async function load() {
  try {
    const reply = await apiJson("/tasks");
    const tasks = reply.tasks || [];
    clear(box);
    if (!tasks.length) {
      box.append(notice("info", "No task yet."));
      return;
    }
    box.append(
      el("table", { class: "tasks" },
        el("thead", {}, el("tr", {}, ...["task", "goal", "state", "playbook", "on behalf of", "created"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...tasks.map((task) => {
          const state = enumName(task.state, "TASK_STATE_");
          return el("tr", { "data-task": task.task_id },
            el("td", {}, el("a", { href: "/task?id=" + encodeURIComponent(task.task_id), class: "task-link" }, task.task_id)),
            el("td", {}, task.goal || ""),
            el("td", {}, el("span", { class: "state state-" + state.toLowerCase() }, state)),
            el("td", {}, task.playbook || ""),
            el("td", {}, task.on_behalf_of || ""),
            el("td", {}, when(task.create_time)));
        })))
    );
  } catch (error) {
    if (error.status !== 401) clear(box).append(explainError(error, "tasks:read"));
  }
}

header("/tasks");
document.getElementById("refresh").addEventListener("click", load);
load();
