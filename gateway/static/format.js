// Words and numbers for people: states, durations, counts, times.

const STATE_WORDS = {
  pending: "pending",
  running: "running",
  pausing: "pausing",
  paused: "paused",
  finalizing: "finalizing",
  cancelling: "cancelling",
  cancelled: "cancelled",
  completed: "completed",
  completed_with_failures: "completed with failures",
  failed: "failed",
  retry_wait: "waiting to retry",
};

export const FINAL_STATES = new Set([
  "cancelled",
  "completed",
  "completed_with_failures",
  "failed",
]);

export const stateWords = (state) => STATE_WORDS[state] ?? String(state);

export const isFinal = (state) => FINAL_STATES.has(state);

export const count = (n) => (n ?? 0).toLocaleString("en");

export function percent(progress) {
  return `${Math.floor((progress ?? 0) * 100)} %`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} days ${h % 24} h`;
}

export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return "—";
  if (perSecond >= 1) return `${perSecond.toFixed(1)} documents/s`;
  return `${(perSecond * 60).toFixed(1)} documents/min`;
}

export function tokens(t) {
  if (!t) return "—";
  return `${count(t.total)} (prompt ${count(t.prompt)}, completion ${count(t.completion)})`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

export function clock(iso) {
  return new Date(iso).toLocaleTimeString("en-GB");
}

export const shortId = (id) => (id && id.length > 12 ? `${id.slice(0, 12)}…` : id);
