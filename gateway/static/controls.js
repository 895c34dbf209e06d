// Pause, resume, cancel and retry-failed: which apply to the task as it is
// (the supervisor's own rules, so a disabled button says why), and asking.

import { request, taskPath } from "./api.js";
import { byId } from "./dom.js";
import { isFinal, shortId, stateWords } from "./format.js";

export const ACTIONS = ["pause", "resume", "retry-failed", "cancel"];

const PAUSABLE = new Set(["pending", "running", "finalizing"]);
const PAUSED = new Set(["pausing", "paused"]);
const NOTHING_TO_RETRY = new Set(["cancelling", "cancelled", "completed"]);

// Why `action` cannot apply to a task with this status, or null if it can.
export function whyNot(action, status) {
  const state = status.state;
  const words = stateWords(state);
  if (action === "retry-failed") return whyNoRetry(status);
  if (isFinal(state)) return `the task has ended (${words})`;
  if (action === "pause") {
    if (PAUSED.has(state)) return `the task is already ${words}`;
    if (!PAUSABLE.has(state)) return `a ${words} task cannot pause`;
    if (!status.can_pause) {
      return "the task runs all-or-nothing (checkpoints off) and cannot pause";
    }
    return null;
  }
  if (action === "resume") {
    if (state === "running") return "the task is already running";
    return PAUSED.has(state) ? null : `only a paused task can resume; this one is ${words}`;
  }
  return state === "cancelling" ? "cancelling was already asked for" : null;
}

function whyNoRetry(status) {
  const state = status.state;
  if (state === "completed") return "every document completed: nothing to retry";
  if (NOTHING_TO_RETRY.has(state)) return `a ${stateWords(state)} task has nothing to retry`;
  return status.failed_documents > 0 ? null : "no document failed";
}

export function renderControls(status) {
  for (const action of ACTIONS) {
    const why = whyNot(action, status);
    const button = byId(`btn-${action}`);
    button.disabled = why !== null;
    button.title = why ?? "";
    byId(`why-${action}`).textContent = why ? `Not now: ${why}.` : "";
  }
}

export async function ask(taskId, action) {
  const accepted = await request("POST", taskPath(taskId, `/${action}`));
  return (
    `${action} requested (request ${shortId(accepted.request_id)}) while the task ` +
    `was ${stateWords(accepted.state)}; its outcome appears in the timeline.`
  );
}

// Resolves true when the person confirms the cancel in the dialog.
export function confirmCancel() {
  const dialog = byId("confirm-cancel");
  return new Promise((resolve) => {
    const finish = (answer) => {
      yes.removeEventListener("click", onYes);
      no.removeEventListener("click", onNo);
      dialog.removeEventListener("cancel", onNo);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = byId("confirm-cancel-yes");
    const no = byId("confirm-cancel-no");
    const onYes = () => finish(true);
    const onNo = () => finish(false);
    yes.addEventListener("click", onYes);
    no.addEventListener("click", onNo);
    dialog.addEventListener("cancel", onNo);
    dialog.showModal();
    no.focus();
  });
}
