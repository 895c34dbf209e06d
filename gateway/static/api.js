// The REST client of the page: the token in sessionStorage, sent as a bearer
// token; every error becomes an ApiFailure with the API's code and message.

const TOKEN_KEY = "taskpoint.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiFailure extends Error {
  constructor(status, code, message, fields = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }

  // The message and every invalid field, as lines for a person.
  lines() {
    const fields = (this.fields ?? []).map((f) => `${f.field}: ${f.message}`);
    return [this.message, ...fields.filter((line) => line !== this.message)];
  }
}

export const taskPath = (taskId, rest = "") =>
  `/api/v1/task/${encodeURIComponent(taskId)}${rest}`;

function url(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") {
      params.set(name, String(value));
    }
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

// request("GET", "/api/v1/task", {query, json, body}) -> the parsed JSON body
export async function request(method, path, { query, json, body } = {}) {
  const headers = { Accept: "application/json" };
  const stored = token.get();
  if (stored) headers.Authorization = `Bearer ${stored}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(url(path, query), { method, headers, body });
  } catch (err) {
    throw new ApiFailure(0, "network", `the gateway did not answer (${err.message})`);
  }
  return readAnswer(response);
}

async function readAnswer(response) {
  const type = response.headers.get("Content-Type") ?? "";
  const data = type.includes("application/json") ? await response.json() : null;
  if (response.ok) return data;
  const error = data?.error;
  throw new ApiFailure(
    response.status,
    error?.code ?? "http_error",
    error?.message ?? `the gateway answered ${response.status}`,
    error?.fields ?? null,
  );
}
