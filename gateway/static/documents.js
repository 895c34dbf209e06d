// A task's documents in one state, a page at a time, each failed one with its
// attempts and error, and its result when it has one.

import { request, taskPath } from "./api.js";
import { byId, clear, el, show } from "./dom.js";
import { count, stateWords, tokens } from "./format.js";

const PAGE = 10;

export class DocumentList {
  constructor(onError) {
    this.onError = onError;
    this.taskId = null;
    this.after = -1;
    this.next = null;
    byId("documents-state").addEventListener("change", () => this.first());
    byId("documents-first").addEventListener("click", () => this.first());
    byId("documents-next").addEventListener("click", () => this.load(this.next));
    byId("result-close").addEventListener("click", () => show("result-view", false));
  }

  open(taskId) {
    this.taskId = taskId;
    show("result-view", false);
    return this.first();
  }

  first() {
    return this.load(-1);
  }

  // Read the page shown again, e.g. after a transition or a new failure.
  refresh() {
    return this.taskId ? this.load(this.after) : null;
  }

  get state() {
    return byId("documents-state").value;
  }

  async load(after) {
    let page;
    try {
      page = await request("GET", taskPath(this.taskId, "/documents"), {
        query: { state: this.state, after, limit: PAGE },
      });
    } catch (err) {
      this.onError(err);
      return;
    }
    this.after = after;
    this.next = page.next_after;
    this.render(page.documents);
  }

  render(documents) {
    const list = byId("documents");
    clear(list);
    list.append(...documents.map((d) => this.item(d)));
    const empty = documents.length === 0;
    byId("documents-empty").textContent = empty
      ? `No ${stateWords(this.state)} document${this.after === -1 ? "" : " on this page"}.`
      : "";
    show("documents-empty", empty);
    byId("documents-next").disabled = this.next === null;
    byId("documents-first").disabled = this.after === -1;
  }

  item(doc) {
    return el(
      "li",
      { class: "document", data: { docId: doc.doc_id, state: doc.state } },
      el("p", { class: "doc-head" },
        el("code", { class: "doc-id" }, doc.doc_id),
        el("span", { class: "state", data: { state: doc.state } }, stateWords(doc.state))),
      el("p", {}, `attempts ${count(doc.attempts)} · tokens ${tokens(doc.token_count)}`),
      doc.error ? errorLine(doc.error) : null,
      doc.has_result ? this.resultButton(doc) : el("p", { class: "hint" }, "no result"),
    );
  }

  resultButton(doc) {
    return el("button", {
      type: "button",
      class: "quiet result-button",
      "aria-label": `Show the result of ${doc.doc_id}`,
      on: { click: () => this.showResult(doc.doc_id) },
    }, "Show result");
  }

  async showResult(docId) {
    const path = taskPath(this.taskId, `/documents/${encodeURIComponent(docId)}/result`);
    try {
      const body = await request("GET", path);
      byId("result-title").textContent = `Result of ${docId}`;
      byId("result-body").textContent = JSON.stringify(body.result, null, 2);
      show("result-view");
      byId("result-close").focus();
    } catch (err) {
      this.onError(err);
    }
  }
}

function errorLine(error) {
  const kind = error.permanent ? "permanent error" : "error";
  return el("p", { class: "doc-error" },
    el("span", { class: "label" }, `Last ${kind}: `),
    `${error.type}: ${error.message}`);
}
