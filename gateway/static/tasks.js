// The tenant's task list: state in words, a progress bar with its text,
// counts, tokens and, for live tasks, the ETA from their status.

import { request, taskPath } from "./api.js";
import { byId, el, show } from "./dom.js";
import { count, duration, isFinal, percent, shortId, stateWords, when } from "./format.js";

const PAGE = 25;
const MAX_ETA_LOOKUPS = 10;

export class TaskList {
  constructor(onError) {
    this.onError = onError;
    this.before = null;
    this.pages = 0;
    byId("refresh-tasks").addEventListener("click", () => this.load());
    byId("more-tasks").addEventListener("click", () => this.load(this.before));
  }

  // The periodic refresh: the first page again, unless the person is using
  // the list (focus inside it, or older pages opened), which it would reset.
  refresh() {
    if (this.pages > 1 || byId("task-list").contains(document.activeElement)) return;
    this.load();
  }

  async load(before = null) {
    let page;
    try {
      page = await request("GET", "/api/v1/task", { query: { limit: PAGE, before } });
    } catch (err) {
      this.onError(err);
      return;
    }
    const items = page.tasks.map(taskItem);
    await addEtas(page.tasks, items);
    const list = byId("tasks");
    if (before) {
      list.append(...items);
      this.pages += 1;
    } else {
      list.replaceChildren(...items);
      this.pages = 1;
    }
    this.before = page.next_before;
    show("more-tasks", Boolean(page.next_before));
    show("task-list-empty", list.children.length === 0);
  }
}

function taskItem(task) {
  const progressText = `${percent(task.progress)} · ${count(finished(task))} of ${count(task.total_documents)} documents`;
  const textId = `progress-${task.task_id}`;
  return el(
    "li",
    { class: "task", data: { taskId: task.task_id, state: task.state } },
    el(
      "p",
      { class: "task-head" },
      el("a", { href: `#/task/${encodeURIComponent(task.task_id)}`, class: "task-link" },
        `${task.type} task `, el("code", {}, shortId(task.task_id))),
      el("span", { class: "state", data: { state: task.state } }, stateWords(task.state)),
    ),
    el(
      "p",
      { class: "progress-line" },
      el("progress", { max: 1, value: task.progress, "aria-labelledby": textId }),
      el("span", { id: textId }, progressText),
    ),
    el(
      "p",
      { class: "task-counts" },
      `completed ${count(task.completed_documents)} · failed ${count(task.failed_documents)}`,
      ` · tokens ${count(task.token_count.total)}`,
      el("span", { class: "eta" }),
      ` · created ${when(task.created_at)}`,
    ),
  );
}

const finished = (task) => Math.round(task.progress * task.total_documents);

// The list carries no ETA: ask the status of the first few live tasks.
async function addEtas(tasks, items) {
  const live = tasks
    .map((task, i) => [task, items[i]])
    .filter(([task]) => !isFinal(task.state))
    .slice(0, MAX_ETA_LOOKUPS);
  await Promise.all(live.map(([task, item]) => addEta(task, item)));
}

async function addEta(task, item) {
  let status;
  try {
    status = await request("GET", taskPath(task.task_id, "/checkpoint-status"), {
      query: { failed_limit: 0 },
    });
  } catch {
    return; // the list still shows everything else; the ETA is a bonus
  }
  item.querySelector(".eta").textContent = ` · ETA ${duration(status.eta_seconds)}`;
}
