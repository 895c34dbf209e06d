// A task's live events: trade the token for a single-use ticket, open an
// EventSource with it, and on any break ask for a fresh ticket and go on from
// the last history entry seen (the token never goes into a URL).

import { request, taskPath } from "./api.js";

const RETRY_MS = [500, 1000, 2000, 5000];

export class TaskEvents {
  // handlers: {transition(event), progress(event), status(words),
  //   ended() -> bool, failed(ApiFailure)}
  constructor(taskId, handlers) {
    this.taskId = taskId;
    this.handlers = handlers;
    this.since = 0;
    this.source = null;
    this.failures = 0;
    this.stopped = false;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    if (!this.source && !this.timer) this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.closeSource();
  }

  // Reopen a stream that ended with its task (retry-failed runs it again).
  ensure() {
    this.start();
  }

  get running() {
    return this.source !== null;
  }

  async open() {
    this.timer = null;
    let ticket;
    try {
      ticket = await request("POST", taskPath(this.taskId, "/events/ticket"));
    } catch (err) {
      if (err.status === 401 || err.status === 404) {
        this.stop();
        this.handlers.failed(err);
        return;
      }
      this.retry(`no ticket: ${err.message}`);
      return;
    }
    if (this.stopped) return;
    this.connect(ticket.ticket);
  }

  connect(ticket) {
    const query = new URLSearchParams({ ticket, since: String(this.since) });
    const source = new EventSource(`${taskPath(this.taskId, "/events")}?${query}`);
    source.addEventListener("open", () => this.onOpen());
    source.addEventListener("transition", (e) => this.onTransition(e));
    source.addEventListener("progress", (e) => this.onProgress(e));
    source.addEventListener("error", () => this.onBreak());
    this.source = source;
  }

  onOpen() {
    this.failures = 0;
    this.handlers.status("live");
  }

  onTransition(message) {
    const seq = Number(message.lastEventId);
    if (Number.isFinite(seq)) this.since = Math.max(this.since, seq);
    this.handlers.transition(JSON.parse(message.data));
  }

  onProgress(message) {
    this.handlers.progress(JSON.parse(message.data));
  }

  // The stream ends after the task's final transition, and breaks when the
  // network or the gateway does; a spent ticket cannot reconnect by itself.
  onBreak() {
    this.closeSource();
    if (this.stopped) return;
    if (this.handlers.ended()) {
      this.handlers.status("ended");
      return;
    }
    this.retry("connection lost");
  }

  retry(why) {
    if (this.stopped) return;
    const wait = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
    this.failures += 1;
    this.handlers.status(`reconnecting (${why})`);
    this.timer = setTimeout(() => this.open(), wait);
  }

  closeSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }
}
