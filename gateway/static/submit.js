// Submitting a task by uploading files: a multipart POST /api/v1/task with
// the type and config in the query; the API's error body is shown as it is.

import { request } from "./api.js";
import { byId, clear, el } from "./dom.js";

export class SubmitForm {
  constructor(onCreated) {
    this.onCreated = onCreated;
    byId("submit-form").addEventListener("submit", (e) => this.submit(e));
  }

  async submit(event) {
    event.preventDefault();
    const form = event.target;
    const problem = checkForm(form);
    if (problem) {
      showErrors([problem]);
      return;
    }
    showErrors([]);
    byId("submit-button").disabled = true;
    try {
      const task = await request("POST", "/api/v1/task", {
        query: queryOf(form),
        body: bodyOf(form),
      });
      form.reset();
      this.onCreated(task);
    } catch (err) {
      showErrors(err.lines());
    } finally {
      byId("submit-button").disabled = false;
    }
  }
}

function checkForm(form) {
  if (!form.elements.type.value.trim()) return "Give the task's type.";
  if (form.elements.files.files.length === 0) return "Choose at least one file.";
  return null;
}

function queryOf(form) {
  const { type, max_attempts, use_checkpoints } = form.elements;
  return {
    type: type.value.trim(),
    max_attempts: max_attempts.value.trim(),
    use_checkpoints: use_checkpoints.checked ? null : "false",
  };
}

function bodyOf(form) {
  const body = new FormData();
  for (const file of form.elements.files.files) {
    body.append("file", file, file.name);
  }
  return body;
}

function showErrors(lines) {
  const box = byId("submit-error");
  clear(box);
  if (lines.length === 0) return;
  box.append(el("p", {}, `Not submitted: ${lines[0]}`));
  if (lines.length > 1) {
    box.append(el("ul", {}, ...lines.slice(1).map((line) => el("li", {}, line))));
  }
}
