// The timeline: every history entry of the task, refused requests included:
// when, from what to what, why, which request asked, and what came of it.

import { byId, clear, el } from "./dom.js";
import { clock, stateWords } from "./format.js";

export function clearTimeline() {
  clear(byId("timeline"));
}

export function addTransition(event) {
  const list = byId("timeline");
  if (list.querySelector(`li[data-seq="${event.seq}"]`)) return;
  list.append(entry(event));
}

function entry(event) {
  const outcome = event.accepted ? "done" : "refused";
  return el(
    "li",
    { class: `entry ${outcome}`, data: { seq: event.seq, outcome } },
    el("time", { datetime: event.at }, clock(event.at)),
    el("span", { class: "what" }, change(event)),
    el("span", { class: "outcome" }, event.accepted ? "Done" : "Refused"),
    event.reason ? el("span", { class: "why-text" }, event.reason) : null,
    el("span", { class: "who" }, asker(event)),
  );
}

function change(event) {
  const to = stateWords(event.to_state);
  if (!event.accepted) return `request refused (it asked for ${to})`;
  if (!event.from_state) return `created: ${to}`;
  return `${stateWords(event.from_state)} → ${to}`;
}

const asker = (event) =>
  event.request_id ? `asked by request ${event.request_id}` : "by the system";
