// The dashboard: sign in with a token, then the task list and the submit form
// (#/) or one task (#/task/ID). The token lives in sessionStorage only.

import { request, token } from "./api.js";
import { byId, setText, show } from "./dom.js";
import { SubmitForm } from "./submit.js";
import { TaskList } from "./tasks.js";
import { TaskView } from "./task_view.js";

const LIST_REFRESH_MS = 3000;

const notice = (text) => setText("notice", text);

function onError(err) {
  if (err.status === 401) {
    signOut("Your token was refused; sign in again.");
    return;
  }
  notice(err.lines ? err.lines().join(" ") : String(err));
}

const list = new TaskList(onError);
const view = new TaskView(onError);
new SubmitForm((task) => {
  location.hash = `#/task/${encodeURIComponent(task.task_id)}`;
});
let listTimer = null;

function showOnly(...ids) {
  for (const id of ["sign-in", "task-list", "submit", "task-view"]) {
    show(id, ids.includes(id));
  }
}

function route() {
  clearInterval(listTimer);
  listTimer = null;
  notice("");
  if (!token.get()) {
    view.close();
    showOnly("sign-in");
    show("who", false);
    byId("token").focus();
    return;
  }
  show("who");
  const match = location.hash.match(/^#\/task\/(.+)$/);
  if (match) {
    openTask(decodeURIComponent(match[1]));
  } else {
    openList();
  }
}

function openTask(taskId) {
  showOnly("task-view");
  document.title = `Task ${taskId} · taskpoint`;
  view.open(taskId);
}

function openList() {
  view.close();
  showOnly("task-list", "submit");
  document.title = "Tasks · taskpoint";
  list.load();
  listTimer = setInterval(() => list.refresh(), LIST_REFRESH_MS);
}

async function signIn(event) {
  event.preventDefault();
  const input = byId("token");
  const value = input.value.trim();
  setText("sign-in-error", "");
  if (!value) {
    setText("sign-in-error", "Enter a token.");
    return;
  }
  token.set(value);
  try {
    await request("GET", "/api/v1/task", { query: { limit: 1 } });
  } catch (err) {
    token.clear();
    setText("sign-in-error", `Not signed in: ${err.message}`);
    return;
  }
  input.value = "";
  route();
}

function signOut(message = "") {
  token.clear();
  route();
  setText("sign-in-error", message);
}

byId("sign-in-form").addEventListener("submit", signIn);
byId("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
