// One task: its status and counters, kept live by the events stream; the
// control buttons; its documents; its timeline.

import { request, taskPath } from "./api.js";
import { ask, confirmCancel, renderControls, ACTIONS } from "./controls.js";
import { DocumentList } from "./documents.js";
import { byId, clear, el, setText, show } from "./dom.js";
import { TaskEvents } from "./events.js";
import * as fmt from "./format.js";
import { addTransition, clearTimeline } from "./timeline.js";

// After an accepted request, how long to keep (re)opening the stream of a task
// that looks ended: retry-failed moves an ended task back to running, but the
// stream may close on the old final state before the supervisor applies it.
const EXPECT_MS = 30_000;

export class TaskView {
  constructor(onError) {
    this.onError = onError;
    this.taskId = null;
    this.status = null;
    this.events = null;
    this.expectUntil = 0;
    this.documents = new DocumentList(onError);
    for (const action of ACTIONS) {
      byId(`btn-${action}`).addEventListener("click", () => this.act(action));
    }
  }

  async open(taskId) {
    this.close();
    this.taskId = taskId;
    setText("task-id", taskId);
    setText("control-result", "");
    clearTimeline();
    if (!(await this.refresh())) return;
    await this.documents.open(taskId);
    this.events = new TaskEvents(taskId, {
      transition: (e) => this.onTransition(e),
      progress: (e) => this.onProgress(e),
      status: (words) => setText("live", words === "live" ? "live" : words),
      ended: () => this.ended(),
      failed: (err) => this.onError(err),
    });
    this.events.start();
  }

  close() {
    this.events?.stop();
    this.events = null;
    this.taskId = null;
  }

  // Read the whole status again: counters, can_pause, the reason.
  async refresh() {
    try {
      const status = await request("GET", taskPath(this.taskId, "/checkpoint-status"), {
        query: { failed_limit: 0 },
      });
      this.render(status);
      return true;
    } catch (err) {
      this.onError(err);
      return false;
    }
  }

  ended() {
    return fmt.isFinal(this.status?.state) && Date.now() > this.expectUntil;
  }

  onTransition(event) {
    this.expectUntil = 0;
    addTransition(event);
    if (!event.accepted || !this.status) return;
    this.render({ ...this.status, state: event.to_state });
    // A transition changes what the buttons allow and which documents are where.
    this.refresh().then(() => this.documents.refresh());
  }

  onProgress(event) {
    const failedBefore = this.status?.failed_documents;
    this.render({ ...this.status, ...event });
    if (event.failed_documents !== failedBefore) this.documents.refresh();
  }

  render(status) {
    this.status = status;
    const state = byId("task-state");
    state.textContent = fmt.stateWords(status.state);
    state.dataset.state = status.state;
    byId("task-progress").value = status.progress;
    setText("task-progress-text", progressText(status));
    byId("task-reason").textContent = status.reason ? `Why: ${status.reason}` : "";
    show("task-reason", Boolean(status.reason));
    renderFacts(status);
    renderControls(status);
  }

  async act(action) {
    if (action === "cancel" && !(await confirmCancel())) return;
    const button = byId(`btn-${action}`);
    button.disabled = true;
    try {
      setText("control-result", await ask(this.taskId, action));
      this.expectUntil = Date.now() + EXPECT_MS;
      this.events?.ensure();
    } catch (err) {
      setText("control-result", err.lines().join(" "));
    }
    await this.refresh();
  }
}

function progressText(status) {
  const finished =
    status.completed_documents + status.failed_documents + status.cancelled_documents;
  return `${fmt.percent(status.progress)} · ${fmt.count(finished)} of ${fmt.count(status.total_documents)} documents finished`;
}

function renderFacts(status) {
  const facts = [
    ["Type", status.type],
    ["Completed", fmt.count(status.completed_documents)],
    ["Failed", fmt.count(status.failed_documents)],
    ["Running", fmt.count(status.running_documents)],
    ["Pending", fmt.count(status.pending_documents)],
    ["Waiting to retry", fmt.count(status.retry_wait_documents)],
    ["Cancelled", fmt.count(status.cancelled_documents)],
    ["Tokens", fmt.tokens(status.token_count)],
    ["Throughput", fmt.rate(status.throughput)],
    ["ETA", fmt.duration(status.eta_seconds)],
    ["Created", fmt.when(status.created_at)],
    ["Started", fmt.when(status.started_at)],
    ["Finished", fmt.when(status.completed_at ?? status.cancelled_at)],
  ];
  const list = byId("task-facts");
  clear(list);
  for (const [name, value] of facts) {
    list.append(el("div", { class: "fact", data: { fact: slug(name) } },
      el("dt", {}, name), el("dd", {}, value)));
  }
}

const slug = (name) => name.toLowerCase().replaceAll(" ", "-");
